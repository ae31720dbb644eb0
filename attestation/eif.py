"""Enclave Image File (EIF): read, check and measure; and a small writer (nitro-spec §5).

``read_eif(path)`` walks the sections named by the header, checks the layout and the CRC, and
streams every section through the PCR hashes in bounded chunks, so a large EIF never sits in
memory and a hostile one gets an :class:`~attestation.errors.EifError`, never a raw exception.

    >>> image = read_eif("build/app.eif")
    >>> image.pcrs[0].hex()          # PCR0 = KMS ImageSha384
    >>> image.measurements()         # the same JSON shape as ``nitro-cli build-enclave``

``build_eif`` lays raw sections out as nitro-cli does (tests and users assemble EIFs with it);
``assemble_eif`` builds a whole, optionally signed, EIF from kernel, cmdline and ramdisks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from .errors import EifError
from .pcr import PCR_SIZE, extend, pcr3_from_role_arn, pcr4_from_instance_id

if TYPE_CHECKING:
    from cryptography import x509

    from .document import AttestationDocument
    from .eif_signature import SigningInfo

__all__ = [
    "CURRENT_VERSION",
    "EIF_MAGIC",
    "HASH_ALGORITHM",
    "HEADER_SIZE",
    "MAX_NUM_SECTIONS",
    "SECTION_HEADER_SIZE",
    "EifHeader",
    "EifImage",
    "EifLimits",
    "EifSection",
    "PcrComparison",
    "PcrMismatch",
    "SectionType",
    "SigningInfo",
    "assemble_eif",
    "build_eif",
    "compare_eif_with_document",
    "compare_pcrs",
    "measurements_json",
    "read_eif",
    "sign_pcr0",
]


def __getattr__(name: str) -> Any:
    """``SigningInfo`` lives in :mod:`attestation.eif_signature`, imported on first use (it
    loads cbor2 and cryptography, which reading an unsigned EIF does not need)."""
    if name == "SigningInfo":
        from .eif_signature import SigningInfo

        return SigningInfo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- format constants (nitro-spec §5.1, §5.2; EIF src/defs/mod.rs) ---------------------------
EIF_MAGIC = b".eif"
HEADER_SIZE = 548
CRC_FIELD_OFFSET = HEADER_SIZE - 4  # eif_crc32 is the last header field, excluded from the CRC
SECTION_HEADER_SIZE = 12
MAX_NUM_SECTIONS = 32
MIN_NUM_SECTIONS = 2
CURRENT_VERSION = 4
ARCH_ARM64_FLAG = 0x1
DEFAULT_MEM = 1 << 30  # what the builder writes (unused by nitro-cli)
DEFAULT_CPUS = 2
HASH_ALGORITHM = "Sha384 { ... }"  # nitro-cli prints `format!("{:?}", Sha384::new())`
MAX_SIGNATURE_SECTION_SIZE = 32 * 1024  # EIF README: signature section <= 32 KiB

_HEADER = struct.Struct(">4sHHQQHH32Q32QII")
_SECTION_HEADER = struct.Struct(">HHQ")
assert _HEADER.size == HEADER_SIZE and _SECTION_HEADER.size == SECTION_HEADER_SIZE


class SectionType(IntEnum):
    """EifSectionType; values >= 6 are rejected like nitro-cli does."""

    INVALID = 0
    KERNEL = 1
    CMDLINE = 2
    RAMDISK = 3
    SIGNATURE = 4
    METADATA = 5


@dataclass(frozen=True)
class EifLimits:
    """Every size the reader accepts or holds in memory at once."""

    chunk_size: int = 1 << 20  # bytes read per step while hashing a section
    max_signature_size: int = MAX_SIGNATURE_SECTION_SIZE
    max_metadata_size: int = 1 << 20  # metadata JSON is parsed in memory
    max_cmdline_kept: int = 4096  # the cmdline text is kept for display up to this size


DEFAULT_LIMITS = EifLimits()


@dataclass(frozen=True)
class EifHeader:
    """The 548-byte big-endian EIF header; offsets/sizes only for the used section slots."""

    version: int
    flags: int
    default_mem: int
    default_cpus: int
    num_sections: int
    section_offsets: tuple[int, ...]
    section_sizes: tuple[int, ...]
    crc32: int

    @property
    def arch(self) -> str:
        return "aarch64" if self.flags & ARCH_ARM64_FLAG else "x86_64"

    @classmethod
    def parse(cls, data: bytes) -> EifHeader:
        """Decode and sanity-check a header (magic, section count)."""
        if len(data) < HEADER_SIZE:
            raise EifError(
                f"truncated EIF: {len(data)} bytes, the header alone is {HEADER_SIZE}",
                expected=HEADER_SIZE,
                found=len(data),
            )
        fields = _HEADER.unpack(data[:HEADER_SIZE])
        magic, version, flags, mem, cpus, _reserved, num = fields[:7]
        offsets = fields[7 : 7 + MAX_NUM_SECTIONS]
        sizes = fields[7 + MAX_NUM_SECTIONS : 7 + 2 * MAX_NUM_SECTIONS]
        crc = fields[-1]
        if magic != EIF_MAGIC:
            raise EifError(
                "not an EIF: bad magic", expected=EIF_MAGIC.hex(), found=bytes(magic).hex()
            )
        if not MIN_NUM_SECTIONS <= num <= MAX_NUM_SECTIONS:
            raise EifError(
                f"bad EIF header: num_sections is {num}, "
                f"must be {MIN_NUM_SECTIONS}..{MAX_NUM_SECTIONS}",
                found=num,
            )
        return cls(version, flags, mem, cpus, num, tuple(offsets[:num]), tuple(sizes[:num]), crc)

    def to_bytes(self) -> bytes:
        offsets = list(self.section_offsets) + [0] * (MAX_NUM_SECTIONS - self.num_sections)
        sizes = list(self.section_sizes) + [0] * (MAX_NUM_SECTIONS - self.num_sections)
        return _HEADER.pack(
            EIF_MAGIC, self.version, self.flags, self.default_mem, self.default_cpus, 0,
            self.num_sections, *offsets, *sizes, 0, self.crc32,
        )  # fmt: skip


@dataclass(frozen=True)
class EifSection:
    """One section: ``offset`` is where its 12-byte header starts, ``size`` its data size."""

    slot: int  # index in the header's offset/size tables
    type: SectionType
    flags: int
    offset: int
    size: int

    @property
    def data_offset(self) -> int:
        return self.offset + SECTION_HEADER_SIZE

    @property
    def end(self) -> int:
        return self.data_offset + self.size


@dataclass(frozen=True)
class EifImage:
    """What :func:`read_eif` found: layout, CRC, measurements, signature, metadata."""

    header: EifHeader
    sections: tuple[EifSection, ...]  # file order
    pcrs: Mapping[int, bytes]  # 0, 1, 2 and 8 when signed
    computed_crc32: int
    file_size: int
    signing: SigningInfo | None = None
    metadata: Mapping[str, Any] | None = None
    cmdline: str | None = None

    @property
    def crc_ok(self) -> bool:
        return self.computed_crc32 == self.header.crc32

    @property
    def is_signed(self) -> bool:
        return self.signing is not None

    def measurements(self, extra: Mapping[int, bytes] | None = None) -> dict[str, Any]:
        """nitro-cli's JSON: ``{"Measurements": {"HashAlgorithm", "PCR0", ...}}``."""
        return measurements_json({**self.pcrs, **(extra or {})})

    def describe(self) -> dict[str, Any]:
        """``nitro-cli describe-eif``'s JSON (CLI ``json_output.rs`` ``EifDescribeInfo``).

        Keys in nitro-cli's order: EifVersion, Measurements, IsSigned, SigningCertificate and
        SignatureCheck (signed only), CheckCRC, ImageName, ImageVersion and Metadata (when
        the EIF has a metadata section; custom metadata fields are flattened into Metadata).
        """
        out: dict[str, Any] = {"EifVersion": self.header.version, **self.measurements()}
        out["IsSigned"] = self.is_signed
        if self.signing is not None:
            out["SigningCertificate"] = _certificate_info(self.signing.certificate_der)
        out["CheckCRC"] = self.crc_ok
        if self.signing is not None:
            out["SignatureCheck"] = self.signing.signature_check
        if self.metadata is not None:
            out.update(_metadata_describe(self.metadata))
        return out


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _openssl_time(when: datetime) -> str:
    """OpenSSL's ASN1_TIME_print form, as nitro-cli prints it: ``Jan  2 03:04:05 2025 GMT``."""
    return f"{_MONTHS[when.month - 1]} {when.day:2d} {when:%H:%M:%S} {when.year} GMT"


