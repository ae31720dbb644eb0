"""The EIF signature section (nitro-spec §5.5): written and checked in this one place.

``nitro-cli sign-eif`` writes CBOR ``[{"signing_certificate": PEM, "signature": COSE_Sign1}]``,
both values as CBOR arrays of uint8 (serde's ``Vec<u8>``). The COSE_Sign1 is untagged, with
protected ``{1: alg}`` (ES384 for nitro-cli's P-384 keys; ES256/ES512 for P-256/P-521),
unprotected ``{}``, over ``{"register_index": 0, "register_value": PCR0}``.

:func:`read_section` checks a section (``attestation.eif.read_eif``); :func:`build_section`
writes one (``attestation.eif.sign_pcr0`` and ``parent.eif.signing``). Every CBOR byte string
read here goes through the strict decoder under :data:`SECTION_CBOR` or :data:`COSE_CBOR`
(no tags but COSE_Sign1's own, no duplicate keys, bounded size, depth and items); the
signature itself is made and checked by :mod:`attestation._cose`, the same code that checks
attestation documents. A malformed section is an :class:`~attestation.errors.EifError`
(``bad-eif``), as nitro-cli fails on it; a well-formed one whose signature does not hold
reads with ``signature_check`` false and the reason in ``problem``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import cbor2

from ._cbor import KEY_INT, KEY_TEXT, CborLimits, decode_strict
from ._cose import (
    ALG_ES384,
    COSE_SIGN1_TAG_BYTE,
    ECDSA_ALGORITHMS,
    HEADER_ALG,
    ecdsa_sign,
    ecdsa_verify,
    encode_sign1,
    protected_header,
)
from .eif import MAX_SIGNATURE_SECTION_SIZE as MAX_SECTION_SIZE
from .errors import EifError, MalformedError

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "COSE_CBOR",
    "MAX_SECTION_SIZE",
    "PCR0_REGISTER",
    "SECTION_CBOR",
    "SigningInfo",
    "build_section",
    "check_pcr0_signature",
    "pcr0_payload",
    "read_section",
    "section_cbor",
]

PCR0_REGISTER = 0


def section_cbor(max_bytes: int) -> CborLimits:
    """Limits of a signature section of at most ``max_bytes``: an array of maps with text keys
    whose values are uint8 arrays (depth 3), and at most one item per byte."""
    return CborLimits(
        max_bytes=max_bytes, max_depth=3, max_items=max_bytes, key_types=frozenset({KEY_TEXT})
    )


SECTION_CBOR = section_cbor(MAX_SECTION_SIZE)
COSE_CBOR = CborLimits(
    max_bytes=MAX_SECTION_SIZE,
    max_depth=4,
    max_items=1024,
    key_types=frozenset({KEY_INT, KEY_TEXT}),
)
"""Limits of the COSE_Sign1, its protected header and its payload, each decoded on its own
(COSE labels are integers or text; the payload is a 2-key map holding 48 uint8 items)."""


@dataclass(frozen=True)
class SigningInfo:
    """The signature section: signing certificate (PCR8) and whether its signature checks out."""

    certificate_der: bytes
    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime
    signature_check: bool  # COSE_Sign1 verifies with the certificate AND its payload is PCR0
    problem: str | None = None  # why signature_check is False


def pcr0_payload(pcr0: bytes) -> bytes:
    """The signed payload: ``{"register_index": 0, "register_value": [uint8, ...]}``."""
    return cbor2.dumps({"register_index": PCR0_REGISTER, "register_value": list(pcr0)})


def build_section(
    pcr0: bytes, certificate_pem: bytes, sign_der: Callable[[bytes], bytes], alg: int = ALG_ES384
) -> bytes:
    """The section nitro-cli writes for ``pcr0``; ``sign_der`` signs a message with the
    certificate's key (``alg``'s curve and hash) and returns DER, locally or remotely."""
    algorithm = ECDSA_ALGORITHMS[alg]
    protected, payload = protected_header(alg), pcr0_payload(pcr0)
    cose = encode_sign1(protected, payload, ecdsa_sign(sign_der, algorithm, protected, payload))
    return cbor2.dumps([{"signing_certificate": list(certificate_pem), "signature": list(cose)}])


def read_section(raw: bytes, pcr0: bytes, limits: CborLimits = SECTION_CBOR) -> SigningInfo:
    """Check a signature section against the image's ``pcr0``; EifError when malformed."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    entries = _decode(raw, "EIF signature section", limits)
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise EifError("EIF signature section is not a non-empty array of maps")
    first = entries[0]
    if "signing_certificate" not in first or "signature" not in first:
        raise EifError("EIF signature entry lacks signing_certificate or signature")
    pem = _byte_list(first["signing_certificate"], "signing_certificate")
    cose = _byte_list(first["signature"], "signature")
    try:
        cert = x509.load_pem_x509_certificate(pem)
        der = cert.public_bytes(Encoding.DER)
        subject, issuer = cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    except Exception as exc:  # cryptography raises several types for a hostile certificate
        raise EifError(f"EIF signing certificate is not a PEM X.509 certificate: {exc}") from exc
    problem = check_pcr0_signature(cose, cert, pcr0)
    return SigningInfo(der, subject, issuer, not_before, not_after, problem is None, problem)


