"""COSE_Sign1 with ES384, as the Nitro NSM uses it (nitro-spec §2.1).

The signature is checked over ``Sig_structure1 = ["Signature1", protected, h'', payload]`` built
from the ORIGINAL protected-header and payload bytes of the document, never from a re-encoding.
The signature on the wire is the raw 96-byte ``r || s``; ``cryptography`` wants DER.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

COSE_SIGN1_TAG = 18
HEADER_ALG = 1
ALG_ES384 = -35
PROTECTED_ES384 = b"\xa1\x01\x38\x22"  # {1: -35}, byte-exact as the NSM writes it
P384_COORDINATE_SIZE = 48
ES384_SIGNATURE_SIZE = 2 * P384_COORDINATE_SIZE  # raw r || s

_ECDSA_SHA384 = ec.ECDSA(hashes.SHA384())
_SIG_CONTEXT = b"\x6aSignature1"  # CBOR text string "Signature1"


def _bstr_head(length: int) -> bytes:
    """Minimal CBOR byte-string header for ``length`` bytes."""
    if length < 24:
        return bytes((0x40 | length,))
    if length < 0x100:
        return bytes((0x58, length))
    if length < 0x10000:
        return b"\x59" + length.to_bytes(2, "big")
    if length < 0x100000000:
        return b"\x5a" + length.to_bytes(4, "big")
    return b"\x5b" + length.to_bytes(8, "big")


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """The bytes that are signed: CBOR ``["Signature1", protected, h'', payload]``."""
    return b"".join(
        (
            b"\x84",
            _SIG_CONTEXT,
            _bstr_head(len(protected)),
            protected,
            b"\x40",
            _bstr_head(len(payload)),
            payload,
        )
    )


def raw_to_der(signature: bytes) -> bytes:
    """96-byte ``r || s`` to the DER ``ECDSA-Sig-Value`` cryptography expects."""
    half = len(signature) // 2
    r = int.from_bytes(signature[:half], "big")
    s = int.from_bytes(signature[half:], "big")
    return encode_dss_signature(r, s)


def der_to_raw(signature: bytes) -> bytes:
    """DER ``ECDSA-Sig-Value`` to the fixed-size 96-byte ``r || s`` COSE uses."""
    r, s = decode_dss_signature(signature)
    return r.to_bytes(P384_COORDINATE_SIZE, "big") + s.to_bytes(P384_COORDINATE_SIZE, "big")


def es384_verify(
    public_key: ec.EllipticCurvePublicKey, protected: bytes, payload: bytes, signature: bytes
) -> bool:
    """True when ``signature`` (raw r || s) signs the Sig_structure1 of these exact bytes.

    High-S signatures are accepted (real documents carry them; ECDSA verification does not
    care). ``r`` or ``s`` out of range simply fails verification.
    """
    if len(signature) != ES384_SIGNATURE_SIZE:
        return False
    try:
        public_key.verify(raw_to_der(signature), sig_structure(protected, payload), _ECDSA_SHA384)
    except (InvalidSignature, ValueError):
        return False
    return True


def es384_sign(private_key: ec.EllipticCurvePrivateKey, protected: bytes, payload: bytes) -> bytes:
    """Sign as the NSM does: raw 96-byte r || s over Sig_structure1."""
    der = private_key.sign(sig_structure(protected, payload), _ECDSA_SHA384)
    return der_to_raw(der)
