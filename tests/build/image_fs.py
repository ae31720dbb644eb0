"""The flattened filesystem of a Docker image, read from `docker save`, and a digest of it.

Layers are applied in order with their whiteouts (``.wh.NAME`` deletes NAME, ``.wh..wh..opq``
empties a directory of lower layers), as an overlay mount or nitro-cli's export would. Each
path keeps everything its tar header says about it (type, mode, owner, mtime, xattrs, link
target, device numbers) and the SHA-256 of its content. Nothing is normalised: no container
was ever created, so there is none of the init layer (/.dockerenv, /etc/hosts, ...) that
`docker export` adds and would have to be filtered out.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import subprocess
import tarfile
from pathlib import Path
from typing import NamedTuple

SAVE_TIMEOUT_S = 300
CHUNK = 1 << 20
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class Entry(NamedTuple):
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: float
    data: str  # content sha256, link target or device numbers
    xattrs: str

    def line(self, path: str) -> str:
        return (
            f"{path}\t{self.kind}\t{self.mode:o}\t{self.uid}:{self.gid}\t{self.mtime!r}"
            f"\t{self.data}\t{self.xattrs}"
        )


KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


def _entry(layer: tarfile.TarFile, member: tarfile.TarInfo) -> Entry:
    kind = KINDS.get(member.type, f"type-{member.type!r}")
    if member.isreg():
        fileobj = layer.extractfile(member)
        assert fileobj is not None
        h = hashlib.sha256()
        while chunk := fileobj.read(CHUNK):
            h.update(chunk)
        data = h.hexdigest()
    elif member.issym() or member.islnk():
        data = _path(member.linkname) if member.islnk() else member.linkname
    elif member.ischr() or member.isblk():
        data = f"{member.devmajor},{member.devminor}"
    else:
        data = ""
    xattrs = json.dumps(
        {k: v for k, v in sorted(member.pax_headers.items()) if k.startswith("SCHILY.xattr.")}
    )
    return Entry(kind, member.mode, member.uid, member.gid, float(member.mtime), data, xattrs)


def _path(name: str) -> str:
    """Absolute, normalised path of an archive member name ("./etc/", "etc" -> "/etc")."""
    return posixpath.normpath("/" + name.removeprefix("./"))


def flatten(saved: Path) -> dict[str, Entry]:
    """Path -> entry of the image saved (`docker save -o`) at ``saved``."""
    files: dict[str, Entry] = {}
    with tarfile.open(saved) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        (image,) = manifest
        for layer_name in image["Layers"]:
            layer_file = outer.extractfile(layer_name)
            assert layer_file is not None
            with tarfile.open(fileobj=layer_file) as layer:
                added: dict[str, Entry] = {}
                removed: list[str] = []
                for member in layer:
                    path = _path(member.name)
                    parent, base = posixpath.split(path)
                    if base == OPAQUE:
                        removed.append(parent + "/")
                    elif base.startswith(WHITEOUT):
                        removed.append(posixpath.join(parent, base[len(WHITEOUT) :]))
                    else:
                        added[path] = _entry(layer, member)
            for gone in removed:
                prefix = gone if gone.endswith("/") else gone + "/"
                for path in [p for p in files if p == gone or p.startswith(prefix)]:
                    del files[path]
            files.update(added)
    return files


def save(image: str, dest: Path) -> Path:
    subprocess.run(["docker", "save", "-o", str(dest), image], check=True, timeout=SAVE_TIMEOUT_S)
    return dest


def digest(files: dict[str, Entry]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(files[path].line(path).encode() + b"\n")
    return h.hexdigest()
