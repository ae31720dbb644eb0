"""PCR0/1/2 of the simulated enclave, measured from the code it actually runs.

The simulated enclave image has the sections of a real EIF (nitro-spec §5.4) and is hashed with
the EIF formulas (``attestation.pcr.image_pcrs``):

* ``kernel`` and ``cmdline`` — fixed: a named stand-in kernel blob and the real x86_64 Nitro
  kernel command line;
* ``ramdisk[0]`` — a fixed stand-in of the bootstrap ramdisk (``dev/``, ``init``, ``nsm.ko``);
* ``ramdisk[1]`` — a deterministic cpio "newc" archive of the enclave package's ``.py`` files
  under ``rootfs/app/enclave/`` (plus optional extra app files under ``rootfs/app/``).

With ``build_image_root`` the simulator first copies the packages the enclave runs (``enclave``
and ``attestation``, plus any app package) into a fresh private directory, and the NSM
measures that copy (``measure_image_root``: every file, ``rootfs/app/<package>/...``). The
enclave process then runs only from the copy: ``enclave_argv`` starts Python isolated (``-I``:
no ``PYTHON*`` variables, no user site, no current directory on the path) and without writing
bytecode (``-B``), and the copy holds no ``.pyc``, so no bytecode from outside can run.

So editing one enclave source file changes PCR0 and PCR2 but never PCR1. The archive is
byte-reproducible: entries sorted, mode 0644 (dirs 0755), uid/gid 0, mtime 0, inode numbers in
order, no compression; ``__pycache__`` directories, ``.pyc`` files and dot-directories are
ignored. ``python -m simulator.measure DIR`` prints the PCRs and the archive listing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from attestation.pcr import image_pcrs

__all__ = [
    "APP_PREFIX",
    "MAX_ARCHIVE_BYTES",
    "MAX_ARCHIVE_FILES",
    "SIM_BOOTSTRAP_RAMDISK",
    "SIM_CMDLINE",
    "SIM_KERNEL",
    "ArchiveEntry",
    "EnclaveImage",
    "MeasureError",
    "app_package_files",
    "build_enclave_image",
    "build_image_root",
    "cpio_newc",
    "enclave_archive",
    "enclave_argv",
    "measure_enclave_code",
    "measure_image_root",
    "package_files",
]

SIM_KERNEL = (
    b"nitro-toolkit simulated enclave kernel v1\n"
    b"Stand-in for the bzImage of the nitro-cli blobs; it is hashed, never executed.\n"
)
"""The ``kernel`` section of the simulated image."""
SIM_CMDLINE = (
    b"reboot=k panic=30 pci=off nomodules console=ttyS0 i8042.noaux i8042.nomux i8042.nopnp "
    b"i8042.dumbkbd random.trust_cpu=on"
)
"""The ``cmdline`` section: the real x86_64 Nitro kernel command line (nitro-spec §4.4)."""
APP_PREFIX = "rootfs/app"
"""Where the application's files sit inside ``ramdisk[1]``."""
MAX_ARCHIVE_FILES = 10_000
"""Most files measured into ``ramdisk[1]``."""
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024
"""Most bytes of file content measured into ``ramdisk[1]``."""

_FILE_MODE = 0o100644
_DIR_MODE = 0o040755
_CPIO_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


class MeasureError(Exception):
    """The enclave code cannot be measured (missing directory, bad name, too large)."""

    code = "measure-failed"


@dataclass(frozen=True)
class ArchiveEntry:
    """One file of ``ramdisk[1]``: its path in the archive, size and SHA-384 (hex)."""

    path: str
    size: int
    sha384: str