def _certificate_info(der: bytes) -> dict[str, Any]:
    """nitro-cli's ``SignCertificateInfo``: IssuerName (long attribute names, sorted),
    Algorithm, NotBefore, NotAfter and Signature (upper-case hex bytes joined by ':')."""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    issuer = {
        getattr(attr.oid, "_name", attr.oid.dotted_string): str(attr.value) for attr in cert.issuer
    }
    algorithm = getattr(cert.signature_algorithm_oid, "_name", None)
    return {
        "IssuerName": dict(sorted(issuer.items())),
        "Algorithm": algorithm or cert.signature_algorithm_oid.dotted_string,
        "NotBefore": _openssl_time(cert.not_valid_before_utc),
        "NotAfter": _openssl_time(cert.not_valid_after_utc),
        "Signature": cert.signature.hex(":").upper(),
    }


_BUILD_FIELDS = ("BuildTime", "BuildTool", "BuildToolVersion", "OperatingSystem", "KernelVersion")


def _metadata_describe(meta: Mapping[str, Any]) -> dict[str, Any]:
    """ImageName, ImageVersion and Metadata as nitro-cli shows an EIF's metadata section
    (``MetadataDescribeInfo``: the BuildMetadata fields, DockerInfo, then the custom fields)."""
    out: dict[str, Any] = {}
    for key in ("ImageName", "ImageVersion"):
        if key in meta:
            out[key] = meta[key]
    build = meta.get("BuildMetadata")
    build = build if isinstance(build, Mapping) else {}
    described: dict[str, Any] = {k: build[k] for k in _BUILD_FIELDS if k in build}
    described["DockerInfo"] = meta.get("DockerInfo")
    custom = meta.get("CustomMetadata")
    if isinstance(custom, Mapping):
        described.update(custom)  # serde(flatten): custom fields sit beside the others
    out["Metadata"] = described
    return out


