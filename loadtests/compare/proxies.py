"""Deployment paths for the matrix: the gateway directly, or through the proxy lab's proxies.

The lab (`loadtests/lab.py`, `lab/`) starts nginx and HAProxy in front of
gateway processes of its own; a path that cannot start (its tool is missing,
or the lab's configurations are not in this checkout) is skipped with a note in the report.
"""

from __future__ import annotations

from contextlib import ExitStack

from .. import lab as lab_mod
from ..procs import GatewayProcess, GatewayView

__all__ = ["start_paths"]


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
