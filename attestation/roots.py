"""Trust anchors: the AWS Nitro Enclaves Root-G1, shipped in the package and pinned.

The PEM file is read from package data and its DER SHA-256 compared to the fingerprint AWS
publishes (nitro-spec §2.5) when this module is imported; a mismatch stops the import, so a
tampered file can never become a trust anchor. Other roots are trusted only when a caller
passes them explicitly (``roots=[...]``), e.g. ``TestPKI.root_certificate``.
"""

from __future__ import annotations

import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .errors import MalformedError, UntrustedRootError

__all__ = ["AWS_NITRO_ROOT_G1", "AWS_NITRO_ROOT_G1_SHA256", "der_sha256", "load_root_pem"]

AWS_NITRO_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
"""SHA-256 of the DER of AWS_NitroEnclaves_Root-G1 (CN=aws.nitro-enclaves)."""
_ROOT_FILE = "aws-nitro-enclaves-root-g1.pem"
MAX_PEM_SIZE = 64 * 1024


def der_sha256(cert: x509.Certificate) -> str:
    """Hex SHA-256 of a certificate's DER encoding (its fingerprint)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def load_root_pem(data: bytes) -> x509.Certificate:
    """Load one PEM certificate to use as a trust anchor; MalformedError when it is not one."""
    if not isinstance(data, bytes | bytearray) or not 0 < len(data) <= MAX_PEM_SIZE:
        raise MalformedError(f"a root PEM is 1..{MAX_PEM_SIZE} bytes")
    try:
        certs = x509.load_pem_x509_certificates(bytes(data))
    except ValueError as exc:
        raise MalformedError(f"not a PEM certificate: {str(exc)[:120]}") from None
    if len(certs) != 1:
        raise MalformedError(f"expected exactly one certificate in the PEM, found {len(certs)}")
    return certs[0]


def _read_shipped_pem() -> bytes:
    """The packaged PEM; a plain file read when the package is on disk (it nearly always is:
    importlib.resources costs the CLI's start-up zipfile, tempfile and shutil)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "roots", _ROOT_FILE)
    try:
        with open(path, "rb") as f:
            return f.read(MAX_PEM_SIZE + 1)
    except OSError:
        from importlib import resources  # e.g. a zipped package

        return resources.files(__package__).joinpath("roots", _ROOT_FILE).read_bytes()


def _load_pinned_root() -> x509.Certificate:
    pem = _read_shipped_pem()
    cert = load_root_pem(pem)
    found = der_sha256(cert)
    if found != AWS_NITRO_ROOT_G1_SHA256:
        raise UntrustedRootError(
            f"shipped {_ROOT_FILE} does not match the pinned AWS fingerprint",
            expected=AWS_NITRO_ROOT_G1_SHA256,
            found=found,
        )
    return cert


AWS_NITRO_ROOT_G1: x509.Certificate = _load_pinned_root()
"""The AWS Nitro Enclaves Root-G1 certificate (pinned by DER SHA-256)."""