def measurements_json(pcrs: Mapping[int, bytes]) -> dict[str, Any]:
    """``{"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCRn": hex, ...}}`` (sorted)."""
    inner: dict[str, Any] = {"HashAlgorithm": HASH_ALGORITHM}
    for index in sorted(pcrs):
        inner[f"PCR{index}"] = pcrs[index].hex()
    return {"Measurements": inner}


# --- reader -------------------------------------------------------------------------------------


def read_eif(
    source: str | os.PathLike[str] | IO[bytes] | bytes,
    *,
    check_crc: bool = True,
    limits: EifLimits = DEFAULT_LIMITS,
) -> EifImage:
    """Read an EIF from a path, a binary file object or bytes; measure it.

    Raises :class:`EifError` for anything that is not a well-formed EIF (and, unless
    ``check_crc=False``, for a CRC mismatch; with ``check_crc=False`` see ``crc_ok``).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return _read(io.BytesIO(bytes(source)), check_crc, limits)
    if isinstance(source, str | os.PathLike):
        try:
            fh = open(source, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise EifError(f"cannot open EIF {os.fspath(source)!r}: {exc.strerror}") from exc
        with fh:
            return _read(fh, check_crc, limits)
    return _read(source, check_crc, limits)


def _read(fh: IO[bytes], check_crc: bool, limits: EifLimits) -> EifImage:
    try:
        return _Reader(fh, limits).run(check_crc)
    except EifError:
        raise
    except OSError as exc:
        raise EifError(f"I/O error while reading the EIF: {exc}") from exc
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        # Every check above raises EifError; this only keeps a missed case typed (never a
        # traceback for a hostile file).
        raise EifError(f"EIF could not be parsed: {type(exc).__name__}: {exc}"[:300]) from exc


class _Reader:
    def __init__(self, fh: IO[bytes], limits: EifLimits) -> None:
        self.fh = fh
        self.limits = limits
        fh.seek(0, io.SEEK_END)
        self.size = fh.tell()
        fh.seek(0)

    def _read_single(self, sec: EifSection, count: int, limit: int) -> bytes:
        """The data of a section that may appear once and is read whole, at most ``limit``."""
        what = sec.type.name.lower()
        if count > 1:
            raise EifError(f"EIF has more than one {what} section")
        if sec.size > limit:
            raise EifError(
                f"EIF {what} section is {sec.size} bytes, limit {limit}",
                expected=limit,
                found=sec.size,
            )
        return self._read_exact(sec.data_offset, sec.size)

    def _read_exact(self, offset: int, n: int) -> bytes:
        self.fh.seek(offset)
        data = self.fh.read(n)
        if len(data) != n:
            raise EifError(f"truncated EIF: wanted {n} bytes at offset {offset}, got {len(data)}")
        return data

    def _chunks(self, offset: int, n: int) -> Iterable[bytes]:
        self.fh.seek(offset)
        left = n
        while left:
            chunk = self.fh.read(min(left, self.limits.chunk_size))
            if not chunk:
                raise EifError(f"truncated EIF: section data at offset {offset} ends early")
            left -= len(chunk)
            yield chunk

    def run(self, check_crc: bool) -> EifImage:
        raw_header = self._read_exact(0, min(self.size, HEADER_SIZE)) if self.size else b""
        header = EifHeader.parse(raw_header)
        sections = self._layout(header)
        crc = zlib.crc32(raw_header[:CRC_FIELD_OFFSET])
        image_h, boot_h, app_h = hashlib.sha384(), hashlib.sha384(), hashlib.sha384()
        seen: dict[SectionType, int] = {}
        ramdisks = 0
        signature: bytes | None = None
        metadata: Mapping[str, Any] | None = None
        cmdline: str | None = None
        for sec in sections:
            crc = zlib.crc32(self._read_exact(sec.offset, SECTION_HEADER_SIZE), crc)
            count = seen[sec.type] = seen.get(sec.type, 0) + 1
            if sec.type in (SectionType.KERNEL, SectionType.CMDLINE):
                if count > 1:
                    raise EifError(f"EIF has more than one {sec.type.name.lower()} section")
                kept = bytearray()
                for chunk in self._chunks(sec.data_offset, sec.size):
                    crc = zlib.crc32(chunk, crc)
                    image_h.update(chunk)
                    boot_h.update(chunk)
                    if sec.type is SectionType.CMDLINE and sec.size <= self.limits.max_cmdline_kept:
                        kept += chunk
                if sec.type is SectionType.CMDLINE and sec.size <= self.limits.max_cmdline_kept:
                    cmdline = kept.decode("ascii", "replace")
            elif sec.type is SectionType.RAMDISK:
                if SectionType.KERNEL not in seen:
                    raise EifError(f"EIF ramdisk at offset {sec.offset} comes before the kernel")
                for chunk in self._chunks(sec.data_offset, sec.size):
                    crc = zlib.crc32(chunk, crc)
                    image_h.update(chunk)
                    (boot_h if ramdisks == 0 else app_h).update(chunk)
                ramdisks += 1
            elif sec.type is SectionType.SIGNATURE:
                signature = self._read_single(sec, count, self.limits.max_signature_size)
                crc = zlib.crc32(signature, crc)
            else:  # METADATA (types were validated in _layout)
                raw = self._read_single(sec, count, self.limits.max_metadata_size)
                crc = zlib.crc32(raw, crc)
                metadata = _parse_metadata(raw)
        for needed in (SectionType.KERNEL, SectionType.CMDLINE, SectionType.RAMDISK):
            if needed not in seen:
                raise EifError(f"EIF has no {needed.name.lower()} section")
        if check_crc and crc != header.crc32:
            raise EifError(
                f"EIF CRC mismatch: header says {header.crc32:08x}, content gives {crc:08x} "
                "(file corrupted or modified after build)",
                expected=f"{header.crc32:08x}",
                found=f"{crc:08x}",
            )
        pcrs = {
            0: extend(bytes(PCR_SIZE), image_h.digest()),
            1: extend(bytes(PCR_SIZE), boot_h.digest()),
            2: extend(bytes(PCR_SIZE), app_h.digest()),
        }
        signing = None
        if signature is not None:
            size = self.limits.max_signature_size
            from .eif_signature import SECTION_CBOR, read_section, section_cbor

            cbor = SECTION_CBOR if size == MAX_SIGNATURE_SECTION_SIZE else section_cbor(size)
            signing = read_section(signature, pcrs[0], cbor)
            pcrs[8] = extend(bytes(PCR_SIZE), hashlib.sha384(signing.certificate_der).digest())
        return EifImage(
            header=header,
            sections=tuple(sections),
            pcrs=pcrs,
            computed_crc32=crc,
            file_size=self.size,
            signing=signing,
            metadata=metadata,
            cmdline=cmdline,
        )

    def _layout(self, header: EifHeader) -> list[EifSection]:
        """Sections in file order; reject anything outside the file, overlapping or gapped."""
        placed = sorted(
            zip(
                header.section_offsets,
                header.section_sizes,
                range(header.num_sections),
                strict=True,
            ),
        )
        for offset, _size, slot in placed:
            if offset + SECTION_HEADER_SIZE > self.size:
                raise EifError(
                    f"EIF section {slot} (offset {offset}) lies outside the {self.size}-byte file"
                )
        sections: list[EifSection] = []
        expected_offset = HEADER_SIZE
        for offset, size, slot in placed:
            if offset < expected_offset:
                what = "overlaps the header" if offset < HEADER_SIZE else "overlaps another"
                if sections and offset == sections[-1].offset:
                    what = "has the same offset as another (duplicate)"
                raise EifError(f"EIF section {slot} at offset {offset} {what}")
            if offset > expected_offset:
                # nitro-cli reads sections back to back; a gap would make it see other bytes
                raise EifError(
                    f"EIF has {offset - expected_offset} unaccounted bytes at offset "
                    f"{expected_offset} before section {slot}"
                )
            raw = self._read_exact(offset, SECTION_HEADER_SIZE)
            type_code, flags, own_size = _SECTION_HEADER.unpack(raw)
            if type_code == SectionType.INVALID or type_code > max(SectionType):
                raise EifError(
                    f"EIF section {slot} at offset {offset} has invalid type {type_code}",
                    found=type_code,
                )
            signature = type_code == SectionType.SIGNATURE
            if not signature and offset + SECTION_HEADER_SIZE + size > self.size:
                raise EifError(
                    f"EIF section {slot} (offset {offset}, size {size}) "
                    f"lies outside the {self.size}-byte file"
                )
            if own_size != size and not signature:
                # nitro-cli reads each size from the section header, one section after
                # another. Only `nitro-cli sign-eif` on a signed EIF leaves the table's size
                # of the signature section stale (it rewrites offsets, not that size); any
                # other disagreement is refused.
                raise EifError(
                    f"EIF section {slot}: header table says {size} bytes, "
                    f"section header says {own_size}",
                    expected=size,
                    found=own_size,
                )
            if offset + SECTION_HEADER_SIZE + own_size > self.size:
                raise EifError(
                    f"EIF section {slot} (offset {offset}, size {own_size}) "
                    f"lies outside the {self.size}-byte file"
                )
            sections.append(EifSection(slot, SectionType(type_code), flags, offset, own_size))
            expected_offset = offset + SECTION_HEADER_SIZE + own_size
        if expected_offset != self.size:
            raise EifError(
                f"EIF has {self.size - expected_offset} trailing bytes after the last section"
            )
        return sections


def _parse_metadata(raw: bytes) -> Mapping[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise EifError(f"EIF metadata section is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise EifError("EIF metadata section is not a JSON object")
    return value


# --- writer -------------------------------------------------------------------------------------


def build_eif(
    sections: Sequence[tuple[SectionType | int, bytes]],
    *,
    version: int = CURRENT_VERSION,
    arch: Literal["x86_64", "aarch64"] = "x86_64",
    default_mem: int = DEFAULT_MEM,
    default_cpus: int = DEFAULT_CPUS,
    crc32: int | None = None,
) -> bytes:
    """Lay ``sections`` out back to back after the header, in the given order, with the CRC.

    No semantic checks (tests use it to build hostile files too); ``crc32`` overrides the CRC.
    """
    if not 1 <= len(sections) <= MAX_NUM_SECTIONS:
        raise ValueError(f"an EIF holds 1..{MAX_NUM_SECTIONS} sections")
    offsets, sizes, body = [], [], bytearray()
    for kind, data in sections:
        offsets.append(HEADER_SIZE + len(body))
        sizes.append(len(data))
        body += _SECTION_HEADER.pack(int(kind), 0, len(data)) + data
    header = EifHeader(
        version=version,
        flags=ARCH_ARM64_FLAG if arch == "aarch64" else 0,
        default_mem=default_mem,
        default_cpus=default_cpus,
        num_sections=len(sections),
        section_offsets=tuple(offsets),
        section_sizes=tuple(sizes),
        crc32=0,
    )
    raw = header.to_bytes()
    crc = zlib.crc32(bytes(body), zlib.crc32(raw[:CRC_FIELD_OFFSET]))
    return raw[:CRC_FIELD_OFFSET] + struct.pack(">I", crc if crc32 is None else crc32) + body


def sign_pcr0(pcr0: bytes, certificate_pem: bytes, private_key: Any) -> bytes:
    """The signature section nitro-cli writes (:func:`attestation.eif_signature.build_section`),
    signed with ``private_key``: ES256/384/512 by its curve (P-256, P-384 or P-521)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from ._cose import ALG_FOR_CURVE, ECDSA_ALGORITHMS
    from .eif_signature import build_section

    alg = ALG_FOR_CURVE.get(getattr(getattr(private_key, "curve", None), "name", ""))
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) or alg is None:
        raise TypeError("EIF signing needs an EC private key (P-256, P-384 or P-521)")
    ecdsa = ECDSA_ALGORITHMS[alg].ecdsa
    return build_section(pcr0, certificate_pem, lambda m: private_key.sign(m, ecdsa), alg)


