"""Keep asyncio's per-read receive buffer off mmap (glibc), once per process.

asyncio's socket transports receive with ``sock.recv(256 KiB)``: a fresh 256 KiB bytes
object per read, shrunk to what arrived. Under glibc's starting ``M_MMAP_THRESHOLD``
(128 KiB) each of those is an ``mmap`` + ``mremap`` + ``munmap`` with page faults: three
system calls per read, so per protocol message (strace, docs/benchmarks.md §12). glibc raises
the threshold by itself to the size of the largest mapped block it ``free``\\ s, but the
shrunk receive buffers are never freed that way, so a process that happens to free no large
block pays this for ever. Freeing one PRIME_BYTES block at start-up primes that adaptation
(glibc's own rule, which stays in charge: a larger freed block still raises it further).
"""

from __future__ import annotations

PRIME_BYTES = 512 * 1024  # above asyncio's 256 KiB receive buffer, with room to spare

_primed = False


def keep_reads_off_mmap() -> None:
    """Prime glibc's mmap threshold past asyncio's receive buffer (first call only)."""
    global _primed
    if not _primed:
        _primed = True
        bytearray(PRIME_BYTES)  # mapped, touched, then free()d: the threshold follows it
