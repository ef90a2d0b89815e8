"""Keep the C allocator from holding on to freed memory (glibc only; a no-op elsewhere).

glibc serves a request below its mmap threshold from the heap, and raises that
threshold to the size of every mmapped block it frees (up to 32 MiB). Once a
large stream log or write buffer has been freed, later large buffers, which
grow by realloc, come from the heap too: they leave holes of every size that
long-lived small objects pin, so the heap and RSS grow while the memory in use
stays flat (README "Soak"). A fixed threshold switches that adaptation off:
large buffers stay mmapped and go back to the system when freed.
`malloc_trim(0)` returns the free pages left inside the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["set_mmap_threshold", "trim"]

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


def trim() -> bool:
    """Give the heap's free pages back to the system; True when some were."""
    return bool(_libc is not None and _libc.malloc_trim(0))
