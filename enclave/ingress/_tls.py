"""The ingress TLS identity: a key pair made in the enclave at start, and its certificate.

The private key is generated in memory and handed to OpenSSL through an anonymous memory
file (``memfd_create``): it is never written to a named file and never leaves the process.
An app that brings its own certificate passes ``cert_file``/``key_file`` (files inside the
image); the attested public key is then that certificate's.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["CERT_VALIDITY", "TlsIdentity", "make_identity"]

CERT_VALIDITY = datetime.timedelta(days=365)
"""Lifetime of the self-signed certificate (clients pin it through the attestation)."""
CERT_COMMON_NAME = "nitro-enclave-ingress"


@dataclass(frozen=True)
class TlsIdentity:
    """What the listener presents: the certificate (DER), its SPKI (DER) and the context."""

    cert_der: bytes
    spki_der: bytes
    context: ssl.SSLContext

    def __repr__(self) -> str:  # never shows key material
        return f"TlsIdentity(cert {len(self.cert_der)} bytes)"


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERT_COMMON_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.DNSName("enclave")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def _load_from_memory(context: ssl.SSLContext, pem: bytes) -> None:
    """load_cert_chain from memory: a memfd when the kernel has it, else a private temp dir."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("ingress-tls", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
            return
        except OSError:
            pass
        finally:
            os.close(fd)
    with tempfile.TemporaryDirectory(prefix="ingress-tls-") as tmp:
        path = Path(tmp, "identity.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        try:
            context.load_cert_chain(str(path))
        finally:
            with contextlib.suppress(OSError):
                path.unlink()


def make_identity(
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> TlsIdentity:
    """A new P-256 key and self-signed certificate, or the app's own (both files given)."""
    context = _server_context()
    if (cert_file is None) != (key_file is None):
        raise ValueError("give both a certificate and a key file, or neither")
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _self_signed(key)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ) + cert.public_bytes(serialization.Encoding.PEM)
        _load_from_memory(context, pem)
        del key, pem
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return TlsIdentity(cert.public_bytes(serialization.Encoding.DER), spki, context)
