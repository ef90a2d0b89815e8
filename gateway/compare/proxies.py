"""Deployment paths for the matrix: the gateway directly, or through the proxy lab's proxies."""

from __future__ import annotations

import importlib.util
from contextlib import ExitStack
from pathlib import Path

from .procs import GatewayProcess

__all__ = ["start_paths"]


def start_paths(paths: list[str], gw: GatewayProcess, raw: Path, stack: ExitStack) -> tuple[dict[str, str], list[str]]:
    """Base URL per path that could be started; a note for each path skipped and why."""
    targets = {"direct": gw.url} if "direct" in paths else {}
    notes = []
    wanted = [p for p in paths if p != "direct"]
    if not wanted:
        return targets, notes
    if importlib.util.find_spec("gateway.lab") is None:
        notes.append(f"Proxy paths skipped ({', '.join(wanted)}): the proxy lab (`python -m gateway lab`, "
                     "its nginx and HAProxy configurations) is not in this checkout.")
        return targets, notes
    notes.append(f"Proxy paths skipped ({', '.join(wanted)}): this version of compare does not drive the lab yet.")
    return targets, notes
