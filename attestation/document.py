"""The attestation document: strict parsing of its structure (nitro-spec §2.1-2.3).

:func:`parse_document` checks structure only: CBOR, the COSE_Sign1 envelope, the ES384 header
and the payload schema with its size limits. It proves nothing about authenticity; use
:func:`attestation.verify` for that. The original protected-header, payload and signature bytes
are kept so the signature is checked over exactly what was received.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from ._cbor import decode_strict
from ._cose import ALG_ES384, ES384_SIGNATURE_SIZE, HEADER_ALG
from .errors import MalformedError, NitroTpmDocumentError, UnsupportedAlgorithmError

__all__ = [
    "MAX_CABUNDLE_LENGTH",
    "MAX_CERTIFICATE_SIZE",
    "MAX_DOCUMENT_SIZE",
    "MAX_FIELD_SIZE",
    "MAX_PAYLOAD_SIZE",
    "MAX_PCR_COUNT",
    "AttestationDocument",
    "parse_document",
]

MAX_PAYLOAD_SIZE = 16384
"""Payload bytes, "1..16384" (NSM attestation_process.md §3.1)."""
MAX_PROTECTED_SIZE = 64
"""Protected header bytes; the NSM writes 4 (``{1: -35}``)."""
MAX_DOCUMENT_SIZE = MAX_PAYLOAD_SIZE + 512
"""Whole document: payload plus envelope, protected header, 96-byte signature and tag."""
MAX_CERTIFICATE_SIZE = 1024
"""Each DER certificate, ``bytes .size (1..1024)``."""
MAX_FIELD_SIZE = 1024
"""public_key, user_data and nonce, ``bytes .size (0..1024)``."""
MAX_CABUNDLE_LENGTH = 8
"""CA certificates in the bundle (AWS sends 4); bounds the work of chain validation."""
MAX_PCR_COUNT = 32
PCR_INDEX_LIMIT = 32  # indexes 0..31
PCR_SIZES = frozenset({32, 48, 64})
SUPPORTED_DIGEST = "SHA384"
MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, so .datetime never overflows

_COSE_TAG_BYTE = 0xD2  # tag 18 (COSE_Sign1) in its one-byte form
_MANDATORY = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")
NITROTPM_PCRS_FIELD = "nitrotpm_pcrs"
"""Where a NitroTPM document (an EC2 instance's, not an enclave's) keeps its PCRs."""
NITROTPM_MODULE_MARK = "-tpm"
"""NitroTPM module ids read ``i-…-tpm…``; an enclave's read ``i-…-enc…``."""


@dataclass(frozen=True, slots=True)
class AttestationDocument:
    """A structurally valid attestation document; optional fields are ``None`` when absent."""

    module_id: str
    timestamp: int
    """Milliseconds since the UNIX epoch, UTC, as signed by the NSM."""
    digest: str
    pcrs: Mapping[int, bytes]
    certificate: bytes
    """The leaf (signing) certificate, DER."""
    cabundle: tuple[bytes, ...]
    """The CA certificates, DER, root first."""
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    protected: bytes
    """Original protected-header bytes (signed)."""
    payload: bytes
    """Original payload bytes (signed)."""
    signature: bytes
    """Raw 96-byte ES384 ``r || s``."""

    def __hash__(self) -> int:
        return hash((self.protected, self.payload, self.signature))

    @property
    def datetime(self) -> datetime:
        """The signed timestamp as an aware UTC datetime."""
        return datetime.fromtimestamp(self.timestamp / 1000, UTC)

    @property
    def is_debug(self) -> bool:
        """True for a debug-mode enclave: PCR0 all zero (or absent: nothing measured)."""
        pcr0 = self.pcrs.get(0)
        return pcr0 is None or not any(pcr0)


