"""The simulator builds CiphertextForRecipient exactly as KMS does (byte layout of real vectors)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.kms.cms import decrypt_enveloped_data, parse_enveloped_data, subject_key_identifier
from simulator.kms.cms_builder import (
    CONTENT_CHUNK_BYTES,
    assemble_enveloped_data,
    build_ciphertext_for_recipient,
)

KMS_VECTORS = ["kms-cms-sdkgo-1.ber", "kms-cms-enclaver-1.ber", "kms-cms-awssdkc-1.ber"]


@pytest.fixture(scope="module")
def enclave_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.mark.vectors
@pytest.mark.parametrize("name", KMS_VECTORS)
def test_layout_reproduces_real_kms_bytes(vectors_dir, manifest, name):
    """Given the same encrypted parts, the builder emits the real KMS response byte for byte."""
    (entry,) = [v for v in manifest["kms_cms_vectors"] if v["file"] == name]
    built = assemble_enveloped_data(
        subject_key_identifier=bytes.fromhex(entry["recipient_subject_key_identifier_hex"]),
        encrypted_key=bytes.fromhex(entry["encrypted_key_hex"]),
        iv=bytes.fromhex(entry["iv_hex"]),
        ciphertext=bytes.fromhex(entry["encrypted_content_hex"]),
    )
    assert built == (vectors_dir / name).read_bytes()


def test_built_response_names_recipient_by_spki_sha256(enclave_key):
    ber = build_ciphertext_for_recipient(b"secret", enclave_key.public_key())
    assert ber[:2] == b"\x30\x80"  # indefinite-length BER like KMS
    parts = parse_enveloped_data(ber)
    assert parts.subject_key_identifier == subject_key_identifier(enclave_key.public_key())
    assert len(parts.encrypted_key) == 256
    assert decrypt_enveloped_data(ber, enclave_key) == b"secret"


def test_large_content_is_chunked(enclave_key):
    plaintext = bytes(range(256)) * 12  # 3072 B -> 3088 B of ciphertext, 4 chunks
    ber = build_ciphertext_for_recipient(plaintext, enclave_key.public_key())
    chunk_header = b"\x04\x82" + CONTENT_CHUNK_BYTES.to_bytes(2, "big")
    assert ber.count(chunk_header) >= 3
    assert decrypt_enveloped_data(ber, enclave_key) == plaintext


def test_other_key_cannot_decrypt(enclave_key):
    other = rsa.generate_private_key(65537, 2048)
    ber = build_ciphertext_for_recipient(b"secret", enclave_key.public_key())
    from enclave.kms.cms import CmsDecryptError

    with pytest.raises(CmsDecryptError):
        decrypt_enveloped_data(ber, other)


@settings(max_examples=60, deadline=None)
@given(plaintext=st.binary(max_size=4096))
def test_round_trip_any_plaintext_up_to_kms_limit(enclave_key, plaintext):
    ber = build_ciphertext_for_recipient(plaintext, enclave_key.public_key())
    assert len(ber) <= 6144  # KMS's CiphertextForRecipient bound holds for 4096 B plaintexts
    assert decrypt_enveloped_data(ber, enclave_key) == plaintext
