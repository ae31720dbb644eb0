"""Fake blobs, rootfs tars, signing pairs and an independent cpio "newc" parser for the EIF
builder tests. The blobs are small stand-in files (not a bootable kernel): the builder only
copies and measures them, so their content does not matter here."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
CMDLINE = b"reboot=k panic=30 pci=off nomodules console=ttyS0 random.trust_cpu=on\n"


def make_blobs(directory: Path, *, cmdline: bytes = CMDLINE, kernel: bytes = b"KERNEL") -> Path:
    """A blobs directory laid out as nitro-cli installs it, with small fake files."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bzImage").write_bytes(kernel * 100)
    (directory / "bzImage.config").write_bytes(b"#\n# Linux/x86 6.1.0 Kernel Configuration\n")
    (directory / "cmdline").write_bytes(cmdline)
    (directory / "init").write_bytes(b"\x7fELF-fake-init" * 10)
    (directory / "nsm.ko").write_bytes(b"\x7fELF-fake-nsm.ko" * 10)
    return directory


@dataclass(frozen=True)
class Member:
    """One rootfs tar member for :func:`make_rootfs`."""

    kind: str = "file"  # file | dir | symlink | hardlink
    data: bytes = b""
    mode: int = 0o644
    link: str = ""
    uid: int = 0
    gid: int = 0
    mtime: int = 1_000


def make_rootfs(path: Path, members: Mapping[str, Member]) -> Path:
    """A tar like ``docker export`` writes (``./``-less names, in the given order)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, m in members.items():
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = m.mode, m.uid, m.gid, m.mtime
            info.uname = "someone"  # dropped by the builder
            if m.kind == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
            }[m.kind]
            info.linkname = m.link
            tar.addfile(info)
    return path


SIMPLE_ROOTFS = {
    "app": Member("dir", mode=0o755),
    "app/main.py": Member(data=b"print('hello')\n"),
    "bin": Member("dir", mode=0o755),
    "bin/app": Member("symlink", link="/app/main.py", mode=0o777),
    "bin/app-copy": Member("hardlink", link="app/main.py"),
    "etc": Member("dir", mode=0o755, mtime=4_000_000_000),
    "etc/conf": Member(data=b"x=1\n", mode=0o600, uid=1000, gid=1000),
}


def signing_pair(directory: Path, name: str = "signer") -> tuple[Path, Path]:
    """A P-384 key and its self-signed certificate, as PEM files (like `openssl req -x509`)."""
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA384())
    )
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def run_cli(*args: str, env: Mapping[str, str] | None = None, cwd: Path = ROOT):
    """``python -m ARGS`` in a real process; returns the CompletedProcess (text)."""
    import os

    full_env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120, check=False,
    )  # fmt: skip


# --- an independent cpio "newc" parser (not the builder's code) ----------------------------


@dataclass(frozen=True)
class CpioMember:
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    devmajor: int
    devminor: int
    rdevmajor: int
    rdevminor: int
    name: str
    data: bytes

    @property
    def kind(self) -> str:
        return {0o100000: "file", 0o040000: "dir", 0o120000: "symlink"}.get(
            self.mode & 0o170000, "other"
        )

    @property
    def perm(self) -> int:
        return self.mode & 0o7777


def parse_newc(blob: bytes) -> list[CpioMember]:
    """Every member up to TRAILER!!!; checks magic, alignment and the 512-byte zero padding."""
    out: list[CpioMember] = []
    pos = 0

    def align(n: int) -> int:
        return (n + 3) & ~3

    while True:
        head = blob[pos : pos + 110]
        assert head[:6] == b"070701", f"bad magic at {pos}: {head[:6]!r}"
        fields = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, dmaj, dmin, rmaj, rmin, namesize, check = fields
        assert check == 0
        name_end = pos + 110 + namesize
        assert blob[name_end - 1] == 0, "name not NUL-terminated"
        name = blob[pos + 110 : name_end - 1].decode()
        data_start = align(name_end)
        assert blob[name_end:data_start] == b"\0" * (data_start - name_end)
        data = blob[data_start : data_start + size]
        assert len(data) == size
        pos = align(data_start + size)
        if name == "TRAILER!!!":
            break
        out.append(
            CpioMember(ino, mode, uid, gid, nlink, mtime, dmaj, dmin, rmaj, rmin, name, data)
        )
    assert len(blob) % 512 == 0 and blob[pos:] == b"\0" * (len(blob) - pos)
    return out


def ramdisks(eif_bytes: bytes) -> list[bytes]:
    """The ramdisk sections' data, walking the header independently of the reader."""
    import struct

    count = struct.unpack(">H", eif_bytes[26:28])[0]
    offsets = struct.unpack(">32Q", eif_bytes[28 : 28 + 256])[:count]
    found = []
    for off in sorted(offsets):
        kind, _flags, size = struct.unpack(">HHQ", eif_bytes[off : off + 12])
        if kind == 3:
            found.append(eif_bytes[off + 12 : off + 12 + size])
    return found
