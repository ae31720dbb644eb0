"""Decode KMS ``CiphertextForRecipient``: a CMS EnvelopedData for the enclave's RSA key.

KMS sends a BER ``ContentInfo(EnvelopedData)`` with indefinite lengths (nitro-spec §3.2): one
``KeyTransRecipientInfo`` (RSAES-OAEP, SHA-256, MGF1-SHA-256, empty label) wrapping a 32-byte
AES key, and the content under AES-256-CBC with PKCS#7 padding, the ciphertext either chunked
(constructed OCTET STRING) or primitive. asn1crypto does the BER parsing; this module checks
every algorithm against that one profile and refuses anything else with a typed error.

Steps of :func:`decrypt_enveloped_data`:
1. bound the input size;
2. parse ContentInfo → EnvelopedData (strict: no trailing bytes);
3. check versions, exactly one KTRI, the OAEP parameters, AES-256-CBC and its 16-byte IV;
4. unwrap the content key with the private key (must be 32 bytes);
5. AES-256-CBC decrypt and strip PKCS#7 padding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from attestation.errors import CodedError, Kind

__all__ = [
    "AES_KEY_BYTES",
    "CMS_ERROR_CODES",
    "MAX_CIPHERTEXT_FOR_RECIPIENT",
    "CmsDecryptError",
    "CmsError",
    "CmsMalformedError",
    "CmsTooLargeError",
    "CmsUnsupportedError",
    "EnvelopedParts",
    "decrypt_enveloped_data",
    "parse_enveloped_data",
    "subject_key_identifier",
]

MAX_CIPHERTEXT_FOR_RECIPIENT = 6144
"""KMS's documented upper bound for ``CiphertextForRecipient`` (bytes)."""

AES_KEY_BYTES = 32
"""AES-256 content-encryption key length."""

AES_BLOCK_BYTES = 16
"""AES block size, also the CBC IV length."""

MIN_RSA_BITS = 2048
"""Smallest recipient RSA key accepted (KMS examples use RSA-2048)."""

MAX_RSA_BITS = 4096
"""Largest recipient RSA key accepted."""

_OID_ENVELOPED_DATA = "enveloped_data"
_OID_DATA = "data"
_ACCEPTED_ENVELOPED_VERSIONS = frozenset({"v0", "v2"})  # v2: KMS; v0: openssl, issuerAndSerial


class CmsError(CodedError):
    """Base of every error of this module; ``code`` is stable and scriptable."""

    code = "cms-error"
    kind = Kind.BAD_REQUEST

    def __init__(self, message: str, *, expected: Any = None, found: Any = None) -> None:
        super().__init__(type(self).code, message, expected=expected, found=found)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class CmsMalformedError(CmsError):
    """The bytes are not a well-formed ContentInfo(EnvelopedData) of the expected shape."""

    code = "cms-malformed"


class CmsTooLargeError(CmsError):
    """The input exceeds the size limit."""

    code = "cms-too-large"


class CmsUnsupportedError(CmsError):
    """A content type, version, recipient kind or algorithm outside the KMS profile."""

    code = "cms-unsupported"


class CmsDecryptError(CmsError):
    """The content key or the content did not decrypt with the given private key."""

    code = "cms-decrypt-failed"


CMS_ERROR_CODES: tuple[str, ...] = tuple(
    cls.code
    for cls in (CmsError, CmsMalformedError, CmsTooLargeError, CmsUnsupportedError, CmsDecryptError)
)


@dataclass(frozen=True)
class EnvelopedParts:
    """The fields of a KMS-profile EnvelopedData, after the algorithm checks."""

    subject_key_identifier: bytes | None  # rid [0] SKI; None when issuerAndSerialNumber
    encrypted_key: bytes
    iv: bytes
    ciphertext: bytes