def assemble_eif(
    kernel: bytes,
    cmdline: bytes,
    ramdisks: Sequence[bytes],
    *,
    metadata: Mapping[str, Any] | bytes | None = None,
    signing_certificate_pem: bytes | None = None,
    signing_key: Any = None,
    arch: Literal["x86_64", "aarch64"] = "x86_64",
) -> bytes:
    """A whole EIF in nitro-cli's order: kernel, cmdline, metadata, ramdisks, signature."""
    from .pcr import image_pcrs

    meta = metadata if metadata is not None else _default_metadata()
    if not isinstance(meta, bytes):
        meta = json.dumps(meta, separators=(",", ":")).encode()
    sections: list[tuple[SectionType | int, bytes]] = [
        (SectionType.KERNEL, kernel),
        (SectionType.CMDLINE, cmdline),
        (SectionType.METADATA, meta),
        *((SectionType.RAMDISK, r) for r in ramdisks),
    ]
    if (signing_certificate_pem is None) != (signing_key is None):
        raise ValueError("signing needs both signing_certificate_pem and signing_key")
    if signing_certificate_pem is not None:
        pcr0 = image_pcrs(kernel, cmdline, list(ramdisks))[0]
        signature = sign_pcr0(pcr0, signing_certificate_pem, signing_key)
        sections.append((SectionType.SIGNATURE, signature))
    return build_eif(sections, arch=arch)


