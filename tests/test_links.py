"""lab/links.py: the profile relay delays, throttles, stalls, resets and goes silent as its profile says,
on real sockets, and the gateway's streams cross it intact."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from gateway.client import Client
from lab.links import PROFILES, Profile, Relay

from .support import run

pytestmark = pytest.mark.timeout(60)


async def _upstream(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _round_trip(port: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"x")
        await writer.drain()
        t = time.monotonic()
        writer.write(b"ping")
        await reader.readexactly(1)
        await reader.readexactly(4)
        return time.monotonic() - t
    finally:
        writer.close()


def test_latency_is_one_rtt_per_round_trip():
    async def main():
        server, port = await _upstream(_echo)
        async with server, Relay(Profile("t", rtt_ms=200), ("127.0.0.1", port)) as relay:
            direct = await _round_trip(port)
            relayed = await _round_trip(relay.port)
        assert direct < 0.1
        assert 0.19 <= relayed < 0.6, relayed  # 200 ms RTT, a wide margin above for a busy machine

    run(main())


def test_bandwidth_paces_a_download_at_the_profile_rate():
    size = 200_000  # at 780 kbit/s: 2.05 s

    async def send(reader, writer):
        writer.write(b"y" * size)
        await writer.drain()
        writer.close()

    async def main():
        server, port = await _upstream(send)
        async with server, Relay(PROFILES["3g"], ("127.0.0.1", port)) as relay:
            t = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            got = await reader.read(-1)  # to EOF: the upstream's FIN passes through after the data
            took = time.monotonic() - t
            writer.close()
        assert len(got) == size
        assert 1.9 < took < 5.0, took  # 2.05 s of link time + 0.3 s RTT

    run(main())


async def _ticks(port: int, seconds: float) -> list[float]:
    """Arrival times of the bytes an upstream sends every 50 ms."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = await asyncio.wait_for(reader.read(100), end - time.monotonic())
            except TimeoutError:
                break
            if not data:
                break
            times.extend([time.monotonic()] * len(data))
    finally:
        writer.close()
    return times


async def _ticker(reader, writer):
    try:
        for _ in range(100):
            writer.write(b".")
            await writer.drain()
            await asyncio.sleep(0.05)
    except OSError:
        pass
    finally:
        writer.close()


def test_stall_holds_bytes_then_releases_them_together():
    async def main():
        server, port = await _upstream(_ticker)
        profile = Profile("t", stall_every_s=1.0, stall_s=0.6)
        async with server, Relay(profile, ("127.0.0.1", port)) as relay:
            times = await _ticks(relay.port, 1.9)
        gaps = [b - a for a, b in zip(times, times[1:])]
        longest = max(gaps)
        at = times[gaps.index(longest)] - times[0]
        assert 0.5 < longest < 1.0, longest  # the 0.6 s stall (not the 50 ms ticks)
        assert 0.8 < at < 1.3, at  # starting a second into the connection
        burst = sum(1 for t in times if abs(t - times[gaps.index(longest) + 1]) < 0.01)
        assert burst >= 8  # what queued in the stall arrives at once

    run(main())


def test_train_resets_the_connection_on_schedule():
    async def main():
        server, port = await _upstream(_ticker)
        async with server, Relay(Profile("t", reset_every_s=0.5), ("127.0.0.1", port)) as relay:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            t = time.monotonic()
            with pytest.raises(ConnectionResetError):
                while await reader.read(100):
                    pass
            took = time.monotonic() - t
            writer.close()
            assert relay.stats.resets == 1
        assert 0.4 < took < 1.5, took

    run(main())


def test_half_open_goes_silent_without_fin_or_rst_and_a_new_connection_works():
    async def main():
        server, port = await _upstream(_echo)
        profile = replace(PROFILES["half-open"], rtt_ms=0, dead_after_s=0.5, hold_s=10)
        async with server, Relay(profile, ("127.0.0.1", port)) as relay:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"a")
            assert await asyncio.wait_for(reader.readexactly(1), 2) == b"a"
            await asyncio.sleep(0.7)
            writer.write(b"b")  # the kernel takes it: no RST comes back
            await writer.drain()
            with pytest.raises(TimeoutError):  # no echo, no EOF, no reset: silence
                await asyncio.wait_for(reader.read(1), 1.5)
            assert not reader.at_eof()
            assert await _round_trip(relay.port) < 0.5  # a new connection works
            assert relay.stats.half_open == 1
            writer.close()

    run(main())


@pytest.mark.parametrize("transport", ["sse", "ndjson", "ws"])
def test_gateway_stream_crosses_a_3g_link_intact(gw, transport):
    """The exact token sequence on every transport; the first token no sooner than one RTT after asking."""
    sim = {"ttft_ms": 20, "itl_ms": 5, "jitter": 0}

    async def main():
        host, port = gw.url.rsplit("//", 1)[1].split(":")
        async with Relay("3g", (host, int(port))) as relay:
            async with Client(relay.url) as c:
                slow = await c.stream(transport, "hi", max_tokens=30, seed=7, sim=sim)
        async with Client(gw.url) as c:
            fast = await c.stream(transport, "hi", max_tokens=30, seed=7, sim=sim)
        return slow, fast

    slow, fast = run(main())
    assert slow.done is not None and not slow.cut
    assert [t.text for t in slow.tokens] == [t.text for t in fast.tokens]
    assert slow.ttft >= 0.3  # at least one 300 ms round trip (TCP and the request) before the first token
    assert fast.ttft < slow.ttft


