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