def _default_metadata() -> dict[str, Any]:
    return {
        "ImageName": "app",
        "ImageVersion": "1.0",
        "BuildMetadata": {
            "BuildTime": "1970-01-01T00:00:00+00:00",
            "BuildTool": "nitro-toolkit",
            "BuildToolVersion": "0.1.0",
            "OperatingSystem": "Linux",
            "KernelVersion": "unknown",
        },
        "DockerInfo": {},
        "CustomMetadata": None,
    }


# --- comparisons (verify before deploy) ---------------------------------------------------------


@dataclass(frozen=True)
class PcrMismatch:
    index: int
    expected: bytes | None
    found: bytes | None

    def describe(self) -> str:
        exp = self.expected.hex() if self.expected is not None else "(absent)"
        fnd = self.found.hex() if self.found is not None else "(absent)"
        return f"PCR{self.index} mismatch: expected {exp}, found {fnd}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "pcr": self.index,
            "expected": self.expected.hex() if self.expected is not None else None,
            "found": self.found.hex() if self.found is not None else None,
        }


@dataclass(frozen=True)
class PcrComparison:
    """Result of comparing expected PCRs (from an EIF) with found ones."""

    checked: tuple[int, ...]
    mismatches: tuple[PcrMismatch, ...]
    document: AttestationDocument | None = field(default=None, compare=False)

    @property
    def matches(self) -> bool:
        return not self.mismatches


