"""Give freed memory back: Python's reference cycles and glibc's heap (a no-op elsewhere).

Two things made a long soak's RSS grow although no stream leaked (README "Soak"):

- Cycles. With the GC thresholds set at startup (app.py) the collector runs on allocation counts
  that a steady server rarely reaches, so objects in reference cycles piled up: every request's
  (through the scope, fixed in app.py) and still every HTTP connection's (uvicorn's protocol and
  its parser hold each other). The sweep runs a full collection every `reclaim_s`.
- Heap holes. glibc serves a request below its mmap threshold from the heap, and raises that
  threshold to the size of every mmapped block it frees (up to 32 MiB). Once a large stream log
  or write buffer was freed, later large buffers, which grow by realloc, came from the heap and
  left holes that long-lived small objects pin. A fixed threshold switches that adaptation off,
  and `malloc_trim(0)` after the collection returns the free pages left inside the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import platform

__all__ = ["set_mmap_threshold", "reclaim"]

_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (both exist in every glibc)
    except (OSError, AttributeError):
        return None
    return libc


_libc = _glibc()


def set_mmap_threshold(size: int) -> bool:
    """Serve blocks of `size` bytes and more by mmap, and stop glibc from raising that bound."""
    return bool(_libc is not None and size > 0 and _libc.mallopt(_M_MMAP_THRESHOLD, size))


def reclaim() -> int:
    """A full collection, then the heap's free pages back to the system; returns the objects freed."""
    found = gc.collect()
    if _libc is not None:
        _libc.malloc_trim(0)
    return found
