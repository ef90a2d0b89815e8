"""Giving memory back (gateway/memory.py): a fixed mmap threshold, and the sweep's periodic reclaim."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

from gateway import memory
from gateway.clock import Clock
from gateway.metrics import Stats
from gateway.registry import Registry
from gateway.settings import Settings
from gateway.store.memory import MemoryStore

from .support import ROOT, run

# Frees a 4 MiB mmapped buffer (glibc then raises its mmap threshold to 4 MiB, unless fixed),
# allocates 1 MiB, and prints how many more mmapped blocks there are: 1 if it was mmapped.
PROBE = """
import ctypes, sys
from gateway import memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
print(memory.set_mmap_threshold(int(sys.argv[1])))
big = bytearray(4 << 20)
del big
before = libc.mallinfo2().hblks
buf = bytearray(1 << 20)
print(libc.mallinfo2().hblks - before)
"""


def probe(threshold: int) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(threshold)], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=30)
    return out.stdout.split()


def test_a_fixed_threshold_keeps_large_buffers_mmapped():
    assert probe(131_072) == ["True", "1"]  # mmapped: freeing it gives the memory back
    assert probe(0) == ["False", "0"]  # glibc's adaptive bound: from the heap, where holes stay


def test_reclaim_frees_cycles():
    class Node:
        pass

    gc.disable()  # (so that only reclaim can collect it)
    try:
        node = Node()
        node.me = node
        ref = weakref.ref(node)
        del node
        assert ref() is not None
        assert memory.reclaim() >= 2  # the node and its __dict__
        assert ref() is None
    finally:
        gc.enable()


def run_sweeps(monkeypatch, reclaim_s: float, offsets: list[float]) -> list[int]:
    """Reclaims seen after each sweep at start + offset."""
    calls = []
    monkeypatch.setattr(memory, "reclaim", lambda: calls.append(1) or 0)

    async def main() -> list[int]:
        clock = Clock()
        registry = Registry(Settings(reclaim_s=reclaim_s), clock, Stats(), MemoryStore(300))
        registry.start()
        start = clock.now()
        seen = []
        for offset in offsets:
            registry.sweep(start + offset)
            seen.append(len(calls))
        clock.stop()
        await registry.aclose()
        return seen

    return run(main())


def test_the_sweep_reclaims_every_reclaim_s(monkeypatch):
    assert run_sweeps(monkeypatch, 60, [1, 59, 60.5, 61, 100, 121, 122]) == [0, 0, 1, 1, 1, 2, 2]


def test_reclaim_s_zero_never_reclaims(monkeypatch):
    assert run_sweeps(monkeypatch, 0, [1, 60, 3600, 1e6]) == [0, 0, 0, 0]


def _python_bytes_per_connection(hold, n: int = 200) -> tuple[float, str]:
    """tracemalloc before and while `n` connections are held (each opened by `hold(sock, port)`), under
    uvicorn run as `serve` runs it (the connection gate, the fast path, the app's edge): bytes per connection
    and the top lines. Object sizes, not timings: no noise."""
    import socket
    import time
    import tracemalloc

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from gateway.adapter.uvicorn import FastPath
    from gateway.app import create_app
    from gateway.gate import Gate, gated

    from .support import uvicorn_thread

    thresholds = gc.get_threshold()
    app = create_app(Settings(log_level="warning"))
    socks = [socket.socket() for _ in range(n + 3)]
    tracemalloc.start()
    try:
        with uvicorn_thread(FastPath(app.edge), http=gated(HttpToolsProtocol, Gate(10, 32768, 0, 10))) as port:
            for s in socks[:3]:  # warm-up: what the first streams load is not per stream
                hold(s, port)
            time.sleep(0.5)
            gc.collect()
            before = tracemalloc.take_snapshot()
            for s in socks[3:]:
                hold(s, port)
            time.sleep(0.5)
            gc.collect()
            during = tracemalloc.take_snapshot()
            diff = during.compare_to(before, "lineno")
            per = sum(d.size_diff for d in diff) / n
            top = "\n".join(f"{d.size_diff / n:6.0f} B {d.traceback[0]}" for d in diff[:12])
            for s in socks:
                s.close()
    finally:
        tracemalloc.stop()
        gc.unfreeze()  # the app's lifespan froze and retuned this process's collector
        gc.set_threshold(*thresholds)
    return per, top


def test_an_open_http_stream_holds_few_python_objects():
    """Python objects per open SSE stream (no token yet). 11.8 KB here (30 Nov 2026, 03:10 UTC); 13.4 KB with
    uvicorn's Events left in place (`_lighten` in gateway/adapter/uvicorn.py undone), so the bound trips on
    a regression that size."""
    body = b'{"prompt":"held","max_tokens":3,"sim":{"ttft_ms":60000}}'
    request = (b"POST /v1/sse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (len(body), body))

    def hold(s, port: int) -> None:
        s.connect(("127.0.0.1", port))
        s.sendall(request)
        s.settimeout(10)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")

    per_stream, top = _python_bytes_per_connection(hold)
    assert per_stream < 13_000, f"{per_stream:.0f} B of Python objects per open HTTP stream; the most:\n{top}"


def test_an_open_websocket_stream_holds_few_python_objects():
    """The same for a WebSocket streaming session (no token yet), its handshake and start frame written by
    hand (a client in this process would count). 13.5 KB here (30 Nov 2026, 03:32 UTC); 14.5 KB when the
    deferred session keeps the endpoint's WebSocket and reads in a coroutine of its own (WSSession.run)."""
    import base64
    import os

    start = b'{"type":"start","prompt":"held","max_tokens":3,"sim":{"ttft_ms":60000}}'
    mask = os.urandom(4)
    frame = bytes([0x81, 0x80 | len(start)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(start))

    def hold(s, port: int) -> None:
        key = base64.b64encode(os.urandom(16))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key)
        s.settimeout(10)
        got = s.recv(4096)
        assert got.startswith(b"HTTP/1.1 101"), got
        s.sendall(frame)
        while b'"type":"meta"' not in got:
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                raise AssertionError(got) from None
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 101")

    per_socket, top = _python_bytes_per_connection(hold)
    assert per_socket < 14_000, f"{per_socket:.0f} B of Python objects per open WebSocket stream; the most:\n{top}"
