"""Is an attestation document bound to the TLS certificate a server presented?

Three bindings, chosen by one option (``binding=``, CLI ``--binding``):

* ``"public-key"`` (this toolkit, DESIGN §3): the document's ``public_key`` is the DER
  SubjectPublicKeyInfo of the presented certificate.
* ``"nitriding"`` (brave/nitriding-daemon): ``user_data`` starts with a SHA-256 multihash
  (``0x12 0x20`` then 32 bytes) of the presented certificate (its DER, the "fingerprint";
  the SHA-256 of its SPKI is accepted too). An optional second multihash (nitriding's
  application key hash) may follow: 34 or 68 bytes in all.
* ``"evervault"`` (evervault enclaves): ``user_data`` is the DER SubjectPublicKeyInfo of the
  presented certificate.

A document that is not bound raises ``PublicKeyMismatchError`` (``public-key-mismatch``).
Authenticity, PCRs, nonce and freshness are the verifier's (``attestation.verify``).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .document import AttestationDocument
from .errors import MalformedError, PublicKeyMismatchError

__all__ = [
    "ATTESTATION_PATH",
    "BINDINGS",
    "MULTIHASH_SHA256",
    "Binding",
    "check_binding",
    "nitriding_user_data",
    "parse_nitriding_user_data",
    "spki_of",
]

ATTESTATION_PATH = "/.well-known/nitro-attestation"
"""The toolkit's route on the TLS listener: ``GET ATTESTATION_PATH?nonce=HEX`` -> raw CBOR."""

Binding = Literal["public-key", "nitriding", "evervault"]
BINDINGS: tuple[Binding, ...] = ("public-key", "nitriding", "evervault")
MULTIHASH_SHA256 = b"\x12\x20"
"""Multihash prefix of a SHA-256 digest: code 0x12 (sha2-256), length 0x20."""
_MULTIHASH_LEN = len(MULTIHASH_SHA256) + 32


def spki_of(cert_der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a DER certificate (MalformedError if it is not one)."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        return cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, TypeError) as exc:
        raise MalformedError(f"the presented certificate does not parse: {exc}") from None


def nitriding_user_data(cert_der: bytes, app_key_hash: bytes | None = None) -> bytes:
    """``user_data`` in nitriding's layout: multihash(SHA-256(cert DER)) [‖ multihash(app)]."""
    out = MULTIHASH_SHA256 + hashlib.sha256(cert_der).digest()
    if app_key_hash is not None:
        if len(app_key_hash) != 32:
            raise ValueError("app_key_hash must be 32 bytes (SHA-256)")
        out += MULTIHASH_SHA256 + app_key_hash
    return out


def parse_nitriding_user_data(user_data: bytes | None) -> tuple[bytes, bytes | None]:
    """(TLS hash, app key hash or None) from nitriding-style ``user_data``.

    Raises PublicKeyMismatchError when the layout is not 34 or 68 bytes of SHA-256 multihashes.
    """
    data = user_data or b""
    if len(data) not in (_MULTIHASH_LEN, 2 * _MULTIHASH_LEN) or any(
        data[i : i + 2] != MULTIHASH_SHA256 for i in range(0, len(data), _MULTIHASH_LEN)
    ):
        raise PublicKeyMismatchError(
            "user_data is not nitriding's SHA-256 multihash of the TLS certificate",
            expected="0x1220 + 32 bytes [+ 0x1220 + 32 bytes]",
            found=data[:80],
        )
    app = data[_MULTIHASH_LEN + 2 :] if len(data) > _MULTIHASH_LEN else None
    return data[2:_MULTIHASH_LEN], app


def check_binding(
    doc: AttestationDocument, cert_der: bytes, binding: Binding = "public-key"
) -> None:
    """Raise PublicKeyMismatchError unless ``doc`` is bound to the certificate ``cert_der``."""
    spki = spki_of(cert_der)
    if binding == "public-key":
        if doc.public_key is None or not hmac.compare_digest(doc.public_key, spki):
            raise PublicKeyMismatchError(
                "the document's public_key is not the presented certificate's key",
                expected=spki,
                found=doc.public_key,
            )
    elif binding == "evervault":
        if doc.user_data is None or not hmac.compare_digest(doc.user_data, spki):
            raise PublicKeyMismatchError(
                "the document's user_data is not the presented certificate's key",
                expected=spki,
                found=doc.user_data,
            )
    elif binding == "nitriding":
        tls_hash, _ = parse_nitriding_user_data(doc.user_data)
        accepted = (hashlib.sha256(cert_der).digest(), hashlib.sha256(spki).digest())
        if not any(hmac.compare_digest(tls_hash, h) for h in accepted):
            raise PublicKeyMismatchError(
                "the document's user_data hashes another TLS certificate",
                expected=accepted[0],
                found=tls_hash,
            )
    else:
        raise ValueError(f"unknown binding {binding!r}; one of {', '.join(BINDINGS)}")
