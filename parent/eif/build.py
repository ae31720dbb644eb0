"""Build an EIF from a flattened image filesystem and the blobs: same inputs, same bytes.

    >>> result = build(BuildInputs(blobs_dir=Path("blobs"), rootfs_tar=Path("rootfs.tar"),
    ...                            cmd=["/app"]), Path("build/app.eif"))
    >>> result.measurements()   # nitro-cli's {"Measurements": {...}}

Nothing host-specific enters the file: the build time is SOURCE_DATE_EPOCH (0 when unset),
the metadata holds the inputs' digests and no host or user names.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attestation.eif import SectionType, measurements_json

from ._rootfs import RootfsTar
from .blobs import Blobs, file_sha384, load_blobs
from .eif_writer import Section, measure, write_eif
from .errors import EifBuildError
from .limits import DEFAULT_LIMITS, BuildLimits
from .ramdisks import config_lines, write_bootstrap, write_customer
from .signing import Signer, pcr8, signature_section

BUILD_TOOL = "nitro-toolkit"


def builder_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nitro-toolkit")
    except PackageNotFoundError:
        return "0+unknown"


def source_date_epoch(environ: Mapping[str, str] | None = None) -> int:
    """SOURCE_DATE_EPOCH as an int (0 when unset); raises on garbage."""
    value = (os.environ if environ is None else environ).get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise EifBuildError("usage", f"SOURCE_DATE_EPOCH must be a non-negative integer: {value!r}")
    return int(value)


@dataclass(frozen=True)
class BuildInputs:
    """Everything the EIF depends on; two equal ``BuildInputs`` give equal files."""

    blobs_dir: Path
    rootfs_tar: Path
    cmd: Sequence[str]
    env: Sequence[str] = ()
    epoch: int = 0
    image_name: str = "app"
    image_version: str = "unversioned"
    docker_info: Mapping[str, Any] = field(default_factory=dict)
    signer: Signer | None = None
    image_arch: str | None = None  # from docker inspect; must match the kernel's
    rootfs_label: str = "rootfs.tar"
    rootfs_digest: str | None = None  # e.g. the image id: a docker export tar is not stable


@dataclass(frozen=True)
class BuildResult:
    """The written EIF: path, SHA-384 of the file, PCRs, and the digests that went in."""

    path: Path
    sha384: str
    pcrs: Mapping[int, bytes]
    metadata: Mapping[str, Any]
    inputs: Mapping[str, str]  # name -> digest ("sha256:…"/"sha384:…")

    def measurements(self) -> dict[str, Any]:
        return measurements_json(self.pcrs)


def _tar_sha256(path: Path, limits: BuildLimits) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(limits.chunk_size):
            h.update(block)
    return h.hexdigest()


def input_digests(inputs: BuildInputs, blobs: Blobs, limits: BuildLimits) -> dict[str, str]:
    """Digest of every input, for the metadata and the provenance statement."""
    out = {f"blobs/{name}": f"sha384:{d}" for name, d in blobs.digests().items()}
    out[inputs.rootfs_label] = inputs.rootfs_digest or (
        f"sha256:{_tar_sha256(inputs.rootfs_tar, limits)}"
    )
    out["cmd"] = "sha384:" + hashlib.sha384(config_lines(inputs.cmd, "cmd")).hexdigest()
    out["env"] = "sha384:" + hashlib.sha384(config_lines(inputs.env, "env")).hexdigest()
    return dict(sorted(out.items()))


def metadata(inputs: BuildInputs, blobs: Blobs, digests: Mapping[str, str]) -> dict[str, Any]:
    """nitro-cli's metadata shape (``EifIdentityInfo``) with a fixed build time."""
    return {
        "ImageName": inputs.image_name,
        "ImageVersion": inputs.image_version,
        "BuildMetadata": {
            "BuildTime": datetime.fromtimestamp(inputs.epoch, UTC).isoformat(),
            "BuildTool": BUILD_TOOL,
            "BuildToolVersion": builder_version(),
            "OperatingSystem": "Linux",
            "KernelVersion": blobs.kernel_version,
        },
        "DockerInfo": dict(inputs.docker_info),
        "CustomMetadata": {"Inputs": dict(digests)},
    }


def build(inputs: BuildInputs, output: Path, limits: BuildLimits = DEFAULT_LIMITS) -> BuildResult:
    """Write the EIF to ``output``; raises :class:`EifBuildError`."""
    blobs = load_blobs(inputs.blobs_dir, limits)
    if inputs.image_arch and inputs.image_arch != blobs.arch:
        raise EifBuildError(
            "bad-blobs", f"the image is {inputs.image_arch} but the kernel is {blobs.arch}"
        )
    digests = input_digests(inputs, blobs, limits)
    meta = metadata(inputs, blobs, digests)
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    with tempfile.TemporaryDirectory(prefix="eif-build-") as tmp:
        work = Path(tmp)
        boot = write_bootstrap(work / "bootstrap.cpio", blobs, limits)
        with RootfsTar(inputs.rootfs_tar, inputs.epoch, limits) as rootfs:
            customer = write_customer(
                work / "customer.cpio", rootfs, inputs.cmd, inputs.env, limits
            )
        kernel = Section(SectionType.KERNEL, path=blobs.kernel)
        cmdline = Section(SectionType.CMDLINE, data=blobs.cmdline)
        ramdisks = [
            Section(SectionType.RAMDISK, path=boot.path),
            Section(SectionType.RAMDISK, path=customer.path),
        ]
        pcrs = measure(kernel, cmdline, ramdisks, limits)
        sections = [kernel, cmdline, Section(SectionType.METADATA, data=meta_bytes), *ramdisks]
        if inputs.signer is not None:
            sections.append(
                Section(SectionType.SIGNATURE, data=signature_section(inputs.signer, pcrs[0]))
            )
            pcrs[8] = pcr8(inputs.signer)
        digest = write_eif(output, sections, arch=blobs.arch, limits=limits)
    return BuildResult(output, digest, pcrs, meta, digests)


__all__ = [
    "BUILD_TOOL",
    "BuildInputs",
    "BuildResult",
    "build",
    "builder_version",
    "file_sha384",
    "source_date_epoch",
]
