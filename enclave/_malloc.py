"""Keep asyncio's per-read receive buffer off mmap (glibc), once per process.

asyncio's socket transports receive with ``sock.recv(256 KiB)``: a fresh 256 KiB bytes
object per read, shrunk to what arrived. Under glibc's default ``M_MMAP_THRESHOLD``
(128 KiB) each of those is an ``mmap`` + ``mremap`` + ``munmap`` with page faults: three
system calls per read, per message of the protocol (strace, docs/benchmarks.md §12). glibc
raises the threshold by itself only after it ``free``\\ s a large mapped block, which some
processes happen to do and others never. ``mallopt(M_MMAP_THRESHOLD, 1 MiB)`` makes it
explicit: blocks up to 1 MiB come from the heap. No-op where glibc's ``mallopt`` is absent.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt(3) parameter number (glibc malloc.h)
MMAP_THRESHOLD = 1024 * 1024  # bytes: larger blocks still get their own mapping

_done = False


def keep_reads_off_mmap() -> None:
    """Set glibc's mmap threshold to MMAP_THRESHOLD for this process (first call only)."""
    global _done
    if _done:
        return
    _done = True
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
