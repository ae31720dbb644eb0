"""Check a signed EIF build statement (in-toto Statement v1 in a DSSE envelope).

``python -m parent eif build`` writes ``APP.eif.intoto.json`` next to the EIF: a DSSE envelope
(payloadType ``application/vnd.in-toto+json``) whose payload is a Statement with one subject,
the EIF (``sha384`` of the file, PCR0/1/2 and PCR8 when signed, as ``annotations``), and a
SLSA-provenance-shaped predicate (source repository and commit, base image, wheels, blobs,
builder version). The signature is ECDSA P-384 / SHA-384 (DER) over DSSE's PAE; each
signature may carry the signer's certificate as ``cert`` (PEM).

:func:`verify_statement` checks, in this order:

1. the envelope's shape and size (``MAX_ENVELOPE_BYTES``);
2. the signature, with ``trusted_key`` when given; otherwise with the certificate the envelope
   carries, accepted only if its PCR8 equals the subject's PCR8 (the EIF was signed with it);
3. the statement's type and its subject;
4. against an EIF: the file's SHA-384 and its PCR0/1/2/8; against an attestation document
   (verified first, chain to the pinned root): its PCR0/1/2 (and PCR8 when the subject has one).

A service can then pin "built from commit X, signed by key K" instead of a hex PCR0.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import AttestationError, PcrMismatchError

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "ProvenanceError",
    "VerifiedStatement",
    "pae",
    "verify_statement",
]

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
MAX_ENVELOPE_BYTES = 1 << 20
"""Largest envelope read: a statement lists a few hundred digests at most."""
SUBJECT_PCRS = ("PCR0", "PCR1", "PCR2", "PCR8")


class ProvenanceError(AttestationError):
    """The statement is malformed, its signature does not verify, or its key is not trusted."""

    code = "bad-provenance"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding: what the signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


@dataclass(frozen=True)
class VerifiedStatement:
    """A statement whose signature and subject checked out."""

    statement: Mapping[str, Any]
    eif_sha384: str
    pcrs: Mapping[int, bytes]
    signer_keyid: str
    trusted_by: Literal["key", "pcr8"]

    @property
    def predicate(self) -> Mapping[str, Any]:
        value = self.statement.get("predicate")
        return value if isinstance(value, Mapping) else {}

    def source(self) -> Mapping[str, Any]:
        """``{"repository", "commit"}`` as the builder recorded them."""
        build_def = self.predicate.get("buildDefinition", {})
        params = build_def.get("externalParameters", {}) if isinstance(build_def, Mapping) else {}
        source = params.get("source", {}) if isinstance(params, Mapping) else {}
        return source if isinstance(source, Mapping) else {}


def key_id(public_key: Any) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, hex: the ``keyid`` in envelopes."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ProvenanceError(f"envelope {what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            raise ProvenanceError(f"envelope {what} is not base64") from None


def _load_envelope(data: bytes) -> tuple[bytes, list[Mapping[str, Any]]]:
    if len(data) > MAX_ENVELOPE_BYTES:
        raise ProvenanceError(
            f"envelope larger than {MAX_ENVELOPE_BYTES} bytes",
            expected=MAX_ENVELOPE_BYTES,
            found=len(data),
        )
    try:
        envelope = json.loads(data)
    except (ValueError, RecursionError):
        raise ProvenanceError("envelope is not JSON") from None
    if not isinstance(envelope, dict):
        raise ProvenanceError("envelope is not a JSON object")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise ProvenanceError(
            "envelope payloadType is not in-toto",
            expected=PAYLOAD_TYPE,
            found=str(envelope.get("payloadType"))[:80],
        )
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise ProvenanceError("envelope has no signatures")
    if not all(isinstance(s, dict) for s in signatures):
        raise ProvenanceError("envelope signatures must be objects")
    return _b64(envelope.get("payload"), "payload"), signatures


def _subject(statement: Any) -> tuple[str, dict[int, bytes]]:
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise ProvenanceError("payload is not an in-toto Statement v1")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise ProvenanceError("statement must have exactly one subject (the EIF)")
    subject = subjects[0]
    digest = subject.get("digest")
    file_hash = digest.get("sha384") if isinstance(digest, dict) else None
    if not isinstance(file_hash, str) or len(file_hash) != 96:
        raise ProvenanceError("subject has no sha384 digest")
    notes = subject.get("annotations")
    if not isinstance(notes, dict):
        raise ProvenanceError("subject has no PCR annotations")
    pcrs: dict[int, bytes] = {}
    for name in SUBJECT_PCRS:
        if name not in notes:
            continue
        try:
            value = bytes.fromhex(notes[name]) if isinstance(notes[name], str) else b""
        except ValueError:
            value = b""
        if len(value) != 48:
            raise ProvenanceError(f"subject {name} is not 96 hex digits")
        pcrs[int(name[3:])] = value
    if not {0, 1, 2} <= set(pcrs):
        raise ProvenanceError("subject lacks PCR0, PCR1 or PCR2")
    return file_hash.lower(), pcrs


def _verify_signature(
    payload: bytes, signatures: Sequence[Mapping[str, Any]], trusted_key: Any, pcr8: bytes | None
) -> tuple[str, Literal["key", "pcr8"]]:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from .pcr import pcr8_from_certificate

    message = pae(PAYLOAD_TYPE, payload)
    problems: list[str] = []
    for entry in signatures:
        sig = _b64(entry.get("sig"), "sig")
        trusted_by: Literal["key", "pcr8"]
        if trusted_key is not None:
            key, trusted_by = trusted_key, "key"
        else:
            pem = entry.get("cert")
            if not isinstance(pem, str):
                problems.append("no trusted key given and the signature carries no certificate")
                continue
            try:
                cert = x509.load_pem_x509_certificate(pem.encode())
                key = cert.public_key()
            except ValueError:
                problems.append("the signature's certificate is not PEM X.509")
                continue
            der = cert.public_bytes(serialization.Encoding.DER)
            if pcr8 is None or pcr8_from_certificate(der) != pcr8:
                problems.append(
                    "the signature's certificate is not the EIF's signing certificate "
                    "(PCR8 differs or the EIF is unsigned): pass the trusted key"
                )
                continue
            trusted_by = "pcr8"
        if not isinstance(key, ec.EllipticCurvePublicKey):
            problems.append("the signing key is not an EC key")
            continue
        try:
            key.verify(sig, message, ec.ECDSA(hashes.SHA384()))
        except InvalidSignature:
            problems.append("signature does not verify")
            continue
        return key_id(key), trusted_by
    raise ProvenanceError("statement signature rejected: " + "; ".join(problems))


def load_trusted_key(pem: bytes) -> Any:
    """A public key from PEM: a SubjectPublicKeyInfo or a certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        if b"CERTIFICATE" in pem:
            return x509.load_pem_x509_certificate(pem).public_key()
        return serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise ProvenanceError(f"trusted key is not a PEM public key or certificate: {exc}") from exc