def check_pcr0_signature(cose: bytes, cert: x509.Certificate, pcr0: bytes) -> str | None:
    """None when the COSE_Sign1 verifies with ``cert`` and signs ``{register_index: 0,
    register_value: pcr0}``; else why not. EifError when the COSE_Sign1 is malformed."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec

    protected, payload, signature, alg, record = _sign1_parts(cose)
    algorithm = ECDSA_ALGORITHMS.get(alg)
    if algorithm is None:
        return f"unsupported COSE algorithm {alg!r}"
    try:
        key = cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):  # the key is parsed lazily
        return "signing certificate carries an unreadable public key"
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return "signing key is not an EC key"
    if len(signature) != algorithm.signature_size:
        return f"signature is {len(signature)} bytes, expected {algorithm.signature_size}"
    if not ecdsa_verify(key, algorithm, protected, payload, signature):
        return "COSE signature does not verify with the signing certificate"
    if not isinstance(record, dict) or record.get("register_index") != PCR0_REGISTER:
        return "signed payload is not a PCR0 record"
    try:
        signed_pcr0 = _byte_list(record.get("register_value"), "register_value")
    except EifError as exc:
        return exc.message
    if signed_pcr0 != pcr0:
        return "signed PCR0 differs from the image's PCR0"
    return None


def _decode(data: bytes, what: str, limits: CborLimits) -> Any:
    try:
        return decode_strict(data, what, limits)
    except MalformedError as exc:
        raise EifError(exc.message) from None


def _sign1_parts(cose: bytes) -> tuple[bytes, bytes, bytes, int, Any]:
    """``(protected, payload, signature, alg, decoded payload)`` of a COSE_Sign1 (tagged or
    not), or EifError. Whether the signature is good is left to the caller."""
    what = "EIF signature COSE_Sign1"
    if cose[:1] == bytes((COSE_SIGN1_TAG_BYTE,)):  # tag 18; any other tag is refused
        cose = cose[1:]
    message = _decode(cose, what, COSE_CBOR)
    if not isinstance(message, list) or len(message) != 4:
        raise EifError(f"{what} is not an array of 4 items")
    protected, unprotected, payload, signature = message
    if not all(isinstance(v, bytes) for v in (protected, payload, signature)):
        raise EifError(f"{what}: protected header, payload and signature must be byte strings")
    if not isinstance(unprotected, Mapping):
        raise EifError(f"{what}: the unprotected header is not a map")
    header = _decode(protected, f"{what} protected header", COSE_CBOR) if protected else {}
    if not isinstance(header, dict):
        raise EifError(f"{what}: the protected header is not a map")
    alg = header.get(HEADER_ALG)
    if type(alg) is not int:  # a hostile header may hold anything, e.g. {1: [1]}
        raise EifError(f"{what}: algorithm (label 1) is not an integer: {alg!r:.40}")
    record = _decode(payload, f"{what} payload", COSE_CBOR)
    return protected, payload, signature, alg, record


def _byte_list(value: Any, what: str) -> bytes:
    """serde's Vec<u8> is a CBOR array of uint8; accept a byte string too."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, list) and all(type(v) is int and 0 <= v <= 255 for v in value):
        return bytes(value)
    raise EifError(f"EIF signature: {what} is not a byte array")
