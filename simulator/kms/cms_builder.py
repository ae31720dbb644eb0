"""Build ``CiphertextForRecipient`` as KMS builds it (nitro-spec §3.2).

Shape, byte for byte like the real samples: BER ``ContentInfo`` with indefinite lengths around
``EnvelopedData`` v2; one definite-length ``KeyTransRecipientInfo`` v2 whose rid is
``[0] SubjectKeyIdentifier`` = SHA-256 of the recipient's SubjectPublicKeyInfo DER;
RSAES-OAEP (SHA-256, MGF1-SHA-256, default empty label) wrapping a fresh AES-256 key;
AES-256-CBC with PKCS#7 padding; the ciphertext as a constructed, indefinite ``[0]`` of
OCTET STRING chunks. asn1crypto encodes every definite part; the indefinite wrappers are
assembled here.
"""

from __future__ import annotations

import hashlib
import os

from asn1crypto import algos, cms, core
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["CONTENT_CHUNK_BYTES", "assemble_enveloped_data", "build_ciphertext_for_recipient"]

CONTENT_CHUNK_BYTES = 1000
"""Size of each OCTET STRING chunk of the encrypted content (BouncyCastle's BER default)."""

_EOC = b"\x00\x00"
_OID_ENVELOPED_DATA = core.ObjectIdentifier("1.2.840.113549.1.7.3").dump()
_OID_DATA = core.ObjectIdentifier("1.2.840.113549.1.7.1").dump()


def _indefinite(identifier: int, *parts: bytes) -> bytes:
    return bytes([identifier, 0x80]) + b"".join(parts) + _EOC


def _sha256_algorithm() -> algos.DigestAlgorithm:
    # KMS writes the NULL parameters explicitly (05 00).
    return algos.DigestAlgorithm({"algorithm": "sha256", "parameters": core.Null()})


def _oaep_algorithm() -> cms.KeyEncryptionAlgorithm:
    return cms.KeyEncryptionAlgorithm(
        {
            "algorithm": "rsaes_oaep",
            "parameters": algos.RSAESOAEPParams(
                {
                    "hash_algorithm": _sha256_algorithm(),
                    "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": _sha256_algorithm()},
                }
            ),
        }
    )


_OAEP_DER = _oaep_algorithm().dump()  # constant; re-encoding it per call is slow in asn1crypto


def assemble_enveloped_data(
    *, subject_key_identifier: bytes, encrypted_key: bytes, iv: bytes, ciphertext: bytes
) -> bytes:
    """Encode already-encrypted parts into the KMS BER layout (deterministic)."""
    ktri = cms.KeyTransRecipientInfo(
        {
            "version": "v2",
            "rid": cms.RecipientIdentifier(
                name="subject_key_identifier", value=subject_key_identifier
            ),
            "key_encryption_algorithm": cms.KeyEncryptionAlgorithm.load(_OAEP_DER),
            "encrypted_key": encrypted_key,
        }
    )
    recipient_infos = cms.RecipientInfos([cms.RecipientInfo(name="ktri", value=ktri)]).dump()
    content_algorithm = cms.EncryptionAlgorithm(
        {"algorithm": "aes256_cbc", "parameters": core.OctetString(iv)}
    ).dump()
    chunks = b"".join(
        core.OctetString(ciphertext[i : i + CONTENT_CHUNK_BYTES]).dump()
        for i in range(0, len(ciphertext), CONTENT_CHUNK_BYTES)
    )
    encrypted_content_info = _indefinite(
        0x30, _OID_DATA, content_algorithm, _indefinite(0xA0, chunks)
    )
    enveloped = _indefinite(0x30, core.Integer(2).dump(), recipient_infos, encrypted_content_info)
    return _indefinite(0x30, _OID_ENVELOPED_DATA, _indefinite(0xA0, enveloped))


def build_ciphertext_for_recipient(plaintext: bytes, recipient: rsa.RSAPublicKey) -> bytes:
    """Encrypt ``plaintext`` to ``recipient`` (fresh AES-256 key and IV) as KMS does."""
    spki = recipient.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    content_key = os.urandom(32)
    iv = os.urandom(16)
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    encrypted_key = recipient.encrypt(
        content_key,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    return assemble_enveloped_data(
        subject_key_identifier=hashlib.sha256(spki).digest(),
        encrypted_key=encrypted_key,
        iv=iv,
        ciphertext=ciphertext,
    )