def parse_document(data: bytes) -> AttestationDocument:
    """Parse a COSE_Sign1 attestation document (tagged or untagged), checking structure only.

    Raises :class:`MalformedError` for anything that is not a well-formed Nitro document and
    :class:`UnsupportedAlgorithmError` for an algorithm or digest other than ES384/SHA384.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedError(f"a document is bytes, not {type(data).__name__}")
    data = bytes(data)
    if not 0 < len(data) <= MAX_DOCUMENT_SIZE:
        raise MalformedError(
            f"document size {len(data)} is outside 1..{MAX_DOCUMENT_SIZE}",
            expected=MAX_DOCUMENT_SIZE,
            found=len(data),
        )
    if data[0] == _COSE_TAG_BYTE:  # tagged COSE_Sign1; any other tag is refused below
        data = data[1:]
    envelope = decode_strict(data, "COSE_Sign1")
    if not isinstance(envelope, list | tuple) or len(envelope) != 4:
        raise MalformedError("COSE_Sign1 must be an array of 4 items")
    protected, unprotected, payload, signature = envelope
    _check_protected(protected)
    if not isinstance(unprotected, Mapping) or len(unprotected) != 0:
        # Nothing unsigned may ride along: the unprotected header is empty on every NSM document.
        raise MalformedError("COSE unprotected header must be an empty map")
    if not isinstance(payload, bytes) or not 0 < len(payload) <= MAX_PAYLOAD_SIZE:
        raise MalformedError(f"COSE payload must be 1..{MAX_PAYLOAD_SIZE} bytes")
    if not isinstance(signature, bytes) or len(signature) != ES384_SIGNATURE_SIZE:
        raise MalformedError(
            f"ES384 signature must be {ES384_SIGNATURE_SIZE} bytes (r || s)",
            expected=ES384_SIGNATURE_SIZE,
            found=len(signature) if isinstance(signature, bytes) else type(signature).__name__,
        )
    fields = decode_strict(payload, "payload")
    if not isinstance(fields, Mapping):
        raise MalformedError("payload must be a CBOR map")
    return _build(fields, protected, payload, signature)


def _check_protected(protected: Any) -> None:
    if not isinstance(protected, bytes) or not 0 < len(protected) <= MAX_PROTECTED_SIZE:
        raise MalformedError(f"COSE protected header must be 1..{MAX_PROTECTED_SIZE} bytes")
    header = decode_strict(protected, "protected header")
    if not isinstance(header, Mapping):
        raise MalformedError("COSE protected header must be a map")
    if HEADER_ALG not in header:
        raise MalformedError("COSE protected header has no algorithm (label 1)")
    alg = header[HEADER_ALG]
    if type(alg) is not int or alg != ALG_ES384:
        raise UnsupportedAlgorithmError(
            f"COSE algorithm {alg!r} is not ES384 (-35)", expected=ALG_ES384, found=repr(alg)
        )
    if len(header) != 1:
        others = sorted(repr(k) for k in header if k != HEADER_ALG)
        raise MalformedError(f"unexpected COSE protected header parameters: {', '.join(others)}")


def _build(
    fields: Mapping[Any, Any], protected: bytes, payload: bytes, signature: bytes
) -> AttestationDocument:
    _refuse_nitrotpm(fields)
    for name in _MANDATORY:
        if fields.get(name) is None:
            raise MalformedError(f"payload field {name!r} is missing")
    module_id = fields["module_id"]
    if type(module_id) is not str or not module_id:
        raise MalformedError("module_id must be a non-empty text string")
    digest = fields["digest"]
    if type(digest) is not str:
        raise MalformedError("digest must be a text string")
    if digest != SUPPORTED_DIGEST:
        raise UnsupportedAlgorithmError(
            f"digest {digest[:32]!r} is not {SUPPORTED_DIGEST}",
            expected=SUPPORTED_DIGEST,
            found=digest[:32],
        )
    timestamp = fields["timestamp"]
    if type(timestamp) is not int or not 0 < timestamp <= MAX_TIMESTAMP_MS:
        raise MalformedError(f"timestamp must be an integer in 1..{MAX_TIMESTAMP_MS} (ms)")
    return AttestationDocument(
        module_id=module_id,
        timestamp=timestamp,
        digest=digest,
        pcrs=_pcrs(fields["pcrs"]),
        certificate=_sized_bytes(fields["certificate"], "certificate", 1, MAX_CERTIFICATE_SIZE),
        cabundle=_cabundle(fields["cabundle"]),
        public_key=_optional(fields, "public_key"),
        user_data=_optional(fields, "user_data"),
        nonce=_optional(fields, "nonce"),
        protected=protected,
        payload=payload,
        signature=signature,
    )


def _refuse_nitrotpm(fields: Mapping[Any, Any]) -> None:
    """Name a NitroTPM document for what it is, so a wrong input is not just "malformed"."""
    module_id = fields.get("module_id")
    tpm_id = type(module_id) is str and NITROTPM_MODULE_MARK in module_id
    if NITROTPM_PCRS_FIELD in fields or (tpm_id and "pcrs" not in fields):
        raise NitroTpmDocumentError(
            "this is a NitroTPM attestation document (an EC2 instance's TPM, "
            f"{NITROTPM_PCRS_FIELD!r} instead of 'pcrs'), not a Nitro Enclaves NSM document",
            expected="an enclave document with 'pcrs'",
            found=f"module_id {str(module_id)[:64]!r}",
        )


def _sized_bytes(value: Any, name: str, low: int, high: int) -> bytes:
    if type(value) is not bytes:
        raise MalformedError(f"{name} must be a byte string")
    if not low <= len(value) <= high:
        raise MalformedError(
            f"{name} is {len(value)} bytes, allowed {low}..{high}",
            expected=f"{low}..{high}",
            found=len(value),
        )
    return value


def _optional(fields: Mapping[Any, Any], name: str) -> bytes | None:
    value = fields.get(name)
    if value is None:  # CBOR null and a missing key mean the same: absent
        return None
    return _sized_bytes(value, name, 0, MAX_FIELD_SIZE)


def _pcrs(value: Any) -> Mapping[int, bytes]:
    if not isinstance(value, Mapping):
        raise MalformedError("pcrs must be a map")
    if not 0 < len(value) <= MAX_PCR_COUNT:
        raise MalformedError(
            f"pcrs has {len(value)} entries, allowed 1..{MAX_PCR_COUNT}",
            expected=f"1..{MAX_PCR_COUNT}",
            found=len(value),
        )
    out: dict[int, bytes] = {}
    for index, pcr in value.items():
        if type(index) is not int or not 0 <= index < PCR_INDEX_LIMIT:
            raise MalformedError(f"PCR index {index!r:.40} is not an integer in 0..31")
        if type(pcr) is not bytes or len(pcr) not in PCR_SIZES:
            raise MalformedError(f"PCR{index} must be a byte string of 32, 48 or 64 bytes")
        out[index] = pcr
    return MappingProxyType(out)


def _cabundle(value: Any) -> tuple[bytes, ...]:
    if not isinstance(value, list | tuple):
        raise MalformedError("cabundle must be an array")
    if not 0 < len(value) <= MAX_CABUNDLE_LENGTH:
        raise MalformedError(
            f"cabundle has {len(value)} certificates, allowed 1..{MAX_CABUNDLE_LENGTH}",
            expected=f"1..{MAX_CABUNDLE_LENGTH}",
            found=len(value),
        )
    return tuple(
        _sized_bytes(cert, f"cabundle[{i}]", 1, MAX_CERTIFICATE_SIZE)
        for i, cert in enumerate(value)
    )