def subject_key_identifier(public_key: rsa.RSAPublicKey) -> bytes:
    """The SKI KMS puts in the recipient identifier: SHA-256 of the SubjectPublicKeyInfo DER."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


# asn1crypto parses lazily; any of these can surface from a field access on hostile bytes.
_PARSE_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
    UnicodeDecodeError,
)


def parse_enveloped_data(
    ber: bytes, *, max_size: int = MAX_CIPHERTEXT_FOR_RECIPIENT
) -> EnvelopedParts:
    """Parse and check a KMS ``CiphertextForRecipient`` without decrypting it.

    Raises :class:`CmsTooLargeError`, :class:`CmsMalformedError` or :class:`CmsUnsupportedError`.
    """
    if not isinstance(ber, bytes | bytearray | memoryview):
        raise CmsMalformedError("input must be bytes", found=type(ber).__name__)
    data = bytes(ber)
    if len(data) > max_size:
        raise CmsTooLargeError(
            f"CiphertextForRecipient is {len(data)} bytes, limit {max_size}",
            expected=max_size,
            found=len(data),
        )
    if not data:
        raise CmsMalformedError("empty input")
    try:
        return _parse(data)
    except CmsError:
        raise
    except _PARSE_ERRORS as exc:
        raise CmsMalformedError(f"not a valid BER ContentInfo: {type(exc).__name__}") from None


def _parse(data: bytes) -> EnvelopedParts:
    info = cms.ContentInfo.load(data, strict=True)
    content_type = info["content_type"].native
    if content_type != _OID_ENVELOPED_DATA:
        raise CmsUnsupportedError(
            "ContentInfo does not hold EnvelopedData",
            expected="1.2.840.113549.1.7.3",
            found=info["content_type"].dotted,
        )
    enveloped = info["content"]
    if not isinstance(enveloped, cms.EnvelopedData):
        raise CmsMalformedError("ContentInfo content is not EnvelopedData")
    version = enveloped["version"].native
    if version not in _ACCEPTED_ENVELOPED_VERSIONS:
        raise CmsUnsupportedError("unsupported EnvelopedData version", expected="v2", found=version)

    recipients = enveloped["recipient_infos"]
    if len(recipients) != 1:
        raise CmsUnsupportedError(
            "expected exactly one RecipientInfo", expected=1, found=len(recipients)
        )
    recipient = recipients[0]
    if recipient.name != "ktri":
        raise CmsUnsupportedError(
            "RecipientInfo is not KeyTransRecipientInfo", expected="ktri", found=recipient.name
        )
    ktri = recipient.chosen
    ski = _recipient_identifier(ktri)
    _check_oaep(ktri["key_encryption_algorithm"])
    encrypted_key = ktri["encrypted_key"].native
    if not isinstance(encrypted_key, bytes) or not encrypted_key:
        raise CmsMalformedError("encryptedKey is empty")

    eci = enveloped["encrypted_content_info"]
    if eci["content_type"].native != _OID_DATA:
        raise CmsUnsupportedError(
            "encrypted content type is not id-data",
            expected="1.2.840.113549.1.7.1",
            found=eci["content_type"].dotted,
        )
    iv = _check_aes256_cbc(eci["content_encryption_algorithm"])
    ciphertext = eci["encrypted_content"].native
    if not isinstance(ciphertext, bytes) or not ciphertext:
        raise CmsMalformedError("encryptedContent is absent or empty")
    if len(ciphertext) % AES_BLOCK_BYTES:
        raise CmsMalformedError(
            "encryptedContent is not a whole number of AES blocks", found=len(ciphertext)
        )
    return EnvelopedParts(ski, encrypted_key, iv, ciphertext)


def _recipient_identifier(ktri: cms.KeyTransRecipientInfo) -> bytes | None:
    version = ktri["version"].native
    rid = ktri["rid"]
    if rid.name == "subject_key_identifier":
        if version != "v2":
            raise CmsMalformedError("KTRI with subjectKeyIdentifier must be v2", found=version)
        ski = rid.chosen.native
        if not isinstance(ski, bytes):
            raise CmsMalformedError("subjectKeyIdentifier is not an OCTET STRING")
        return ski
    if rid.name == "issuer_and_serial_number":
        if version != "v0":
            raise CmsMalformedError("KTRI with issuerAndSerialNumber must be v0", found=version)
        return None
    raise CmsUnsupportedError("unknown recipient identifier", found=rid.name)


def _check_oaep(algorithm: Any) -> None:
    name = algorithm["algorithm"].native
    if name != "rsaes_oaep":
        raise CmsUnsupportedError(
            "key encryption is not RSAES-OAEP",
            expected="1.2.840.113549.1.1.7",
            found=algorithm["algorithm"].dotted,
        )
    params = algorithm["parameters"]
    hash_name = params["hash_algorithm"]["algorithm"].native
    mgf = params["mask_gen_algorithm"]
    mgf_name = mgf["algorithm"].native
    mgf_hash = mgf["parameters"]["algorithm"].native if mgf_name == "mgf1" else None
    p_source = params["p_source_algorithm"]
    label = p_source["parameters"].native if p_source["algorithm"].native == "p_specified" else None
    found = {"hash": hash_name, "mgf": mgf_name, "mgf_hash": mgf_hash, "label": label}
    expected = {"hash": "sha256", "mgf": "mgf1", "mgf_hash": "sha256", "label": b""}
    if found != expected:
        raise CmsUnsupportedError(
            "RSAES-OAEP parameters are not SHA-256 / MGF1-SHA-256 / empty label",
            expected={k: _printable(v) for k, v in expected.items()},
            found={k: _printable(v) for k, v in found.items()},
        )


def _printable(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def _check_aes256_cbc(algorithm: Any) -> bytes:
    name = algorithm["algorithm"].native
    if name != "aes256_cbc":
        raise CmsUnsupportedError(
            "content encryption is not AES-256-CBC",
            expected="2.16.840.1.101.3.4.1.42",
            found=algorithm["algorithm"].dotted,
        )
    iv = algorithm["parameters"].native
    if not isinstance(iv, bytes) or len(iv) != AES_BLOCK_BYTES:
        raise CmsMalformedError(
            "AES-256-CBC IV must be 16 bytes",
            expected=AES_BLOCK_BYTES,
            found=len(iv) if isinstance(iv, bytes) else None,
        )
    return iv


def decrypt_enveloped_data(
    ber: bytes,
    private_key: rsa.RSAPrivateKey,
    *,
    max_size: int = MAX_CIPHERTEXT_FOR_RECIPIENT,
) -> bytes:
    """Decrypt a KMS ``CiphertextForRecipient`` with the enclave's RSA private key.

    Raises a :class:`CmsError` subclass for every failure; the message never carries key or
    plaintext bytes.
    """
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise CmsUnsupportedError(
            "recipient key must be an RSA private key",
            expected="RSAPrivateKey",
            found=type(private_key).__name__,
        )
    bits = private_key.key_size
    if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
        raise CmsUnsupportedError(
            "recipient RSA key size out of range",
            expected=f"{MIN_RSA_BITS}..{MAX_RSA_BITS}",
            found=bits,
        )
    parts = parse_enveloped_data(ber, max_size=max_size)
    modulus_bytes = (bits + 7) // 8
    if len(parts.encrypted_key) != modulus_bytes:
        raise CmsDecryptError(
            "encryptedKey length does not match the RSA key size" + _ski_hint(parts, private_key),
            expected=modulus_bytes,
            found=len(parts.encrypted_key),
        )
    try:
        content_key = private_key.decrypt(
            parts.encrypted_key,
            padding.OAEP(
                mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
            ),
        )
    except ValueError:
        raise CmsDecryptError(
            "RSA-OAEP unwrap of the content key failed" + _ski_hint(parts, private_key)
        ) from None
    if len(content_key) != AES_KEY_BYTES:
        raise CmsDecryptError(
            "unwrapped content key is not 32 bytes", expected=AES_KEY_BYTES, found=len(content_key)
        )
    decryptor = Cipher(algorithms.AES(content_key), modes.CBC(parts.iv)).decryptor()
    padded = decryptor.update(parts.ciphertext) + decryptor.finalize()
    unpadder = sym_padding.PKCS7(AES_BLOCK_BYTES * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise CmsDecryptError("content padding is invalid (wrong key or corrupted)") from None


def _ski_hint(parts: EnvelopedParts, private_key: rsa.RSAPrivateKey) -> str:
    if parts.subject_key_identifier is None:
        return ""
    if parts.subject_key_identifier == subject_key_identifier(private_key.public_key()):
        return " (recipient identifier matches this key)"
    return " (recipient identifier names a different key)"