def compare_pcrs(expected: Mapping[int, bytes], found: Mapping[int, bytes]) -> PcrComparison:
    """Compare every expected PCR with the found one (absent counts as a mismatch)."""
    mismatches = tuple(
        PcrMismatch(i, expected[i], found.get(i))
        for i in sorted(expected)
        if found.get(i) != expected[i]
    )
    return PcrComparison(tuple(sorted(expected)), mismatches)


def compare_eif_with_document(
    eif: str | os.PathLike[str] | EifImage,
    document: bytes,
    *,
    roots: Sequence[x509.Certificate] | None = None,
    at: datetime | Literal["document"] | None = None,
    role_arn: str | None = None,
    instance_id: str | None = None,
) -> PcrComparison:
    """Verify ``document`` (authenticity, chain to the pinned root) and compare its PCRs with
    the EIF's PCR0/1/2 (+8 when signed, +3/+4 when a role ARN / instance id is given).

    Raises the verifier's :class:`AttestationError` when the document itself is not valid.
    """
    from .verifier import verify

    image = eif if isinstance(eif, EifImage) else read_eif(eif)
    expected = dict(image.pcrs)
    if role_arn is not None:
        expected[3] = pcr3_from_role_arn(role_arn)
    if instance_id is not None:
        expected[4] = pcr4_from_instance_id(instance_id)
    doc = verify(document, None, roots=roots, at=at)
    result = compare_pcrs(expected, doc.pcrs)
    return PcrComparison(result.checked, result.mismatches, doc)


