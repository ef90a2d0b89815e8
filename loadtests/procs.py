"""Child processes that cannot outlive their time: each in its own process group, killed as a group.

A Locust run that does not stop (or a worker it started) must never stall a test or a script: every
wait here is bounded, and on timeout the whole group gets SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

__all__ = ["spawn", "kill_group", "run"]


def spawn(cmd: list[str], **kw: Any) -> subprocess.Popen:
    """Popen in a new session (its own process group), so kill_group reaches its children too."""
    return subprocess.Popen(cmd, start_new_session=True, **kw)


def kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process's group, SIGKILL what is left after `grace` seconds; reap the process."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)  # whatever is left: the leader, a worker, a grandchild
    proc.wait()


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # the group is gone
        pass


def run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess:
    """subprocess.run with a group kill on timeout (subprocess.TimeoutExpired is raised after it)."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    proc = spawn(cmd, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
    except BaseException:
        kill_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
