"""The blobs directory as nitro-cli installs it: kernel, cmdline, init, nsm.ko.

``bzImage`` (x86_64) or ``Image`` (aarch64), its ``.config`` (optional, gives the kernel
version for the metadata), ``cmdline`` (trimmed like nitro-cli does), ``init`` and ``nsm.ko``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import EifBuildError
from .limits import DEFAULT_LIMITS, BuildLimits

DEFAULT_BLOBS = Path("/usr/share/nitro_enclaves/blobs")
KERNELS: dict[str, Literal["x86_64", "aarch64"]] = {"bzImage": "x86_64", "Image": "aarch64"}
_KERNEL_VERSION = re.compile(rb"^# Linux/\S+ (\S+) Kernel Configuration", re.MULTILINE)


@dataclass(frozen=True)
class Blobs:
    """What the EIF takes from the blobs directory (paths, not contents, for the big ones)."""

    kernel: Path
    arch: Literal["x86_64", "aarch64"]
    cmdline: bytes
    init: Path
    nsm_ko: Path
    kernel_version: str

    def digests(self) -> dict[str, str]:
        """sha384 of each blob (provenance and metadata)."""
        return {
            self.kernel.name: file_sha384(self.kernel),
            "cmdline": hashlib.sha384(self.cmdline).hexdigest(),
            "init": file_sha384(self.init),
            "nsm.ko": file_sha384(self.nsm_ko),
        }


def file_sha384(path: Path, chunk: int = DEFAULT_LIMITS.chunk_size) -> str:
    h = hashlib.sha384()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _existing_file(path: Path, limits: BuildLimits) -> Path:
    if not path.is_file():
        raise EifBuildError("bad-blobs", f"{path} is missing from the blobs directory")
    if path.stat().st_size > limits.max_blob_bytes:
        raise EifBuildError("bad-blobs", f"{path} is larger than {limits.max_blob_bytes} bytes")
    return path


def load_blobs(directory: Path, limits: BuildLimits = DEFAULT_LIMITS) -> Blobs:
    """Check the directory and read the small blobs; raises EifBuildError('bad-blobs')."""
    if not directory.is_dir():
        raise EifBuildError("bad-blobs", f"blobs directory {directory} does not exist")
    present = [name for name in KERNELS if (directory / name).is_file()]
    if len(present) != 1:
        raise EifBuildError(
            "bad-blobs",
            f"{directory} must hold exactly one kernel (bzImage or Image), found {present or 0}",
        )
    kernel = _existing_file(directory / present[0], limits)
    cmdline_path = _existing_file(directory / "cmdline", limits)
    raw = cmdline_path.read_bytes()
    cmdline = raw.strip()
    if len(cmdline) > limits.max_cmdline_bytes or not cmdline.isascii() or b"\0" in cmdline:
        raise EifBuildError(
            "bad-blobs", f"cmdline must be ASCII, no NUL, at most {limits.max_cmdline_bytes} bytes"
        )
    config = directory / f"{present[0]}.config"
    version = "unknown"
    if config.is_file():
        with config.open("rb") as fh:
            found = _KERNEL_VERSION.search(fh.read(4096))
        if found:
            version = found.group(1).decode("ascii", "replace")
    return Blobs(
        kernel=kernel,
        arch=KERNELS[present[0]],
        cmdline=cmdline,
        init=_existing_file(directory / "init", limits),
        nsm_ko=_existing_file(directory / "nsm.ko", limits),
        kernel_version=version,
    )