def test_break_all_silences_open_connections_and_new_ones_work():
    async def main():
        server, port = await _upstream(_echo)
        async with server, Relay(Profile("t", hold_s=10), ("127.0.0.1", port)) as relay:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"a")
            assert await asyncio.wait_for(reader.readexactly(1), 2) == b"a"
            assert relay.break_all() == 1
            await asyncio.sleep(0.1)
            writer.write(b"b")
            await writer.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), 1.0)
            assert await _round_trip(relay.port) < 0.5
            assert relay.stats.half_open == 1
            writer.close()

    run(main())


@pytest.mark.parametrize("transport", ["sse", "ndjson", "ws"])
def test_python_client_notices_a_silent_connection_by_its_read_timeout_and_resumes(gw, transport):
    """No FIN, no RST: only the read timeout tells. (On WebSocket a polite close would wait 10 s more for a
    closing handshake that cannot come.)"""
    from gateway.client import StreamResult
    from gateway.sources.simulated import expected_text

    async def main():
        host, port = gw.url.rsplit("//", 1)[1].split(":")
        async with Relay(Profile("t", hold_s=30), (host, int(port))) as relay:
            async with Client(relay.url, read_timeout=1.5) as c:
                r = StreamResult()

                async def read():
                    async for _ in c.events(transport, "dead", max_tokens=60, seed=0, result=r,
                                            sim={"ttft_ms": 50, "itl_ms": 40, "jitter": 0}):
                        pass

                task = asyncio.create_task(read())
                while len(r.tokens) < 5:
                    await asyncio.sleep(0.02)
                relay.break_all()
                broke = time.perf_counter()
                await asyncio.wait_for(task, 30)
        return r, broke

    r, broke = run(main())
    assert r.text == expected_text("dead", 0, 60) and r.done is not None
    assert (r.gaps, r.duplicates) == (0, 0)
    noticed = r.cuts[0] - broke
    assert 1.0 < noticed < 4.0, noticed  # the 1.5 s read timeout (heartbeats every 0.3 s keep it from firing)


def test_probe_through_a_profile_reports_the_link(gw):
    """`probe --profile 3g`: the same checks through the 3G link: reachable, spaced, resumable, later."""
    from loadtests.probe import probe, probe_through

    async def main():
        return (await probe_through(gw.url, "3g", idle_s=0, tokens=10),
                await probe(gw.url, idle_s=0, tokens=10))

    slow, direct = run(main())
    assert slow["profile"] == "3g" and slow["url"] == gw.url
    for t in ("sse_post", "ndjson", "ws"):
        s, d = slow["transports"][t], direct["transports"][t]
        assert s["ok"] and s["arrival"]["spaced"], (t, s)
        assert s["ttft_overhead_s"] >= 0.3 > d["ttft_overhead_s"], t  # a 300 ms round trip at least


def test_relay_rate_matches_the_kernels_token_bucket_on_a_veth():
    """The relay's rate against the real thing: the same download through tc tbf (780 kbit/s) on a veth into
    a network namespace this test creates and removes. The two take about as long."""
    import os
    import subprocess
    import sys

    from .support import require

    ip, tc = require("ip"), require("tc")
    ns, size = f"gwlinks{os.getpid() % 100000}", 200_000
    host_if, ns_if = f"{ns[:9]}h", f"{ns[:9]}n"
    sh = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    server = None
    sh(ip, "netns", "add", ns)
    try:
        sh(ip, "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        sh(ip, "addr", "add", "10.231.77.1/30", "dev", host_if)
        sh(ip, "link", "set", host_if, "up")
        sh(ip, "netns", "exec", ns, ip, "addr", "add", "10.231.77.2/30", "dev", ns_if)
        sh(ip, "netns", "exec", ns, ip, "link", "set", ns_if, "up")
        sh(ip, "netns", "exec", ns, tc, "qdisc", "add", "dev", ns_if, "root", "tbf", "rate", "780kbit",
           "burst", "4kb", "latency", "400ms")
        server = subprocess.Popen(
            [ip, "netns", "exec", ns, sys.executable, "-c",
             "import socket; s = socket.create_server(('10.231.77.2', 9)); print('ready', flush=True)\n"
             f"while True:\n c, _ = s.accept(); c.sendall(b'y' * {size}); c.close()"],
            stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"

        async def download(host: str, port: int) -> float:
            t = time.monotonic()
            reader, writer = await asyncio.open_connection(host, port)
            assert len(await reader.read(-1)) == size
            writer.close()
            return time.monotonic() - t

        async def main():
            kernel = await download("10.231.77.2", 9)
            sh(ip, "netns", "exec", ns, tc, "qdisc", "del", "dev", ns_if, "root")  # unshaped: the relay alone
            async with Relay(replace(PROFILES["3g"], rtt_ms=0), ("10.231.77.2", 9)) as relay:
                ours = await download("127.0.0.1", relay.port)
            return kernel, ours

        kernel, ours = run(main())
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run([ip, "netns", "del", ns], capture_output=True)  # removes the veth pair too
    assert 1.8 < kernel < 4.0, kernel  # 200 KB at 780 kbit/s: 2.05 s
    assert 0.75 < ours / kernel < 1.33, (ours, kernel)
