"""enclave.kms.cms against real KMS CiphertextForRecipient vectors and independent OpenSSL CMS."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave.kms.cms import (
    CMS_ERROR_CODES,
    MAX_CIPHERTEXT_FOR_RECIPIENT,
    CmsDecryptError,
    CmsError,
    CmsMalformedError,
    CmsTooLargeError,
    CmsUnsupportedError,
    decrypt_enveloped_data,
    parse_enveloped_data,
    subject_key_identifier,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
KMS_VECTORS = ["kms-cms-sdkgo-1.ber", "kms-cms-enclaver-1.ber", "kms-cms-awssdkc-1.ber"]


def _vector(manifest: dict, name: str) -> dict:
    (entry,) = [v for v in manifest["kms_cms_vectors"] if v["file"] == name]
    return entry


def _key(vectors_dir: Path, entry: dict) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(
        (vectors_dir / entry["private_key_file"]).read_bytes(), None
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


# ------------------------------------------------------------------------- real KMS vectors
@pytest.mark.vectors
@pytest.mark.parametrize("name", ["kms-cms-sdkgo-1.ber", "kms-cms-enclaver-1.ber"])
def test_real_kms_vectors_decrypt_to_known_plaintext(vectors_dir, manifest, name):
    entry = _vector(manifest, name)
    data = (vectors_dir / name).read_bytes()
    key = _key(vectors_dir, entry)
    assert decrypt_enveloped_data(data, key).hex() == entry["plaintext_hex"]
    # KMS names the recipient by SHA-256 of its SPKI
    assert (
        subject_key_identifier(key.public_key()).hex()
        == (entry["recipient_subject_key_identifier_hex"])
    )


@pytest.mark.vectors
@pytest.mark.parametrize("name", KMS_VECTORS)
def test_real_kms_vectors_parse_to_manifest_fields(vectors_dir, manifest, name):
    entry = _vector(manifest, name)
    parts = parse_enveloped_data((vectors_dir / name).read_bytes())
    assert parts.encrypted_key.hex() == entry["encrypted_key_hex"]
    assert parts.iv.hex() == entry["iv_hex"]
    assert parts.ciphertext.hex() == entry["encrypted_content_hex"]
    assert parts.subject_key_identifier.hex() == entry["recipient_subject_key_identifier_hex"]


@pytest.mark.vectors
def test_wrong_private_key_is_a_decrypt_error(vectors_dir, manifest):
    entry = _vector(manifest, "kms-cms-sdkgo-1.ber")
    other = _key(vectors_dir, _vector(manifest, "kms-cms-enclaver-1.ber"))
    with pytest.raises(CmsDecryptError) as info:
        decrypt_enveloped_data((vectors_dir / entry["file"]).read_bytes(), other)
    assert info.value.code == "cms-decrypt-failed"
    assert "different key" in info.value.message


@pytest.mark.vectors
def test_trailing_bytes_are_refused(vectors_dir, manifest):
    entry = _vector(manifest, "kms-cms-sdkgo-1.ber")
    data = (vectors_dir / entry["file"]).read_bytes() + b"\x00"
    with pytest.raises(CmsMalformedError):
        decrypt_enveloped_data(data, _key(vectors_dir, entry))


@pytest.mark.vectors
def test_size_limit_is_enforced_before_parsing(vectors_dir, manifest):
    entry = _vector(manifest, "kms-cms-sdkgo-1.ber")
    data = (vectors_dir / entry["file"]).read_bytes()
    with pytest.raises(CmsTooLargeError) as info:
        decrypt_enveloped_data(data, _key(vectors_dir, entry), max_size=len(data) - 1)
    assert info.value.found == len(data)
    with pytest.raises(CmsTooLargeError):
        parse_enveloped_data(b"\x30\x80" + b"\x00" * MAX_CIPHERTEXT_FOR_RECIPIENT)


def test_non_rsa_or_tiny_keys_are_refused():
    with pytest.raises(CmsUnsupportedError):
        decrypt_enveloped_data(b"\x30\x00", ec.generate_private_key(ec.SECP256R1()))  # type: ignore[arg-type]
    small = rsa.generate_private_key(65537, 1024)
    with pytest.raises(CmsUnsupportedError):
        decrypt_enveloped_data(b"\x30\x00", small)


def test_error_codes_are_stable_and_distinct():
    assert CMS_ERROR_CODES == (
        "cms-error",
        "cms-malformed",
        "cms-too-large",
        "cms-unsupported",
        "cms-decrypt-failed",
    )
    assert CmsMalformedError("x").to_dict() == {
        "code": "cms-malformed", "kind": "bad-request", "message": "x"
    }


# ------------------------------------------------------------------- independent OpenSSL CMS
@pytest.fixture(scope="module")
def recipient(tmp_path_factory) -> tuple[rsa.RSAPrivateKey, Path]:
    """An RSA-2048 key and a self-signed certificate for it (PEM file)."""
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cms-test-recipient")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path_factory.mktemp("cms") / "cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, path


def _openssl_encrypt(cert: Path, plaintext: bytes, *extra: str, oaep: bool = True) -> bytes:
    assert OPENSSL is not None
    keyopts = (
        [
            "-keyopt",
            "rsa_padding_mode:oaep",
            "-keyopt",
            "rsa_oaep_md:sha256",
            "-keyopt",
            "rsa_mgf1_md:sha256",
        ]
        if oaep
        else []
    )
    args = [OPENSSL, "cms", "-encrypt", "-binary", "-outform", "DER", *extra]
    args += ["-recip", str(cert), *keyopts]
    if "-aes128" not in extra:
        args.insert(2, "-aes256")
    done = subprocess.run(args, input=plaintext, capture_output=True, timeout=20, check=True)
    return done.stdout


@needs_openssl
@pytest.mark.parametrize("size", [0, 1, 15, 16, 100, 3000, 4096])
def test_openssl_cms_decrypts(recipient, size):
    key, cert = recipient
    plaintext = bytes((i * 7 + 3) % 256 for i in range(size))
    der = _openssl_encrypt(cert, plaintext)
    assert decrypt_enveloped_data(der, key) == plaintext
    parts = parse_enveloped_data(der)
    assert parts.subject_key_identifier is None  # openssl default: issuerAndSerialNumber


@needs_openssl
def test_openssl_cms_with_subject_key_identifier(recipient):
    key, cert = recipient
    der = _openssl_encrypt(cert, b"key id recipient", "-keyid")
    assert decrypt_enveloped_data(der, key) == b"key id recipient"
    assert parse_enveloped_data(der).subject_key_identifier is not None


@needs_openssl
def test_openssl_default_oaep_sha1_is_refused(recipient):
    _, cert = recipient
    assert OPENSSL is not None
    der = subprocess.run(
        [OPENSSL, "cms", "-encrypt", "-aes256", "-binary", "-outform", "DER",
         "-recip", str(cert), "-keyopt", "rsa_padding_mode:oaep"],
        input=b"x", capture_output=True, timeout=20, check=True,
    ).stdout  # fmt: skip
    with pytest.raises(CmsUnsupportedError) as info:
        parse_enveloped_data(der)
    assert info.value.found["hash"] == "sha1"


@needs_openssl
def test_openssl_pkcs1v15_and_aes128_are_refused(recipient):
    _, cert = recipient
    with pytest.raises(CmsUnsupportedError, match="RSAES-OAEP"):
        parse_enveloped_data(_openssl_encrypt(cert, b"x", oaep=False))
    with pytest.raises(CmsUnsupportedError, match="AES-256-CBC"):
        parse_enveloped_data(_openssl_encrypt(cert, b"x", "-aes128"))


@needs_openssl
def test_openssl_signed_data_is_not_enveloped_data(recipient, tmp_path):
    key, cert = recipient
    key_path = tmp_path / "key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert OPENSSL is not None
    der = subprocess.run(
        [OPENSSL, "cms", "-sign", "-binary", "-outform", "DER", "-signer", str(cert),
         "-inkey", str(key_path), "-nodetach"],
        input=b"x", capture_output=True, timeout=20, check=True,
    ).stdout  # fmt: skip
    with pytest.raises(CmsUnsupportedError) as info:
        decrypt_enveloped_data(der, key)
    assert info.value.expected == "1.2.840.113549.1.7.3"


# ------------------------------------------------------------------------------- properties
def _outcome(data: bytes, key: rsa.RSAPrivateKey) -> None:
    try:
        result = decrypt_enveloped_data(data, key)
    except CmsError as exc:
        assert exc.code in CMS_ERROR_CODES
        assert isinstance(exc.message, str)
    else:
        assert isinstance(result, bytes)


@pytest.mark.vectors
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_vectors_only_raise_cms_errors(vectors_dir, manifest, data):
    entry = _vector(manifest, "kms-cms-sdkgo-1.ber")
    original = bytearray((vectors_dir / entry["file"]).read_bytes())
    key = _key(vectors_dir, entry)
    mutation = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    pos = data.draw(st.integers(0, len(original) - 1))
    if mutation == "flip":
        original[pos] ^= data.draw(st.integers(1, 255))
    elif mutation == "truncate":
        del original[pos:]
    elif mutation == "insert":
        original[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        del original[pos : pos + data.draw(st.integers(1, 8))]
    _outcome(bytes(original), key)


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=600))
def test_garbage_only_raises_cms_errors(garbage):
    with pytest.raises(CmsError):
        parse_enveloped_data(garbage)


@settings(max_examples=100, deadline=None)
@given(
    prefix=st.sampled_from([b"\x30\x80", b"\x30\x82\x01\x00", b"\x24\x80", b"\xa0\x80"]),
    body=st.binary(max_size=300),
)
def test_ber_shaped_garbage_only_raises_cms_errors(prefix, body):
    with pytest.raises(CmsError):
        parse_enveloped_data(prefix + body + b"\x00\x00")