def load_measurements(data: Mapping[str, Any] | str | Path) -> dict[int, bytes]:
    """Read PCRs from nitro-cli's ``{"Measurements": {"PCR0": hex}}``, a flat ``{"PCR0": hex}``
    or a policy-like ``{"pcrs": {"0": hex}}`` mapping (or a JSON file holding one)."""
    if isinstance(data, str | Path):
        try:
            data = json.loads(Path(data).read_text())
        except (OSError, ValueError) as exc:
            raise EifError(f"cannot read measurements {str(data)!r}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise EifError("measurements must be a JSON object")
    table: Any = data.get("Measurements", data.get("pcrs", data))
    if not isinstance(table, Mapping):
        raise EifError("measurements: no PCR table found")
    out: dict[int, bytes] = {}
    for key, value in table.items():
        name = str(key)
        if name == "HashAlgorithm":
            continue
        digits = name[3:] if name.upper().startswith("PCR") else name
        try:
            index = int(digits)
            pcr = bytes.fromhex(value) if isinstance(value, str) else b""
        except ValueError as exc:
            raise EifError(f"measurements: bad entry {name!r}") from exc
        if not 0 <= index < 32 or len(pcr) != PCR_SIZE:
            raise EifError(f"measurements: bad entry {name!r} (need PCR0..31 = 96 hex digits)")
        out[index] = pcr
    if not out:
        raise EifError("measurements: no PCR values found")
    return out
