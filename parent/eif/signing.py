"""Signing keys for the EIF signature section, as ``nitro-cli sign-eif`` writes it.

The section itself (CBOR, COSE_Sign1 ES384 over ``{"register_index": 0, "register_value":
PCR0}``) is written and checked by :mod:`attestation.eif_signature`, the reader's own code.
The key is a local P-384 PEM key (RFC 6979: deterministic, so the file is reproducible) or an
AWS KMS asymmetric key (ECC_NIST_P384, SIGN_VERIFY; ``kms:Sign`` with ECDSA_SHA_384). Either
way the section is read back against the certificate before it is written; PCR8 is
``SHA384(0^48 ‖ SHA384(DER(cert)))``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.eif_signature import build_section, read_section
from attestation.pcr import pcr8_from_certificate

from .errors import EifBuildError
from .limits import DEFAULT_LIMITS, BuildLimits

KMS_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):\d{12}:(key|alias)/\S+$")


class Signer(Protocol):
    """Signs with a P-384 key whose certificate is ``certificate_pem``."""

    certificate_pem: bytes

    def sign_der(self, message: bytes) -> bytes:
        """ECDSA P-384 / SHA-384 signature of ``message``, DER-encoded."""
        ...


def _read_small(path: Path, what: str, limits: BuildLimits) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(limits.max_signing_file_bytes + 1)
    except OSError as exc:
        raise EifBuildError(
            "bad-signing-key", f"cannot read {what} {path}: {exc.strerror}"
        ) from exc
    if len(data) > limits.max_signing_file_bytes:
        raise EifBuildError("bad-signing-key", f"{what} {path} is too large")
    return data


def load_certificate(pem: bytes) -> x509.Certificate:
    """The signing certificate; it must carry a P-384 public key."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        key = cert.public_key()
    except ValueError as exc:
        raise EifBuildError(
            "bad-signing-key", f"signing certificate is not PEM X.509: {exc}"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise EifBuildError("bad-signing-key", "the signing certificate's key must be EC P-384")
    return cert


def _same_key(cert: x509.Certificate, public: Any) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(cert.public_key().public_bytes(*fmt) == public.public_bytes(*fmt))


@dataclass
class LocalSigner:
    """A P-384 private key in a PEM file and its certificate."""

    certificate_pem: bytes
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def from_files(
        cls, key_path: Path, cert_path: Path, limits: BuildLimits = DEFAULT_LIMITS
    ) -> LocalSigner:
        cert_pem = _read_small(cert_path, "signing certificate", limits)
        cert = load_certificate(cert_pem)
        try:
            key = serialization.load_pem_private_key(
                _read_small(key_path, "signing key", limits), None
            )
        except (ValueError, TypeError) as exc:
            raise EifBuildError(
                "bad-signing-key", f"signing key is not an unencrypted PEM key: {exc}"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp384r1":
            raise EifBuildError("bad-signing-key", "the signing key must be EC P-384")
        if not _same_key(cert, key.public_key()):
            raise EifBuildError("bad-signing-key", "the certificate is not for this signing key")
        return cls(cert_pem, key)

    def sign_der(self, message: bytes) -> bytes:
        return self.key.sign(message, ec.ECDSA(hashes.SHA384(), deterministic_signing=True))


@dataclass
class KmsSigner:
    """An AWS KMS ECC_NIST_P384 SIGN_VERIFY key (``kms:Sign``, ``kms:GetPublicKey``)."""

    certificate_pem: bytes
    key_id: str
    client: Any  # a boto3 KMS client

    @classmethod
    def connect(
        cls,
        key_id: str,
        cert_path: Path,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        limits: BuildLimits = DEFAULT_LIMITS,
    ) -> KmsSigner:
        import boto3
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
        )

        cert_pem = _read_small(cert_path, "signing certificate", limits)
        cert = load_certificate(cert_pem)
        match = KMS_ARN_RE.match(key_id)
        region = region or (match.group(1) if match else None) or "us-east-1"
        client = boto3.client("kms", endpoint_url=endpoint_url, region_name=region)
        try:
            answer = client.get_public_key(KeyId=key_id)
        except (BotoCoreError, ClientError) as exc:
            raise EifBuildError("kms", f"KMS GetPublicKey failed for {key_id}: {exc}") from exc
        if answer.get("KeySpec") != "ECC_NIST_P384" or answer.get("KeyUsage") != "SIGN_VERIFY":
            raise EifBuildError(
                "bad-signing-key", f"{key_id} must be an ECC_NIST_P384 SIGN_VERIFY key"
            )
        public = serialization.load_der_public_key(answer["PublicKey"])
        if not _same_key(cert, public):
            raise EifBuildError("bad-signing-key", f"the certificate is not for KMS key {key_id}")
        return cls(cert_pem, key_id, client)

    def sign_der(self, message: bytes) -> bytes:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
        )

        try:
            answer = self.client.sign(
                KeyId=self.key_id,
                Message=message,
                MessageType="RAW",
                SigningAlgorithm="ECDSA_SHA_384",
            )
        except (BotoCoreError, ClientError) as exc:
            raise EifBuildError("kms", f"KMS Sign failed for {self.key_id}: {exc}") from exc
        return bytes(answer["Signature"])


def signature_section(signer: Signer, pcr0: bytes) -> bytes:
    """The CBOR signature section for ``pcr0``, read back (signature and PCR0) before it is
    returned: a key that does not match the certificate is ``bad-signing-key``."""
    try:
        section = build_section(pcr0, signer.certificate_pem, signer.sign_der)
    except (ValueError, OverflowError) as exc:  # not DER, or r/s wider than P-384's 48 bytes
        raise EifBuildError(
            "bad-signing-key", f"the signer returned no P-384 ECDSA signature: {exc}"
        ) from exc
    check = read_section(section, pcr0)
    if not check.signature_check:
        raise EifBuildError(
            "bad-signing-key", f"the COSE signature does not verify (wrong key?): {check.problem}"
        )
    return section


def pcr8(signer: Signer) -> bytes:
    """PCR8 of an EIF signed by ``signer``."""
    cert = load_certificate(signer.certificate_pem)
    return pcr8_from_certificate(cert.public_bytes(serialization.Encoding.DER))
