"""Locust runs forked from one process that imported Locust and the users' libraries once.

A Locust process spends 1.5-2 s of CPU importing gevent, Flask, requests and the project's codecs before
its first user starts, and a comparison starts one per cell and run: on a loaded 2-core machine that
start-up was most of a small comparison's time. The fork server (`python -m loadtests.compare.forks`)
imports them once; each Locust run is a fork of it that runs `locust.main.main()` with the run's own
arguments, environment and log file, in a process group of its own, as Locust's own `--processes` forks
after its imports. The locustfile itself is loaded by each fork (its event listeners are per run).

The runner speaks to it in JSON lines on its stdin and stdout; `Forked` is the handle, shaped like the
`subprocess.Popen` it replaces (poll, wait, terminate, kill, pid, returncode). Where the server cannot
start, or with GATEWAY_COMPARE_FORKS=0, `start()` returns None and the runner starts Locust as a process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["ForkServer", "Forked", "start"]


class Forked:
    """A Locust run forked by the server (not this process's child: its end is read from /proc)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            self.returncode = 0  # reaped already: only the server does, after it ended
            return self.returncode
        if fields[0] not in ("Z", "X"):
            return None
        status = int(fields[49])  # exit_code (Linux 3.5+): the wait status
        self.returncode = os.waitstatus_to_exitcode(status) if status else 0
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"locust (pid {self.pid})", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.killpg(self.pid, sig)  # the run's group: Locust and anything it started
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """Started at once; its imports go on while the caller starts the gateway (the first spawn waits)."""

    def __init__(self, cwd: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "loadtests.compare.forks"], cwd=cwd,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.ready = False

    def spawn(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> Forked:
        """A Locust run with `argv` (after `locust`), its output to `log`."""
        if not self.ready:
            answer = self.proc.stdout.readline()
            if answer.strip() != "ready":
                raise RuntimeError(f"the Locust fork server did not start ({answer.strip()!r})")
            self.ready = True
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "log": str(log), "cwd": str(cwd)}) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer.strip().isdigit():
            raise RuntimeError(f"the Locust fork server did not fork ({answer.strip()!r})")
        return Forked(int(answer))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # it reaps its forks and exits on end of input
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(cwd: Path) -> ForkServer | None:
    """The fork server, or None (GATEWAY_COMPARE_FORKS=0, or it could not start: plain processes then)."""
    if os.environ.get("GATEWAY_COMPARE_FORKS", "1") == "0":
        return None
    try:
        return ForkServer(cwd)
    except OSError:
        return None


# -- the server ---------------------------------------------------------------------------------------


def _child(request: dict) -> None:
    """In the fork: become the Locust run the request describes; never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = ["locust", *request["argv"]]
        from locust.main import main

        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - whatever it was, the run's log says it, and the run fails
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def serve() -> None:
    import gevent
    import locust.main  # noqa: F401 - Locust's imports (and its gevent monkey-patching), once
    from gevent import monkey

    # The users' libraries (the locustfile itself is loaded by each run).
    import loadtests.board  # noqa: F401
    import loadtests.streaming  # noqa: F401
    import loadtests.targets  # noqa: F401
    from gateway.sources.simulated import corpus_tokens

    corpus_tokens()
    waitpid = monkey.get_original("os", "waitpid")
    read = os.fdopen(0, "r")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while line := read.readline():
        while True:  # reap the runs that ended (the runner has read their end from /proc)
            try:
                pid, _ = waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        request = json.loads(line)
        pid = gevent.fork()
        if pid == 0:
            _child(request)
        try:
            os.setpgid(pid, pid)  # here too (the fork does it as well): the group exists once its pid is told
        except OSError:
            pass  # the fork did it first, or already ended
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()
    while True:
        try:
            waitpid(-1, 0)
        except ChildProcessError:
            break


if __name__ == "__main__":
    serve()