@dataclass(frozen=True)
class EnclaveImage:
    """The sections of the simulated enclave image and what went into its app ramdisk."""

    kernel: bytes
    cmdline: bytes
    ramdisks: tuple[bytes, ...]
    listing: tuple[ArchiveEntry, ...]

    @property
    def pcrs(self) -> dict[int, bytes]:
        """PCR0 (image), PCR1 (kernel + bootstrap) and PCR2 (application)."""
        return image_pcrs(self.kernel, self.cmdline, list(self.ramdisks))

    def describe(self) -> dict[str, object]:
        """JSON-ready summary: PCRs as hex, section sizes and the archive listing."""
        return {
            "pcrs": {str(i): v.hex() for i, v in self.pcrs.items()},
            "sections": {
                "kernel": len(self.kernel),
                "cmdline": len(self.cmdline),
                "ramdisks": [len(r) for r in self.ramdisks],
            },
            "files": [e.__dict__ for e in self.listing],
        }


def cpio_newc(files: Mapping[str, bytes]) -> bytes:
    """A reproducible cpio "newc" archive of ``{posix path: content}``.

    Parent directories are added as entries; all entries are sorted so that a directory
    precedes its contents; metadata is fixed (mode 0644/0755, uid/gid 0, mtime 0).
    """
    entries: dict[str, bytes | None] = {}
    for name, content in files.items():
        parts = _check_name(name)
        for depth in range(1, len(parts)):
            entries.setdefault("/".join(parts[:depth]), None)
        entries["/".join(parts)] = content
    out = bytearray()
    ordered = sorted(entries.items(), key=lambda item: item[0].split("/"))
    for ino, (name, entry) in enumerate(ordered, start=1):
        if entry is None:
            out += _cpio_entry(name, b"", ino=ino, mode=_DIR_MODE, nlink=2)
        else:
            out += _cpio_entry(name, entry, ino=ino, mode=_FILE_MODE, nlink=1)
    out += _cpio_entry(_TRAILER, b"", ino=0, mode=0, nlink=1)
    return bytes(out)


def _cpio_entry(name: str, content: bytes, *, ino: int, mode: int, nlink: int) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(content), 0, 0, 0, 0, len(encoded), 0)
    header = _CPIO_MAGIC + b"".join(b"%08x" % f for f in fields)
    head = header + encoded
    return head + _pad4(len(head)) + content + _pad4(len(content))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _check_name(name: str) -> list[str]:
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or "\0" in name
        or name == _TRAILER
    ):
        raise MeasureError(f"bad archive path {name!r}")
    return parts


SIM_BOOTSTRAP_RAMDISK = cpio_newc(
    {
        "dev/.keep": b"",
        "init": b"nitro-toolkit simulated init v1 (stand-in for the nitro-cli bootstrap init)\n",
        "nsm.ko": b"nitro-toolkit simulated nsm.ko v1 (stand-in for the NSM driver module)\n",
    }
)
"""``ramdisk[0]``: a fixed stand-in of the bootstrap ramdisk, so PCR1 is a constant."""


