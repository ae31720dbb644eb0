"""Lay an EIF v4 out on disk, streaming, in nitro-cli's section order.

Order (``EifBuilder::write_to``): kernel, cmdline, metadata, ramdisks, signature. The header
(offsets and sizes known beforehand from the inputs) comes first, then every section with its
12-byte header; the CRC covers header[0:544] and then every section header and data in file
order (nitro-spec §5.3). PCRs are measured in a first pass so the signature, which signs PCR0,
can be made before anything is written. The file appears atomically (temp file + rename).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from attestation.eif import (
    CRC_FIELD_OFFSET,
    CURRENT_VERSION,
    DEFAULT_CPUS,
    DEFAULT_MEM,
    HEADER_SIZE,
    SECTION_HEADER_SIZE,
    EifHeader,
    SectionType,
)
from attestation.pcr import PCR_SIZE, extend

from .errors import EifBuildError
from .limits import DEFAULT_LIMITS, BuildLimits

_SECTION_HEADER = struct.Struct(">HHQ")
ARCH_FLAGS = {"x86_64": 0, "aarch64": 0x1}


@dataclass(frozen=True)
class Section:
    """One section's data, held in memory (``data``) or read from a file (``path``)."""

    type: SectionType
    data: bytes | None = None
    path: Path | None = None

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        return self.path.stat().st_size

    def chunks(self, chunk_size: int) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        assert self.path is not None
        with self.path.open("rb") as fh:
            while block := fh.read(chunk_size):
                yield block


def measure(
    kernel: Section, cmdline: Section, ramdisks: Sequence[Section],
    limits: BuildLimits = DEFAULT_LIMITS,
) -> dict[int, bytes]:  # fmt: skip
    """PCR0/1/2 of these sections (nitro-spec §5.4), streamed."""
    image, boot, app = hashlib.sha384(), hashlib.sha384(), hashlib.sha384()
    for section in (kernel, cmdline):
        for chunk in section.chunks(limits.chunk_size):
            image.update(chunk)
            boot.update(chunk)
    for index, section in enumerate(ramdisks):
        for chunk in section.chunks(limits.chunk_size):
            image.update(chunk)
            (boot if index == 0 else app).update(chunk)
    zero = bytes(PCR_SIZE)
    return {
        0: extend(zero, image.digest()),
        1: extend(zero, boot.digest()),
        2: extend(zero, app.digest()),
    }


def write_eif(
    output: Path,
    sections: Sequence[Section],
    *,
    arch: Literal["x86_64", "aarch64"] = "x86_64",
    limits: BuildLimits = DEFAULT_LIMITS,
) -> str:
    """Write ``sections`` (already in order) to ``output``; return the file's SHA-384 hex."""
    sizes = [s.size for s in sections]
    offsets, at = [], HEADER_SIZE
    for size in sizes:
        offsets.append(at)
        at += SECTION_HEADER_SIZE + size
    header = EifHeader(
        version=CURRENT_VERSION,
        flags=ARCH_FLAGS[arch],
        default_mem=DEFAULT_MEM,
        default_cpus=DEFAULT_CPUS,
        num_sections=len(sections),
        section_offsets=tuple(offsets),
        section_sizes=tuple(sizes),
        crc32=0,
    ).to_bytes()[:CRC_FIELD_OFFSET]
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            crc = zlib.crc32(header)
            fh.write(header + b"\0\0\0\0")
            for section, size in zip(sections, sizes, strict=True):
                head = _SECTION_HEADER.pack(int(section.type), 0, size)
                crc = zlib.crc32(head, crc)
                fh.write(head)
                written = 0
                for chunk in section.chunks(limits.chunk_size):
                    crc = zlib.crc32(chunk, crc)
                    fh.write(chunk)
                    written += len(chunk)
                if written != size:
                    raise EifBuildError("io", f"{section.type.name} changed size while writing")
            fh.seek(CRC_FIELD_OFFSET)
            fh.write(struct.pack(">I", crc))
        digest = hashlib.sha384()
        with tmp.open("rb") as fh:
            while block := fh.read(limits.chunk_size):
                digest.update(block)
        tmp.chmod(0o644)
        os.replace(tmp, output)
    except OSError as exc:
        raise EifBuildError("io", f"cannot write {output}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest()
