"""Network profiles: a small asyncio TCP relay that gives a loopback path a phone's link.

    python -m lab.links 3g --listen 127.0.0.1:9001 --upstream 127.0.0.1:8000

This kernel has no netem (no delay or loss from `tc`), and nothing maintained
installs from PyPI, Debian or npm that delays a TCP path: toxiproxy's server is
a Go binary that none of them ship (only its clients are there), npm's `toxy`
works on HTTP, not bytes. So the lab relays bytes itself, per connection:

- latency: each chunk is delivered half an RTT after it arrives, both ways;
- bandwidth: a chunk leaves the link after the previous one has (its size at
  the profile's rate), a queue with a drop-free tail like tc's tbf;
- stalls: every `stall_every_s` of a connection's life nothing moves for
  `stall_s` (bytes queue and arrive together after it), a Wi-Fi hand-over;
- resets: after `reset_every_s` the connection is reset (RST, SO_LINGER 0) on
  both sides, a train through a tunnel;
- half-open: after `dead_after_s` nothing is forwarded either way and nothing
  is closed (no FIN, no RST) until the relay stops or `hold_s` has passed;
  a new connection works again, like a phone that changed networks.
  `Relay.break_all()` (SIGUSR1 to `python -m lab.links`) does it to every open
  connection at once, on any profile, for a break at a known moment.

The schedule runs on each connection's own clock, from its accept, so a client
that reconnects gets a fresh link and a test knows when the impairment hits.
The relay only moves bytes: TLS, HTTP/2 and WebSocket pass through as they are.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace

__all__ = ["Profile", "PROFILES", "Relay", "main"]

_CHUNK = 65536


@dataclass(frozen=True)
class Profile:
    name: str
    rtt_ms: float = 0.0
    rate_kbit: float = 0.0  # 0: unlimited
    stall_every_s: float = 0.0  # 0: never
    stall_s: float = 0.0
    reset_every_s: float = 0.0  # 0: never
    dead_after_s: float = 0.0  # 0: never (half-open)
    hold_s: float = 120.0  # how long a half-open connection is kept before the relay drops it
    note: str = ""

    def describe(self) -> str:
        parts = [f"{self.rtt_ms:g} ms RTT" if self.rtt_ms else "no added delay"]
        if self.rate_kbit:
            parts.append(f"{self.rate_kbit / 1000:g} Mbit/s" if self.rate_kbit >= 1000 else f"{self.rate_kbit:g} kbit/s")
        if self.stall_every_s:
            parts.append(f"{self.stall_s:g} s stall every {self.stall_every_s:g} s")
        if self.reset_every_s:
            parts.append(f"reset after {self.reset_every_s:g} s")
        if self.dead_after_s:
            parts.append(f"silent (no FIN/RST) after {self.dead_after_s:g} s")
        return ", ".join(parts)


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("good-4g", rtt_ms=40, rate_kbit=10_000, note="good 4G"),
    Profile("3g", rtt_ms=300, rate_kbit=780, note="3G"),
    Profile("flaky-wifi", rtt_ms=20, rate_kbit=20_000, stall_every_s=15, stall_s=2, note="flaky Wi-Fi"),
    Profile("train", rtt_ms=80, rate_kbit=5_000, reset_every_s=30, note="train: a reset every ~30 s"),
    Profile("half-open", rtt_ms=40, rate_kbit=10_000, dead_after_s=5,
            note="forwarding stops after 5 s, no FIN or RST"),
)}


class _Link:
    """One direction of one connection: a FIFO with a rate, a delay and the connection's schedule."""

    def __init__(self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conn, self.reader, self.writer = conn, reader, writer
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.free_at = 0.0  # when the link has sent what it holds (the rate)
        self.ready = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        p = conn.profile
        # Backpressure: hold at most one bandwidth-delay product (and a chunk) in flight.
        self.limit = _CHUNK + int((p.rate_kbit * 125 if p.rate_kbit else 10_000_000) * max(p.rtt_ms, 10) / 1000)

    async def pump(self) -> None:
        """Read from one side, schedule each chunk's delivery; EOF passes through once the queue is out."""
        p = self.conn.profile
        while True:
            data = await self.reader.read(_CHUNK)
            now = time.monotonic()
            if self.conn.dead_at(now):
                return  # half-open: what arrives now is lost with the link
            if not data:
                self.queue.append((now + p.rtt_ms / 2000, b""))
                self.ready.set()
                return
            if p.rate_kbit:
                self.free_at = max(now, self.free_at) + len(data) * 8 / (p.rate_kbit * 1000)
                at = self.free_at + p.rtt_ms / 2000
            else:
                at = now + p.rtt_ms / 2000
            self.queue.append((at, data))
            self.queued += len(data)
            self.ready.set()
            if self.queued > self.limit:
                self.room.clear()
                await self.room.wait()

    async def deliver(self) -> None:
        while True:
            while not self.queue:
                self.ready.clear()
                await self.ready.wait()
            at, data = self.queue[0]
            at = self.conn.after_stall(at)
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.conn.dead_at(time.monotonic()):
                return
            self.queue.popleft()
            if not data:
                with contextlib.suppress(OSError, RuntimeError):
                    self.writer.write_eof()
                return
            self.queued -= len(data)
            if self.queued <= self.limit:
                self.room.set()
            self.writer.write(data)
            await self.writer.drain()


class _Connection:
    def __init__(self, profile: Profile, started: float) -> None:
        self.profile = profile
        self.started = started
        self.broken = asyncio.Event()  # set by Relay.break_all(): go silent now

    def dead_at(self, now: float) -> bool:
        return bool(self.profile.dead_after_s) and now - self.started >= self.profile.dead_after_s

    def after_stall(self, at: float) -> float:
        """A delivery time moved past the stall it falls in, if any."""
        p = self.profile
        if not p.stall_every_s:
            return at
        into = (at - self.started) % p.stall_every_s
        period = (at - self.started) // p.stall_every_s
        if period >= 1 and into < p.stall_s:
            return at + p.stall_s - into
        return at


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST: SO_LINGER on with a zero timeout."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class _Stats:
    accepted: int = 0
    resets: int = 0
    half_open: int = 0
    breaks: list[float] = field(default_factory=list)  # perf_counter() of each break_all()


class Relay:
    """`async with Relay(profile, upstream=("127.0.0.1", 8000)) as relay:` then connect to `relay.url`."""

    def __init__(self, profile: Profile | str, upstream: tuple[str, int], host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self.upstream = upstream
        self.host, self.port = host, port
        self.stats = _Stats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._open: set[_Connection] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aenter__(self) -> Relay:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def break_all(self) -> int:
        """Every open connection goes silent now (no FIN, no RST), as when a phone changes networks;
        connections made afterwards work. The number broken."""
        self.stats.breaks.append(time.perf_counter())
        for conn in self._open:
            conn.broken.set()
        return len(self._open)

    async def serve_forever(self) -> None:
        await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._relay(c_reader, c_writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        conn = _Connection(self.profile, time.monotonic())
        self._open.add(conn)
        u_writer: asyncio.StreamWriter | None = None
        reset = False
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
            for w in (c_writer, u_writer):
                w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            links = (_Link(conn, c_reader, u_writer), _Link(conn, u_reader, c_writer))
            tasks = [asyncio.create_task(f()) for link in links for f in (link.pump, link.deliver)]
            try:
                reset = await self._watch(conn, tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        except OSError:
            pass
        finally:
            self._open.discard(conn)
            for w in (c_writer, u_writer):
                if w is not None:
                    _reset(w) if reset else w.transport.abort()

    async def _watch(self, conn: _Connection, tasks: list[asyncio.Task]) -> bool:
        """Wait until both directions end, either side fails, or the schedule cuts in; True: reset."""
        p = conn.profile
        cutoffs = [x for x in (p.reset_every_s, p.dead_after_s) if x]
        deadline = conn.started + min(cutoffs) if cutoffs else None
        deliveries = set(tasks[1::2])
        breaker = asyncio.create_task(conn.broken.wait())
        pending = {*tasks, breaker}
        try:
            while deliveries & pending:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if breaker in done:
                    break  # silent from now on
                if any(not t.cancelled() and t.exception() is not None for t in done):
                    return False  # a side reset or failed: drop the other one too
                if not done:
                    break  # the schedule cuts in
            else:
                return False
        finally:
            breaker.cancel()
        if not conn.broken.is_set() and p.reset_every_s and (not p.dead_after_s or p.reset_every_s <= p.dead_after_s):
            self.stats.resets += 1
            return True
        self.stats.half_open += 1
        for t in tasks:
            t.cancel()
        await asyncio.sleep(p.hold_s)  # silent: the peers see nothing, not even a close
        return False


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.links", description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", choices=sorted(PROFILES))
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port (port 0: a free one, printed)")
    parser.add_argument("--upstream", required=True, help="host:port of the gateway or proxy behind the link")
    parser.add_argument("--dead-after", type=float, help="half-open: seconds before forwarding stops")
    parser.add_argument("--reset-after", type=float,
                        help="reset (RST) each connection this many seconds after its accept (a proxy's cut)")
    parser.add_argument("--bare", action="store_true", help="no added delay or rate limit: only the schedule")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    if args.bare:
        profile = replace(profile, rtt_ms=0.0, rate_kbit=0.0, stall_every_s=0.0, stall_s=0.0)
    if args.dead_after is not None:
        profile = replace(profile, dead_after_s=args.dead_after)
    if args.reset_after is not None:
        profile = replace(profile, reset_every_s=args.reset_after)
    host, port = parse_hostport(args.listen)
    relay = Relay(profile, parse_hostport(args.upstream), host, port)

    async def run() -> None:
        await relay.start()
        # SIGUSR1: every open connection goes silent now (the half-open break, on demand).
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, relay.break_all)
        print(f"{profile.name} ({profile.describe()}) on {relay.url} -> {args.upstream}", flush=True)
        assert relay._server is not None
        await relay._server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