def _package_sources(source_dir: Path) -> Iterable[tuple[str, Path]]:
    """``(relative posix path, file)`` of every ``.py`` file below ``source_dir``, sorted."""
    for root, dirs, files in os.walk(source_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(files):
            path = Path(root, name)
            if name.endswith(".py") and path.is_file():
                yield path.relative_to(source_dir).as_posix(), path


def app_package_files(package: str | os.PathLike[str]) -> dict[str, Path]:
    """``app_files`` for an app package directory (or a single module file): its ``.py``
    files under ``<name>/`` (``<name>.py`` for a module), as measured into ``rootfs/app/``."""
    path = Path(package)
    if path.is_file() and path.suffix == ".py":
        return {path.name: path}
    if not (path / "__init__.py").is_file():
        raise MeasureError(f"{path} is neither a package directory nor a .py module")
    return {f"{path.name}/{rel}": file for rel, file in _package_sources(path)}


def build_enclave_image(
    source_dir: str | os.PathLike[str],
    *,
    app_files: Mapping[str, bytes | str | os.PathLike[str]] | None = None,
) -> EnclaveImage:
    """The simulated image of the enclave package at ``source_dir`` (plus ``app_files``).

    ``app_files`` maps a relative posix path under ``rootfs/app/`` to the file's content
    (bytes) or to a file to read.
    """
    src = Path(source_dir)
    if not src.is_dir():
        raise MeasureError(f"enclave source directory {src} does not exist")
    contents: dict[str, bytes] = {}
    total = 0

    def add(name: str, data: bytes) -> None:
        nonlocal total
        total += len(data)
        if len(contents) >= MAX_ARCHIVE_FILES or total > MAX_ARCHIVE_BYTES:
            raise MeasureError(
                f"enclave code exceeds {MAX_ARCHIVE_FILES} files or {MAX_ARCHIVE_BYTES} bytes"
            )
        if name in contents:
            raise MeasureError(f"{name} is given twice")
        contents[name] = data

    for rel, path in _package_sources(src):
        add(f"{APP_PREFIX}/enclave/{rel}", _read(path))
    for rel, value in sorted((app_files or {}).items()):
        name = str(PurePosixPath(APP_PREFIX, rel))
        _check_name(rel)
        add(name, bytes(value) if isinstance(value, bytes | bytearray) else _read(Path(value)))
    listing = tuple(
        ArchiveEntry(name, len(data), hashlib.sha384(data).hexdigest())
        for name, data in sorted(contents.items(), key=lambda item: item[0].split("/"))
    )
    return EnclaveImage(
        kernel=SIM_KERNEL,
        cmdline=SIM_CMDLINE,
        ramdisks=(SIM_BOOTSTRAP_RAMDISK, cpio_newc(contents)),
        listing=listing,
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise MeasureError(f"cannot read {path}: {e.strerror}") from None


def enclave_archive(
    source_dir: str | os.PathLike[str],
    *,
    app_files: Mapping[str, bytes | str | os.PathLike[str]] | None = None,
) -> bytes:
    """``ramdisk[1]`` of the simulated image: the cpio archive of the enclave's code."""
    return build_enclave_image(source_dir, app_files=app_files).ramdisks[1]


def measure_enclave_code(
    source_dir: str | os.PathLike[str],
    *,
    app_files: Mapping[str, bytes | str | os.PathLike[str]] | None = None,
) -> dict[int, bytes]:
    """PCR0, PCR1 and PCR2 of the enclave package at ``source_dir`` (EIF formulas)."""
    return build_enclave_image(source_dir, app_files=app_files).pcrs


# -- the measured copy the simulated enclave runs from ---------------------------------------

_BYTECODE_SUFFIXES = (".pyc", ".pyo")
_LAUNCHER = (
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)


def package_files(package_dir: str | os.PathLike[str]) -> Iterable[tuple[str, Path]]:
    """``(relative posix path, file)`` of every file of a package that is copied and measured.

    Every regular file counts (sources and data such as the pinned root PEM), sorted; bytecode
    (``__pycache__``, ``*.pyc``/``*.pyo``), dot entries and symlinks are left out, so they can
    neither run nor go unmeasured.
    """
    base = Path(package_dir)
    for root, dirs, files in os.walk(base):
        dirs[:] = sorted(
            d
            for d in dirs
            if d != "__pycache__" and not d.startswith(".") and not Path(root, d).is_symlink()
        )
        for name in sorted(files):
            path = Path(root, name)
            if name.startswith(".") or name.endswith(_BYTECODE_SUFFIXES) or path.is_symlink():
                continue
            if path.is_file():
                yield path.relative_to(base).as_posix(), path


def build_image_root(
    dest: str | os.PathLike[str], packages: Mapping[str, str | os.PathLike[str]]
) -> Path:
    """Copy each package (import name -> directory) into a fresh ``dest``, mode 0700.

    ``dest`` is replaced whole, so nothing left from an earlier run (or planted) survives. The
    copy is what ``measure_image_root`` measures and what ``enclave_argv`` runs.
    """
    root = Path(dest)
    if root.is_symlink() or root.is_file():
        raise MeasureError(f"{root} exists and is not a directory")
    if root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(mode=0o700, parents=False)
    os.chmod(root, 0o700)
    count = total = 0
    for name, directory in sorted(packages.items()):
        _check_name(name)
        if "/" in name or not name.isidentifier():
            raise MeasureError(f"package name {name!r} is not an importable name")
        if not Path(directory, "__init__.py").is_file():
            raise MeasureError(f"{directory} is not a package (no __init__.py)")
        for rel, path in package_files(directory):
            data = _read(path)
            count, total = count + 1, total + len(data)
            if count > MAX_ARCHIVE_FILES or total > MAX_ARCHIVE_BYTES:
                raise MeasureError(
                    f"enclave code exceeds {MAX_ARCHIVE_FILES} files or {MAX_ARCHIVE_BYTES} bytes"
                )
            target = root / name / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return root


def measure_image_root(root: str | os.PathLike[str]) -> EnclaveImage:
    """The simulated image of a ``build_image_root`` copy: every file, at ``rootfs/app/``."""
    base = Path(root)
    if not base.is_dir():
        raise MeasureError(f"image root {base} does not exist")
    files: dict[str, bytes | str | os.PathLike[str]] = {}
    for package in sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink()):
        for rel, path in package_files(package):
            files[f"{package.name}/{rel}"] = path
    if not files:
        raise MeasureError(f"image root {base} holds no package")
    return _image_of(files)


def _image_of(files: Mapping[str, bytes | str | os.PathLike[str]]) -> EnclaveImage:
    contents: dict[str, bytes] = {}
    total = 0
    for rel, value in sorted(files.items()):
        data = bytes(value) if isinstance(value, bytes | bytearray) else _read(Path(value))
        total += len(data)
        if len(contents) >= MAX_ARCHIVE_FILES or total > MAX_ARCHIVE_BYTES:
            raise MeasureError(
                f"enclave code exceeds {MAX_ARCHIVE_FILES} files or {MAX_ARCHIVE_BYTES} bytes"
            )
        contents[str(PurePosixPath(APP_PREFIX, *_check_name(rel)))] = data
    listing = tuple(
        ArchiveEntry(name, len(data), hashlib.sha384(data).hexdigest())
        for name, data in sorted(contents.items(), key=lambda item: item[0].split("/"))
    )
    return EnclaveImage(
        kernel=SIM_KERNEL,
        cmdline=SIM_CMDLINE,
        ramdisks=(SIM_BOOTSTRAP_RAMDISK, cpio_newc(contents)),
        listing=listing,
    )


def enclave_argv(
    python: str, image_root: str | os.PathLike[str], module: str, args: Iterable[str] = ()
) -> list[str]:
    """Run ``module`` from the measured copy only: isolated, unbuffered, writing no bytecode.

    ``-I`` ignores every ``PYTHON*`` variable, the user site and the working directory;
    ``-B`` writes no ``.pyc``; the copy's directory goes first on ``sys.path``.
    """
    return [python, "-I", "-B", "-u", "-c", _LAUNCHER, os.fspath(image_root), module, *args]


def main(argv: list[str] | None = None) -> int:
    """``python -m simulator.measure DIR [--json]``: PCR0-2 and the archive listing."""
    parser = argparse.ArgumentParser(prog="python -m simulator.measure", description=main.__doc__)
    parser.add_argument("source_dir", help="the enclave package directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        image = build_enclave_image(args.source_dir)
    except MeasureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(image.describe(), indent=1))
        return 0
    for index, value in image.pcrs.items():
        print(f"PCR{index} {value.hex()}")
    for entry in image.listing:
        print(f"  {entry.sha384[:16]}  {entry.size:>8}  {entry.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
