"""Signing an EIF with an AWS KMS asymmetric key (ECC_NIST_P384, SIGN_VERIFY), against the
local KMS run as a real process (``python -m simulator kms``), through boto3 over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from eif_build_helpers import ROOT, SIMPLE_ROOTFS, make_blobs, make_rootfs, run_cli

from attestation import TestPKI
from attestation.eif import read_eif
from attestation.pcr import pcr8_from_certificate
from simulator.kms.credentials import DEFAULT_CREDENTIALS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
OPERATOR = DEFAULT_CREDENTIALS[0]
START_DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def kms_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("kms")
    root = state / "root.pem"
    root.write_bytes(TestPKI.generate().root_pem)
    log = open(state / "kms.log", "ab")  # noqa: SIM115 - handed to the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "kms", "--port", "0", "--state", str(state),
         "--trust-root", str(root)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    endpoint = state / "kms" / "endpoint.json"
    deadline = time.monotonic() + START_DEADLINE_S
    try:
        while not endpoint.exists():
            assert proc.poll() is None, (state / "kms.log").read_text()
            assert time.monotonic() < deadline, "the local KMS did not start"
            time.sleep(0.05)
        yield json.loads(endpoint.read_text())["url"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _client(url: str) -> Any:
    return boto3.client(
        "kms", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id=OPERATOR.access_key_id,
        aws_secret_access_key=OPERATOR.secret_access_key,
    )  # fmt: skip


def _certificate_for(public_der: bytes, directory: Path) -> Path:
    """A certificate for the KMS key, issued by a local CA (the key never leaves KMS)."""
    ca = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kms-eif-signer")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "release-ca")]))
        .public_key(serialization.load_der_public_key(public_der))  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(ca, hashes.SHA384())
    )
    path = directory / "kms-signer.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_kms_sign_and_get_public_key(kms_url: str) -> None:
    kms = _client(kms_url)
    meta = kms.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    assert meta["SigningAlgorithms"] == ["ECDSA_SHA_384"]
    public = kms.get_public_key(KeyId=meta["KeyId"])
    assert public["KeyUsage"] == "SIGN_VERIFY" and public["SigningAlgorithms"] == ["ECDSA_SHA_384"]
    key = serialization.load_der_public_key(public["PublicKey"])
    assert isinstance(key, ec.EllipticCurvePublicKey)
    signed = kms.sign(KeyId=meta["KeyId"], Message=b"hello", MessageType="RAW",
                      SigningAlgorithm="ECDSA_SHA_384")  # fmt: skip
    key.verify(signed["Signature"], b"hello", ec.ECDSA(hashes.SHA384()))
    for bad in ({"SigningAlgorithm": "ECDSA_SHA_256"}, {"MessageType": "DIGEST"}):
        args = {"KeyId": meta["KeyId"], "Message": b"hello", "MessageType": "RAW",
                "SigningAlgorithm": "ECDSA_SHA_384", **bad}  # fmt: skip
        with pytest.raises(ClientError):
            kms.sign(**args)
    symmetric = kms.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(ClientError):
        kms.sign(KeyId=symmetric, Message=b"x", SigningAlgorithm="ECDSA_SHA_384")


def test_eif_signed_with_a_kms_key(kms_url: str, tmp_path: Path) -> None:
    kms = _client(kms_url)
    key_arn = kms.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    cert = _certificate_for(kms.get_public_key(KeyId=key_arn)["PublicKey"], tmp_path)
    blobs = make_blobs(tmp_path / "blobs")
    rootfs = make_rootfs(tmp_path / "rootfs.tar", SIMPLE_ROOTFS)
    out = tmp_path / "app.eif"
    env = {"AWS_ACCESS_KEY_ID": OPERATOR.access_key_id,
           "AWS_SECRET_ACCESS_KEY": OPERATOR.secret_access_key}  # fmt: skip
    done = run_cli(
        "parent", "eif", "build", "--rootfs-tar", str(rootfs), "--blobs", str(blobs),
        "--output", str(out), "--cmd", '["/app/main.py"]', "--signing-key", key_arn,
        "--signing-cert", str(cert), "--kms-endpoint", kms_url, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    image = read_eif(out)
    assert image.signing is not None and image.signing.signature_check, image.signing
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert image.pcrs[8] == pcr8_from_certificate(der)
    assert json.loads(done.stdout)["Measurements"]["PCR8"] == image.pcrs[8].hex()
    # the provenance statement is signed through KMS too, and verifies by PCR8
    check = run_cli("attestation", "provenance", "verify", f"{out}.intoto.json", "--eif", str(out))
    assert check.returncode == 0, check.stdout + check.stderr
    # a certificate for another key is refused before anything is signed
    _, other = _other_cert(tmp_path)
    done = run_cli(
        "parent", "eif", "build", "--rootfs-tar", str(rootfs), "--blobs", str(blobs),
        "--output", str(tmp_path / "x.eif"), "--cmd", '["/a"]', "--signing-key", key_arn,
        "--signing-cert", str(other), "--kms-endpoint", kms_url, env=env,
    )  # fmt: skip
    assert done.returncode == 2 and "error (bad-signing-key)" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "x.eif").exists()


def _other_cert(tmp_path: Path) -> tuple[Path, Path]:
    from eif_build_helpers import signing_pair

    return signing_pair(tmp_path, "other")
