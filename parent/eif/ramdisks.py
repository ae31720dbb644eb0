"""nitro-cli's two ramdisks, written as deterministic cpio archives.

* bootstrap: ``dev/`` (0755), ``init`` and ``nsm.ko`` (0755) from the blobs directory;
* customer: ``cmd`` and ``env`` (0644, one entry per line), ``rootfs/`` holding the image
  filesystem, and ``rootfs/{dev,proc,run,sys,tmp,var}`` (0755) that init mounts over.

Entries are sorted by name (bytewise, so a directory precedes what it holds); every entry the
builder makes is owned by 0:0 with mtime 0; image members keep their numeric owners and get
mtimes clamped to SOURCE_DATE_EPOCH (see :mod:`parent.eif._rootfs`). Inode numbers count up
from the same start in every build.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._cpio import CpioEntry, CpioWriter
from ._rootfs import ROOTFS_PREFIX, RootfsTar
from .blobs import Blobs
from .errors import EifBuildError
from .limits import DEFAULT_LIMITS, BuildLimits

ROOTFS_MOUNT_DIRS = ("dev", "proc", "run", "sys", "tmp", "var")
"""Directories init mounts inside the root (nitro-cli's customer ramfs template)."""


@dataclass(frozen=True)
class Ramdisk:
    """A written ramdisk: its file and size."""

    path: Path
    size: int


def config_lines(values: Sequence[str], what: str) -> bytes:
    """``cmd``/``env`` file content: each value on its own line, newline-terminated."""
    for value in values:
        if "\n" in value or "\0" in value:
            raise EifBuildError("usage", f"{what} entries cannot contain a newline or NUL")
    return "".join(f"{v}\n" for v in values).encode("utf-8")


def _file_chunks(path: Path, chunk: int) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            yield block


def _write(path: Path, entries: list[CpioEntry]) -> Ramdisk:
    entries = sorted(entries, key=lambda e: e.name.encode("utf-8", "surrogateescape"))
    try:
        with path.open("wb") as out:
            writer = CpioWriter(out)
            for entry in entries:
                writer.add(entry)
            writer.close()
    except OSError as exc:
        raise EifBuildError("io", f"cannot write ramdisk {path}: {exc.strerror}") from exc
    return Ramdisk(path, writer.length)


def _blob_entry(name: str, path: Path, limits: BuildLimits) -> CpioEntry:
    size = path.stat().st_size
    return CpioEntry(name, "file", 0o755, _file_chunks(path, limits.chunk_size), size)


def write_bootstrap(path: Path, blobs: Blobs, limits: BuildLimits = DEFAULT_LIMITS) -> Ramdisk:
    """The bootstrap ramdisk (PCR1 measures it with the kernel and cmdline)."""
    return _write(
        path,
        [
            CpioEntry("dev", "dir", 0o755),
            _blob_entry("init", blobs.init, limits),
            _blob_entry("nsm.ko", blobs.nsm_ko, limits),
        ],
    )


def write_customer(
    path: Path,
    rootfs: RootfsTar,
    cmd: Sequence[str],
    env: Sequence[str],
    limits: BuildLimits = DEFAULT_LIMITS,
) -> Ramdisk:
    """The customer ramdisk (PCR2 measures it)."""
    cmd_bytes, env_bytes = config_lines(cmd, "cmd"), config_lines(env, "env")
    if len(cmd_bytes) + len(env_bytes) > limits.max_cmd_env_bytes:
        raise EifBuildError("usage", f"cmd and env exceed {limits.max_cmd_env_bytes} bytes")
    if not cmd:
        raise EifBuildError("usage", "the enclave needs a command (CMD or ENTRYPOINT, or --cmd)")
    entries = [
        CpioEntry("cmd", "file", 0o644, cmd_bytes),
        CpioEntry("env", "file", 0o644, env_bytes),
        CpioEntry(ROOTFS_PREFIX, "dir", 0o755),
    ]
    entries += [
        CpioEntry(f"{ROOTFS_PREFIX}/{d}", "dir", 0o755)
        for d in ROOTFS_MOUNT_DIRS
        if d not in rootfs.members or rootfs.members[d].kind != "dir"
    ]
    entries += [rootfs.cpio_entry(m) for m in rootfs.members.values()]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise EifBuildError("bad-rootfs", "the rootfs shadows one of the builder's own entries")
    return _write(path, entries)
