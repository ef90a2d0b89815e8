"""The registry's sweep (gateway/registry.py) on a fake clock: heartbeats, slow consumers, idle sources,
detach grace. No sockets, no real time: the test moves the clock."""

from __future__ import annotations

import asyncio

from gateway.clock import Clock
from gateway.metrics import Stats
from gateway.registry import Registry
from gateway.settings import Settings
from gateway.store.memory import MemoryStore
from gateway.stream import FAILED, RUNNING, Stream

from .fakeclock import FakeLoop


class Gen:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def setup(**settings):
    loop = FakeLoop()
    clock = Clock(loop)
    s = Settings(heartbeat_s=1.0, idle_timeout_s=5.0, detach_grace_s=3.0, send_timeout_s=2.0,
                 max_lag_bytes=1000, reclaim_s=0, **settings)
    store = MemoryStore(60.0)
    registry = Registry(s, clock, Stats(), store)
    stream = Stream("s1", "sim", one_shot=False, now=clock.now(), on_event=lambda *a: None)
    stream.generation = Gen()
    store.streams[stream.id] = stream
    return loop, clock, registry, stream


def run(fn):
    async def go():
        return fn()

    return asyncio.run(go())


def test_a_quiet_reader_gets_a_heartbeat_after_heartbeat_s():
    def go():
        loop, clock, registry, stream = setup()
        sub = stream.attach(-1, "sse_post", clock.now())
        sub.cursor = len(stream.log)
        registry.sweep(clock.now())
        loop.advance(0.5)
        stream.token("a")  # progress: the stream is not idle
        registry.sweep(clock.now())
        assert not sub.beat
        sub.cursor = len(stream.log)  # the reader took it
        registry.sweep(clock.now())
        loop.advance(1.1)
        registry.sweep(clock.now())
        return sub

    assert run(go).beat


def test_a_write_blocked_past_send_timeout_is_cut_and_the_stream_goes_on():
    def go():
        loop, clock, registry, stream = setup()
        sub = stream.attach(-1, "ndjson", clock.now())
        aborted = []
        sub.conn.abort = lambda: aborted.append(True)
        sub.conn.sending = clock.now()
        registry.sweep(clock.now())
        loop.advance(1.0)
        registry.sweep(clock.now())
        assert not sub.gone
        loop.advance(1.5)
        registry.sweep(clock.now())
        return sub, aborted, stream, registry

    sub, aborted, stream, registry = run(go)
    assert sub.gone and sub.conn.cut == "slow_send" and aborted == [True]
    assert stream.status == RUNNING and registry.stats["ndjson"].slow_cuts == 1


def test_a_reader_the_stream_ran_too_far_ahead_of_is_cut_for_lag():
    def go():
        loop, clock, registry, stream = setup()
        sub = stream.attach(-1, "ws", clock.now())
        sub.conn.sending = clock.now()
        registry.sweep(clock.now())
        for _ in range(60):
            stream.token("0123456789" * 2)
        loop.advance(0.1)
        registry.sweep(clock.now())
        return sub

    sub = run(go)
    assert sub.gone and sub.conn.cut == "slow_lag"


def test_a_silent_source_ends_the_stream_with_upstream_timeout():
    def go():
        loop, clock, registry, stream = setup()
        stream.keep = True  # (no detach grace here: only the source's silence counts)
        gen = stream.generation
        registry.sweep(clock.now())
        loop.advance(4.9)
        registry.sweep(clock.now())
        assert stream.running
        loop.advance(0.2)
        registry.sweep(clock.now())
        return stream, gen

    stream, gen = run(go)
    assert stream.status == FAILED and stream.error_code == "upstream_timeout" and gen.cancelled


def test_nobody_back_within_the_grace_cancels_the_stream():
    def go():
        loop, clock, registry, stream = setup()
        stream.detached_since = clock.now()
        for _ in range(5):
            loop.advance(0.5)
            stream.token("x")  # the source is alive
            registry.sweep(clock.now())
        assert stream.running  # 2.5 s < grace
        loop.advance(0.6)
        stream.token("x")
        registry.sweep(clock.now())
        return stream

    stream = run(go)
    assert stream.status == FAILED and stream.error_code == "cancelled"
    assert stream.generation is None and "(detached)" in stream.log.json(len(stream.log) - 1).decode()
