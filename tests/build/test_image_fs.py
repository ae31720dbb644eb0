"""tests/build/image_fs.py flattens `docker save` archives as an overlay mount would."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_fs import digest, flatten

Member = tuple[str, str, bytes, int]  # name, kind ("file" | "dir"), content, mtime


def _layer(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, content, mtime in members:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _saved(tmp: Path, layers: list[list[Member]]) -> Path:
    path = tmp / f"img{len(list(tmp.iterdir()))}.tar"
    with tarfile.open(path, "w") as out:
        names = []
        for i, members in enumerate(layers):
            data = _layer(members)
            info = tarfile.TarInfo(f"l{i}/layer.tar")
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
            names.append(info.name)
        manifest = json.dumps([{"Layers": names}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        out.addfile(info, io.BytesIO(manifest))
    return path


BASE = [
    ("etc", "dir", b"", 1),
    ("etc/passwd", "file", b"root", 1),
    ("tmp", "dir", b"", 1),
    ("tmp/a", "file", b"a", 1),
    ("tmp/sub", "dir", b"", 1),
    ("tmp/sub/b", "file", b"b", 1),
    ("var", "dir", b"", 1),
    ("var/x", "file", b"x", 1),
]


def test_whiteouts_and_opaque_directories(tmp_path: Path) -> None:
    top = [
        ("tmp", "dir", b"", 2),
        ("tmp/.wh..wh..opq", "file", b"", 2),
        ("tmp/new", "file", b"n", 2),
        ("./var/.wh.x", "file", b"", 2),
        ("etc/passwd", "file", b"root enclave", 2),
    ]
    files = flatten(_saved(tmp_path, [BASE, top]))
    assert sorted(files) == ["/etc", "/etc/passwd", "/tmp", "/tmp/new", "/var"]
    assert files["/tmp"].mtime == 2 and files["/etc"].mtime == 1


def test_the_digest_sees_content_mtime_and_paths(tmp_path: Path) -> None:
    same = digest(flatten(_saved(tmp_path, [BASE])))
    assert digest(flatten(_saved(tmp_path, [BASE]))) == same
    for changed in (
        [*BASE[:-1], ("var/x", "file", b"y", 1)],
        [*BASE[:-1], ("var/x", "file", b"x", 2)],
        [*BASE[:-1], ("var/y", "file", b"x", 1)],
    ):
        assert digest(flatten(_saved(tmp_path, [changed]))) != same
