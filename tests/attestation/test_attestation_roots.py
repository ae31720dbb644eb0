"""The pinned AWS root and load_root_pem."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from attestation import AWS_NITRO_ROOT_G1, MalformedError, TestPKI, UntrustedRootError, roots


def test_pinned_root_matches_its_fingerprint() -> None:
    der = AWS_NITRO_ROOT_G1.public_bytes(Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == roots.AWS_NITRO_ROOT_G1_SHA256
    assert roots.der_sha256(AWS_NITRO_ROOT_G1) == roots.AWS_NITRO_ROOT_G1_SHA256
    assert (
        AWS_NITRO_ROOT_G1.subject.rfc4514_string() == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"
    )


def test_a_tampered_root_file_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(roots, "AWS_NITRO_ROOT_G1_SHA256", "00" * 32)
    with pytest.raises(UntrustedRootError) as err:
        roots._load_pinned_root()
    assert err.value.expected == "00" * 32
    assert (
        err.value.found == hashlib.sha256(AWS_NITRO_ROOT_G1.public_bytes(Encoding.DER)).hexdigest()
    )


def test_load_root_pem() -> None:
    pki = TestPKI.generate()
    assert roots.load_root_pem(pki.root_pem) == pki.root_certificate
    for bad in (b"", b"hello", pki.root_pem + pki.root_pem, b"x" * (roots.MAX_PEM_SIZE + 1)):
        with pytest.raises(MalformedError):
            roots.load_root_pem(bad)
    with pytest.raises(MalformedError):
        roots.load_root_pem("not bytes")  # type: ignore[arg-type]