def _compare(expected: Mapping[int, bytes], found: Mapping[int, bytes], what: str) -> None:
    for index in sorted(expected):
        if found.get(index) != expected[index]:
            got = found.get(index)
            raise PcrMismatchError(
                f"PCR{index} of the {what} differs from the statement's subject",
                expected=expected[index],
                found=got if got is not None else "(absent)",
            )


def verify_statement(
    envelope: bytes,
    *,
    eif: str | os.PathLike[str] | None = None,
    document: bytes | None = None,
    trusted_key: Any = None,
    roots: Sequence[x509.Certificate] | None = None,
    at: datetime | Literal["document"] | None = None,
) -> VerifiedStatement:
    """Verify the envelope and match its subject with ``eif`` or ``document`` (one of them).

    Raises :class:`ProvenanceError` (``bad-provenance``), :class:`PcrMismatchError`, the
    EIF reader's ``bad-eif`` or the verifier's errors for the document.
    """
    if (eif is None) == (document is None):
        raise ValueError("give exactly one of eif= or document=")
    payload, signatures = _load_envelope(envelope)
    try:
        statement = json.loads(payload)
    except (ValueError, RecursionError):
        raise ProvenanceError("statement payload is not JSON") from None
    file_hash, subject_pcrs = _subject(statement)
    if eif is not None:
        from .eif import read_eif

        image = read_eif(eif)
        found = dict(image.pcrs)
        signer, trusted_by = _verify_signature(
            payload, signatures, trusted_key, found.get(8) if subject_pcrs.get(8) else None
        )
        actual = _file_sha384(eif)
        if actual != file_hash:
            raise ProvenanceError(
                "the EIF file is not the statement's subject", expected=file_hash, found=actual
            )
        _compare(subject_pcrs, found, "EIF")
        if 8 in found and 8 not in subject_pcrs:
            raise PcrMismatchError("the EIF is signed but the statement has no PCR8")
    else:
        assert document is not None
        from .verifier import verify

        doc = verify(document, None, roots=roots, at=at)
        doc_pcr8 = doc.pcrs.get(8)
        signer, trusted_by = _verify_signature(
            payload, signatures, trusted_key, doc_pcr8 if subject_pcrs.get(8) else None
        )
        _compare(subject_pcrs, doc.pcrs, "attestation document")
    return VerifiedStatement(statement, file_hash, subject_pcrs, signer, trusted_by)


def _file_sha384(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha384()
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()
