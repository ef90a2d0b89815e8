"""The allocator settings (gateway/malloc.py): a fixed mmap threshold, and the sweep's periodic trim."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from gateway import malloc
from gateway.clock import Clock
from gateway.metrics import Stats
from gateway.registry import Registry
from gateway.settings import Settings
from gateway.store.memory import MemoryStore

from .support import ROOT

# Frees a 4 MiB mmapped buffer (glibc then raises its mmap threshold to 4 MiB, unless fixed),
# allocates 1 MiB, and prints how many more mmapped blocks there are: 1 if it was mmapped.
PROBE = """
import ctypes, sys
from gateway import malloc
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
print(malloc.set_mmap_threshold(int(sys.argv[1])))
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


def run_sweeps(monkeypatch, trim_s: float, offsets: list[float]) -> list[int]:
    """Trim calls seen after each sweep at start + offset."""
    calls = []
    monkeypatch.setattr(malloc, "trim", lambda: calls.append(1) or True)

    async def main() -> list[int]:
        clock = Clock()
        registry = Registry(Settings(malloc_trim_s=trim_s), clock, Stats(), MemoryStore(300))
        registry.start()
        start = clock.now()
        seen = []
        for offset in offsets:
            registry.sweep(start + offset)
            seen.append(len(calls))
        clock.stop()
        await registry.aclose()
        return seen

    return asyncio.run(main())


def test_the_sweep_trims_every_malloc_trim_s(monkeypatch):
    assert run_sweeps(monkeypatch, 60, [1, 59, 60.5, 61, 100, 121, 122]) == [0, 0, 1, 1, 1, 2, 2]


def test_malloc_trim_s_zero_never_trims(monkeypatch):
    assert run_sweeps(monkeypatch, 0, [1, 60, 3600, 1e6]) == [0, 0, 0, 0]
