"""A streaming writer of cpio "newc" archives (the initramfs format), deterministic by design.

Header layout (``070701`` + 13 fields of 8 hex digits, name NUL-terminated, header+name and
data each padded to 4 bytes, ``TRAILER!!!`` last, the archive padded to 512 bytes) follows
the SVR4 "new ASCII" format as linuxkit writes it: inode numbers count up from 721, device
3:1, nlink 2 for directories and 1 otherwise, checksum 0. Nothing here reads the clock or
the host: every field comes from the caller.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

MAGIC = b"070701"
FIRST_INODE = 721
ARCHIVE_ALIGN = 512
TRAILER = "TRAILER!!!"
MAX_NAME_BYTES = 4095
"""PATH_MAX - 1: the kernel's initramfs unpacker refuses longer names."""
MAX_FIELD = 0xFFFFFFFF
"""Every numeric newc field is 8 hex digits, so a file is at most 4 GiB - 1."""

KIND_BITS = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


class Sink(Protocol):
    """Where the archive goes (a binary file, or a wrapper that hashes on the way)."""

    def write(self, data: bytes, /) -> int: ...


class CpioError(ValueError):
    """An entry cannot be written (name or size out of range, data of the wrong length)."""


@dataclass(frozen=True)
class CpioEntry:
    """One archive member; ``data`` is the content (link target for a symlink)."""

    name: str
    kind: str
    mode: int  # permission bits (07777)
    data: bytes | Iterable[bytes] = b""
    size: int | None = None  # required when ``data`` is an iterable of chunks
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    rdev_major: int = 0
    rdev_minor: int = 0


class CpioWriter:
    """Write entries in the order given; :meth:`close` adds the trailer and the padding."""

    def __init__(self, out: Sink) -> None:
        self._out = out
        self._length = 0
        self._inode = FIRST_INODE
        self._closed = False

    @property
    def length(self) -> int:
        return self._length

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._length += len(data)

    def _pad(self, align: int) -> None:
        self._write(b"\0" * (-self._length % align))

    def _header(self, entry: CpioEntry, size: int) -> None:
        name = entry.name.encode("utf-8", "surrogateescape")
        if not name or b"\0" in name or len(name) > MAX_NAME_BYTES:
            raise CpioError(f"cpio name must be 1..{MAX_NAME_BYTES} bytes without NUL")
        if entry.kind not in KIND_BITS and entry.name != TRAILER:
            raise CpioError(f"unknown cpio entry kind {entry.kind!r}")
        mode = (entry.mode & 0o7777) | KIND_BITS.get(entry.kind, 0)
        nlink = 2 if entry.kind == "dir" else 1
        fields = (
            self._inode, mode, entry.uid, entry.gid, nlink, entry.mtime, size,
            3, 1, entry.rdev_major, entry.rdev_minor, len(name) + 1, 0,
        )  # fmt: skip
        for value in fields:
            if not 0 <= value <= MAX_FIELD:
                raise CpioError(f"cpio field out of range for {entry.name!r}: {value}")
        self._write(MAGIC + b"".join(b"%08x" % v for v in fields) + name + b"\0")
        self._pad(4)
        self._inode += 1

    def add(self, entry: CpioEntry) -> None:
        """Append one entry (header, name, data)."""
        if self._closed:
            raise CpioError("cpio archive already closed")
        if isinstance(entry.data, bytes):
            size = len(entry.data)
            if entry.size is not None and entry.size != size:
                raise CpioError(f"{entry.name!r}: size {entry.size} but {size} bytes of data")
            self._header(entry, size)
            self._write(entry.data)
        else:
            if entry.size is None:
                raise CpioError(f"{entry.name!r}: streamed data needs a size")
            self._header(entry, entry.size)
            written = 0
            for chunk in entry.data:
                written += len(chunk)
                if written > entry.size:
                    raise CpioError(f"{entry.name!r}: more data than its size {entry.size}")
                self._write(chunk)
            if written != entry.size:
                raise CpioError(f"{entry.name!r}: {written} bytes of data, size {entry.size}")
        self._pad(4)

    def close(self) -> None:
        """Write the trailer and pad the archive to a multiple of 512 bytes."""
        if self._closed:
            return
        self._header(CpioEntry(TRAILER, "", 0), 0)
        self._pad(ARCHIVE_ALIGN)
        self._closed = True
