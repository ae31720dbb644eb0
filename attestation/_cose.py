"""COSE_Sign1 with ECDSA (RFC 9052 §4.2, RFC 9053 §2.1): the toolkit's one implementation.

It signs and checks both kinds of COSE_Sign1 the toolkit meets: attestation documents (ES384,
as the Nitro NSM writes them, nitro-spec §2.1; the hot path, :func:`es384_verify`) and the EIF
signature section (ES256/384/512 by the key's curve, :mod:`attestation.eif_signature`). The
signature is checked over ``Sig_structure1 = ["Signature1", protected, h'', payload]`` built
from the ORIGINAL protected-header and payload bytes, never from a re-encoding. The signature
on the wire is the raw fixed-size ``r || s``; ``cryptography`` wants DER.

Why not pycose (``bench/cose.py`` on the 24 real documents of ../shared/vectors,
docs/benchmarks.md §13): its ECDSA runs on python-ecdsa, pure Python, so checking one document
took 8,000-12,500 µs against 1,100-1,350 µs here (7-10x slower); this path is within noise of
one bare ``cryptography`` verification, the floor. python-ecdsa is not hardened against side
channels either, which rules it out for signing, and pycose would add five packages (pycose,
attrs, ecdsa, certvalidator, oscrypto) to the enclave image, which ships attestation/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

COSE_SIGN1_TAG = 18
COSE_SIGN1_TAG_BYTE = 0xD2  # the one-byte head of tag 18
HEADER_ALG = 1
ALG_ES256 = -7
ALG_ES384 = -35
ALG_ES512 = -36
PROTECTED_ES384 = b"\xa1\x01\x38\x22"  # {1: -35}, byte-exact as the NSM writes it
P384_COORDINATE_SIZE = 48
ES384_SIGNATURE_SIZE = 2 * P384_COORDINATE_SIZE  # raw r || s


@dataclass(frozen=True, slots=True)
class EcdsaAlgorithm:
    """One COSE ECDSA algorithm (RFC 9053 §2.1): its hash, curve and ``r``/``s`` size."""

    name: str
    ecdsa: ec.ECDSA  # cryptography's signature algorithm (ECDSA with this hash)
    curve: str  # cryptography's curve name
    coordinate_size: int

    @property
    def signature_size(self) -> int:
        return 2 * self.coordinate_size


ES384 = EcdsaAlgorithm("ES384", ec.ECDSA(hashes.SHA384()), "secp384r1", P384_COORDINATE_SIZE)
ECDSA_ALGORITHMS: dict[int, EcdsaAlgorithm] = {
    ALG_ES256: EcdsaAlgorithm("ES256", ec.ECDSA(hashes.SHA256()), "secp256r1", 32),
    ALG_ES384: ES384,
    ALG_ES512: EcdsaAlgorithm("ES512", ec.ECDSA(hashes.SHA512()), "secp521r1", 66),
}
ALG_FOR_CURVE = {a.curve: alg for alg, a in ECDSA_ALGORITHMS.items()}
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


def protected_header(alg: int) -> bytes:
    """The protected header ``{1: alg}`` (for ES384 exactly :data:`PROTECTED_ES384`)."""
    return cbor2.dumps({HEADER_ALG: alg})


def encode_sign1(protected: bytes, payload: bytes, signature: bytes) -> bytes:
    """Untagged COSE_Sign1 ``[protected, {}, payload, signature]``."""
    return cbor2.dumps([protected, {}, payload, signature])


def raw_to_der(signature: bytes) -> bytes:
    """Raw ``r || s`` (two equal halves) to the DER ``ECDSA-Sig-Value`` cryptography expects."""
    half = len(signature) // 2
    r = int.from_bytes(signature[:half], "big")
    s = int.from_bytes(signature[half:], "big")
    return encode_dss_signature(r, s)


def der_to_raw(signature: bytes, coordinate_size: int = P384_COORDINATE_SIZE) -> bytes:
    """DER ``ECDSA-Sig-Value`` to the fixed-size raw ``r || s`` COSE uses."""
    r, s = decode_dss_signature(signature)
    return r.to_bytes(coordinate_size, "big") + s.to_bytes(coordinate_size, "big")


def ecdsa_verify(
    public_key: ec.EllipticCurvePublicKey,
    alg: EcdsaAlgorithm,
    protected: bytes,
    payload: bytes,
    signature: bytes,
) -> bool:
    """True when ``signature`` (raw r || s of ``alg``'s size) signs the Sig_structure1 of
    these exact bytes. High-S signatures are accepted (real documents carry them; ECDSA
    verification does not care); ``r`` or ``s`` out of range simply fails verification."""
    if len(signature) != alg.signature_size:
        return False
    try:
        public_key.verify(raw_to_der(signature), sig_structure(protected, payload), alg.ecdsa)
    except (InvalidSignature, ValueError):
        return False
    return True


def ecdsa_sign(
    sign_der: Callable[[bytes], bytes], alg: EcdsaAlgorithm, protected: bytes, payload: bytes
) -> bytes:
    """Raw ``r || s`` over Sig_structure1; ``sign_der`` signs a message with the key of
    ``alg``'s curve and hash and returns DER (a local key, or a remote one such as AWS KMS)."""
    return der_to_raw(sign_der(sig_structure(protected, payload)), alg.coordinate_size)


def es384_verify(
    public_key: ec.EllipticCurvePublicKey, protected: bytes, payload: bytes, signature: bytes
) -> bool:
    """:func:`ecdsa_verify` with ES384: the attestation hot path."""
    return ecdsa_verify(public_key, ES384, protected, payload, signature)


def es384_sign(private_key: ec.EllipticCurvePrivateKey, protected: bytes, payload: bytes) -> bytes:
    """Sign as the NSM does: raw 96-byte r || s over Sig_structure1."""
    return ecdsa_sign(
        lambda message: private_key.sign(message, ES384.ecdsa), ES384, protected, payload
    )
