"""Deployment paths for the matrix: the gateway directly, or through the proxy lab's proxies.

The lab (`loadtests/lab.py`, `lab/`) starts nginx and HAProxy in front of
gateway processes of its own; a path that cannot start (its tool is missing,
or the lab's configurations are not in this checkout) is skipped with a note in the report.
"""

from __future__ import annotations

import re
import subprocess
import sys
from contextlib import ExitStack
from urllib.parse import urlsplit

from .. import lab as lab_mod
from ..procs import ROOT, GatewayProcess, GatewayView, stop

__all__ = ["start_paths", "start_cut"]


def start_paths(paths: list[str], gw: GatewayProcess,
                stack: ExitStack) -> tuple[dict[str, str], dict[str, GatewayView], list[str]]:
    """Per path that started: its base URL and the gateway behind it; a note per path skipped."""
    targets: dict[str, str] = {"direct": gw.url}
    behind: dict[str, GatewayView] = {"direct": gw}
    wanted = [p for p in paths if p != "direct"]
    if not wanted:
        return targets, behind, []
    known = {p.name: p for p in lab_mod.PROXIES}
    notes = [f"Proxy path {name} skipped: not a lab path (known: {', '.join(known)})."
             for name in wanted if name not in known]
    wanted = [name for name in wanted if name in known]
    if not wanted:
        return targets, behind, notes
    if not lab_mod.LAB_DIR.is_dir():
        return targets, behind, notes + [f"Proxy paths skipped ({', '.join(wanted)}): no lab/ configurations."]
    lab = lab_mod.Lab(port=0, proxies=tuple(wanted))
    lab.start()
    stack.callback(lab.stop)
    pids = {c.name: c.proc.pid for c in getattr(lab, "_children", [])}
    for name in wanted:
        if name not in lab.urls:
            notes.append(f"Proxy path {name} skipped: {lab.skipped.get(name, 'did not start')}.")
            continue
        upstream = known[name].upstreams[0]
        targets[name] = lab.urls[name]
        # The lab's own gateway behind this proxy: its counters and CPU belong to this path's cells.
        behind[name] = GatewayView(lab.urls[upstream], pids.get(upstream))
        notes_for = lab.notes.get(name)
        if notes_for:
            notes.append(f"Proxy path {name}: {notes_for}")
    return targets, behind, notes


def start_cut(front: str, cut_s: float, stack: ExitStack) -> str:
    """A lab relay (lab/links.py, its own process) in front of the base URL `front` that resets (RST) every
    connection `cut_s` seconds after it opened: a proxy cutting streams mid-way, on every transport alike.
    Its URL; it stops with `stack`."""
    cmd = [sys.executable, "-m", "lab.links", "train", "--bare", "--reset-after", f"{cut_s:g}",
           "--listen", "127.0.0.1:0", "--upstream", urlsplit(front).netloc]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stack.callback(stop, proc)
    line = proc.stdout.readline()  # "train (...) on http://127.0.0.1:PORT -> HOST:PORT", once listening
    found = re.search(r" on (http://\S+) -> ", line)
    if found is None:
        raise RuntimeError(f"the cutting relay did not start: {line.strip() or proc.wait(5)}")
    return found.group(1)
