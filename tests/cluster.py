"""A throwaway Redis Cluster on loopback for tests and benchmarks: `masters` primaries, each with `replicas`
replicas, from `redis-server` (or valkey-server: `flavour`) `--cluster-enabled yes` and `redis-cli --cluster
create` (Debian's redis-cli 7.0 also builds and reshards a Valkey cluster); every port free."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .support import free_port, require, server_binary, stop


class RedisCluster:
    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000,
                 flavour: str = "redis") -> None:
        self.flavour = flavour
        self.server = server_binary(flavour)
        self.cli = require("redis-cli")
        self.dir = Path(tempfile.mkdtemp(prefix="gw-cluster-"))
        self.procs: dict[int, subprocess.Popen] = {}
        try:
            for _ in range(masters * (1 + replicas)):
                port = free_port()
                node = self.dir / str(port)
                node.mkdir()
                self.procs[port] = subprocess.Popen(
                    [self.server, "--port", str(port), "--cluster-port", str(free_port()), "--bind", "127.0.0.1",
                     "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(node_timeout_ms), "--save", "", "--appendonly", "no",
                     "--loglevel", "warning"], cwd=node, stdout=subprocess.DEVNULL)
            for port in self.procs:
                self._wait(lambda: self.call(port, "PING") == "PONG", f"node {port}")
            subprocess.run([self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.procs),
                            "--cluster-replicas", str(replicas), "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        self.url = f"redis://127.0.0.1:{next(iter(self.procs))}/0"

    def call(self, port: int, *args: str) -> str:
        done = subprocess.run([self.cli, "-p", str(port), *args], capture_output=True, text=True, timeout=10)
        return done.stdout.strip()

    def _wait(self, ok, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{what} not ready within {timeout} s")

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def wait_ok(self) -> None:
        """Until every live node says cluster_state:ok and sees all slots served."""
        def ok() -> bool:
            return all("cluster_state:ok" in self.call(p, "CLUSTER", "INFO") for p in self.alive())
        self._wait(ok, "cluster_state:ok", 60)

    def primary_of(self, key: str) -> int:
        """The port of the primary serving `key`'s slot."""
        return self.primary_of_slot(int(self.call(self.alive()[0], "CLUSTER", "KEYSLOT", key)))

    def primaries(self) -> list[int]:
        """The ports of the live primaries."""
        return [p for p in self.alive() if "role:master" in self.call(p, "INFO", "replication")]

    def move_slot(self, slot: int, target: int, pause: float = 0.0, halfway: Callable[[], None] | None = None) -> int:
        """Reshard one slot to the primary at port `target`, as `redis-cli --cluster reshard` does (IMPORTING
        on the target, MIGRATING on the source, MIGRATE key by key, then SETSLOT NODE everywhere), but one key
        per MIGRATE with `pause` seconds between, so clients meet the slot half-moved; `halfway` is called (and
        waited for) after the first key went. Returns the keys moved."""
        source = self.primary_of_slot(slot)
        src_id, dst_id = self.call(source, "CLUSTER", "MYID"), self.call(target, "CLUSTER", "MYID")
        assert source != target and self.call(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", src_id) == "OK"
        assert self.call(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", dst_id) == "OK"
        moved = 0
        while keys := self.call(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "1").split():
            reply = self.call(source, "MIGRATE", "127.0.0.1", str(target), keys[0], "0", "5000")
            assert reply in ("OK", "NOKEY"), f"MIGRATE {keys[0]}: {reply}"
            moved += reply == "OK"
            if moved == 1 and halfway is not None:
                halfway()
            time.sleep(pause)
        # The target first, then the source, then the others (redis-cli's order): no node is left serving it.
        for port in (target, source, *(p for p in self.primaries() if p not in (source, target))):
            assert self.call(port, "CLUSTER", "SETSLOT", str(slot), "NODE", dst_id) == "OK"
        return moved

    def primary_of_slot(self, slot: int) -> int:
        """The port of the primary serving `slot`."""
        for line in self.call(self.alive()[0], "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2]:
                for r in fields[8:]:
                    lo, _, hi = r.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        return int(fields[1].split(":")[1].split("@")[0])
        raise LookupError(f"no primary serves slot {slot}")

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            stop(proc)
        shutil.rmtree(self.dir, ignore_errors=True)
