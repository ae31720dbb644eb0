"""A flattened image filesystem (``docker export`` tar) as sorted, normalized cpio entries.

Names are made relative (``./bin/sh`` and ``/bin/sh`` are ``bin/sh``), ``..`` is refused,
the last tar member of a name wins (tar semantics), missing parent directories are added,
hard links become relative symlinks (as linuxkit converts them), Docker's own files are
dropped or replaced as linuxkit does (``EXCLUDED``, ``REPLACED``), mtimes are clamped to
SOURCE_DATE_EPOCH and owners kept numeric (tar user/group names are dropped). Content is
streamed from the tar when written.
"""

from __future__ import annotations

import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._cpio import MAX_FIELD, CpioEntry
from .errors import EifBuildError
from .limits import BuildLimits

ROOTFS_PREFIX = "rootfs"

# What linuxkit (and so nitro-cli) does to a `docker export`: files Docker always adds to a
# container are left out, and two are replaced by fixed content (linuxkit moby/image.go).
EXCLUDED = frozenset(
    {".dockerenv", "Dockerfile", "dev/console", "dev/pts", "dev/shm", "etc/hostname"}
)
REPLACED = {
    "etc/hosts": (
        b"127.0.0.1       localhost\n::1     localhost ip6-localhost ip6-loopback\n"
        b"fe00::0 ip6-localnet\nff00::0 ip6-mcastprefix\nff02::1 ip6-allnodes\n"
        b"ff02::2 ip6-allrouters\n"
    ),
    "etc/resolv.conf": b"\n# no resolv.conf configured\n",
}


@dataclass(frozen=True)
class RootfsMember:
    """One normalized member: ``path`` relative to the image root, never empty."""

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    link: str = ""
    rdev_major: int = 0
    rdev_minor: int = 0
    tar_member: tarfile.TarInfo | None = None
    content: bytes | None = None  # fixed content instead of the tar's (REPLACED)


def normalize(name: str) -> str | None:
    """The member's path relative to the root; None for the root itself; raises on ``..``."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise EifBuildError("bad-rootfs", f"rootfs member {name!r} climbs out of the root")
    return "/".join(parts) or None


def _with_parents(members: dict[str, RootfsMember]) -> dict[str, RootfsMember]:
    """Add the directories a tar implies but does not list (0755, 0:0, mtime 0), so no entry
    relies on the initramfs unpacker creating parents. A member under a non-directory is
    refused."""
    out = dict(members)
    for path in members:
        parent = posixpath.dirname(path)
        while parent:
            found = out.get(parent)
            if found is None:
                out[parent] = RootfsMember(parent, "dir", 0o755, 0, 0, 0, 0)
            elif found.kind != "dir":
                raise EifBuildError(
                    "bad-rootfs", f"{path} lies under {parent}, which is a {found.kind}"
                )
            parent = posixpath.dirname(parent)
    return out


class RootfsTar:
    """An open rootfs tar; iterate :meth:`entries` while it is open."""

    def __init__(self, path: Path, epoch: int, limits: BuildLimits) -> None:
        self._limits = limits
        self._epoch = epoch
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
        except (OSError, tarfile.TarError) as exc:
            raise EifBuildError("bad-rootfs", f"cannot read rootfs tar {path}: {exc}") from exc
        try:
            self.members = self._scan()
        except BaseException:
            self._tar.close()
            raise

    def __enter__(self) -> RootfsTar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._tar.close()

    def _scan(self) -> dict[str, RootfsMember]:
        members: dict[str, RootfsMember] = {}
        total = 0
        count = 0
        try:
            for info in self._tar:
                count += 1
                if count > self._limits.max_rootfs_entries:
                    raise EifBuildError(
                        "rootfs-too-large",
                        f"rootfs has more than {self._limits.max_rootfs_entries} members",
                    )
                member = self._member(info)
                if member is None:
                    continue
                total += member.size
                if total > self._limits.max_rootfs_bytes:
                    raise EifBuildError(
                        "rootfs-too-large",
                        f"rootfs content exceeds {self._limits.max_rootfs_bytes} bytes",
                    )
                members[member.path] = member
        except (tarfile.TarError, EOFError, ValueError, OSError, zlib.error) as exc:
            raise EifBuildError("bad-rootfs", f"rootfs tar is corrupt: {exc}") from exc
        return _with_parents(members)

    def _member(self, info: tarfile.TarInfo) -> RootfsMember | None:
        path = normalize(info.name)
        if path is None or path in EXCLUDED:
            return None  # the root itself (the builder adds rootfs/), or what Docker adds
        mtime = max(0, min(int(info.mtime), self._epoch))
        mode, uid, gid = info.mode & 0o7777, info.uid, info.gid
        if path in REPLACED:
            data = REPLACED[path]
            return RootfsMember(path, "file", mode, uid, gid, 0, len(data), content=data)
        if info.isreg():
            if info.size > MAX_FIELD:
                raise EifBuildError("rootfs-too-large", f"{path}: file larger than 4 GiB")
            return RootfsMember(path, "file", mode, uid, gid, mtime, info.size, tar_member=info)
        if info.isdir():
            return RootfsMember(path, "dir", mode, uid, gid, mtime, 0)
        if info.issym():
            return RootfsMember(path, "symlink", mode, uid, gid, mtime, 0, link=info.linkname)
        if info.islnk():
            target = normalize(info.linkname)
            if target is None:
                raise EifBuildError("bad-rootfs", f"{path}: hard link to the root")
            rel = posixpath.relpath(target, posixpath.dirname(path) or ".")
            return RootfsMember(path, "symlink", mode, uid, gid, mtime, 0, link=rel)
        kinds = {tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}
        if info.type in kinds:
            return RootfsMember(
                path, kinds[info.type], mode, uid, gid, mtime, 0,
                rdev_major=info.devmajor, rdev_minor=info.devminor,
            )  # fmt: skip
        raise EifBuildError("bad-rootfs", f"{path}: unsupported tar member type {info.type!r}")

    def _chunks(self, member: RootfsMember) -> Iterator[bytes]:
        assert member.tar_member is not None
        fh = self._tar.extractfile(member.tar_member)
        if fh is None:
            raise EifBuildError("bad-rootfs", f"{member.path}: no content in the tar")
        with fh:
            left = member.size
            while left:
                try:
                    chunk = fh.read(min(left, self._limits.chunk_size))
                except (tarfile.TarError, EOFError, ValueError, OSError, zlib.error) as exc:
                    raise EifBuildError("bad-rootfs", f"{member.path}: {exc}") from exc
                if not chunk:
                    raise EifBuildError("bad-rootfs", f"{member.path}: content ends early")
                left -= len(chunk)
                yield chunk

    def cpio_entry(self, member: RootfsMember, prefix: str = ROOTFS_PREFIX) -> CpioEntry:
        """The member as a cpio entry under ``prefix/`` (content streamed on write)."""
        name = f"{prefix}/{member.path}"
        if member.content is not None:
            return CpioEntry(
                name, "file", member.mode, member.content, None, member.uid, member.gid,
                member.mtime,
            )  # fmt: skip
        if member.kind == "file":
            return CpioEntry(
                name, "file", member.mode, self._chunks(member), member.size,
                member.uid, member.gid, member.mtime,
            )  # fmt: skip
        data = member.link.encode("utf-8", "surrogateescape") if member.kind == "symlink" else b""
        return CpioEntry(
            name, member.kind, member.mode, data, None, member.uid, member.gid, member.mtime,
            member.rdev_major, member.rdev_minor,
        )  # fmt: skip
