"""Attested KMS end to end, every part a real process:

    local KMS (python -m simulator.kms)          simulated NSM (python -m simulator.nsm)
          ^ TCP                                         ^ AF_UNIX (NITRO_NSM_SOCKET)
    kms relay (python -m parent.kms_relay) <-vsock(sim)- enclave probe (enclave.kms + tunnel)
                                                        ^ vsock(sim): set-credentials, decrypt
                                              this test = the parent (parent.credentials)

The key policy (parent.key_policy) names PCR0-2 measured from enclave/ (simulator.measure).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from attestation import TestPKI
from enclave.protocol import ProtocolClient, RemoteError
from enclave.transport import PARENT_CID, VsockAddress
from parent.credentials import CredentialSender
from parent.key_policy import key_policy
from simulator.measure import measure_enclave_code

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("_enclave_kms_probe.py")
ENCLAVE_CID = 16
RELAY_PORT = 8000
ACCOUNT = "111122223333"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/parent-instance-role"
OPERATOR_ARN = f"arn:aws:iam::{ACCOUNT}:user/operator"
OPERATOR = {"aws_access_key_id": "AKIASIMOPERATOR00001",
            "aws_secret_access_key": "sim-operator-secret-key"}
ROLE = {"AWS_ACCESS_KEY_ID": "AKIASIMPARENTROLE001",
        "AWS_SECRET_ACCESS_KEY": "sim-parent-role-secret-key"}
SECRET = b"attested secret: only the measured enclave may read this"
START_TIMEOUT = 30.0


class Proc:
    """A child process whose first stdout line says it is ready; stopped with SIGTERM."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.p = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=self.log.open("w"), text=True,
        )

    def ready_line(self) -> str:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.p.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=START_TIMEOUT)
        except queue.Empty:
            line = ""
        if not line:
            raise AssertionError(f"{self.name} did not start:\n{self.log.read_text()[-3000:]}")
        return line.strip()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self.p.stdout.close()


def wait_for(path: Path, proc: Proc) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not path.exists():
        if proc.p.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{proc.name} did not start:\n{proc.log.read_text()[-3000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def stack():
    tmp = Path(tempfile.mkdtemp(prefix="akms"))  # short: AF_UNIX paths are limited
    vsock = tmp / "vs"
    vsock.mkdir(mode=0o700)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NITRO_VSOCK_SIM_DIR": str(vsock)}
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(var, None)
    pki = TestPKI.generate()
    pki.save(tmp / "pki")
    procs: list[Proc] = []
    try:
        kms = Proc("kms", [sys.executable, "-m", "simulator.kms", "--port", "0",
                           "--state", str(tmp / "kms"), "--trust-root",
                           str(tmp / "pki" / "root.pem")], env, tmp)
        procs.append(kms)
        url = kms.ready_line().rsplit(" ", 1)[1]
        kms_port = int(url.rsplit(":", 1)[1])
        allow = tmp / "allow.yaml"
        allow.write_text(f"allowlist:\n- {{address: localhost, port: {kms_port}}}\n")
        relay = Proc("relay", [sys.executable, "-m", "parent.kms_relay", "--config", str(allow),
                               str(RELAY_PORT), "127.0.0.1", str(kms_port)], env, tmp)
        procs.append(relay)
        wait_for(vsock / f"{PARENT_CID}-{RELAY_PORT}.sock", relay)
        yield {"tmp": tmp, "env": env, "url": url, "procs": procs, "vsock": vsock}
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def operator(stack):
    return boto3.client("kms", endpoint_url=stack["url"], region_name="us-east-1", **OPERATOR)


@pytest.fixture(scope="module")
def measured(stack):
    return measure_enclave_code(ROOT / "enclave")


@pytest.fixture(scope="module")
def key_id(operator, measured):
    policy = key_policy(pcrs={i: measured[i] for i in (0, 1, 2)}, enclave_role=ROLE_ARN,
                        admin=OPERATOR_ARN)
    return operator.create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]


@pytest.fixture(scope="module")
def blob(operator, key_id):
    return operator.encrypt(KeyId=key_id, Plaintext=SECRET,
                            EncryptionContext={"app": "it"})["CiphertextBlob"]


def start_enclave(
    stack, name: str, source: Path, port: int, *, debug: bool = False,
    relay_port: int = RELAY_PORT, ca_bundle: Path | None = None,
) -> dict:
    """Simulated NSM measuring `source` + the probe app; returns the NSM's ready info."""
    tmp, env = stack["tmp"], stack["env"]
    sock = tmp / f"{name}.nsm"
    cmd = [sys.executable, "-m", "simulator.nsm", "--socket", str(sock), "--pki",
           str(tmp / "pki"), "--enclave-source", str(source)]
    nsm = Proc(f"nsm-{name}", [*cmd, "--debug"] if debug else cmd, env, tmp)
    stack["procs"].append(nsm)
    info = json.loads(nsm.ready_line())
    enclave_env = {**env, "NITRO_NSM_SOCKET": str(sock), "NITRO_VSOCK_SIM_CID": str(ENCLAVE_CID)}
    probe_cmd = [sys.executable, str(PROBE), "--port", str(port), "--relay-port", str(relay_port)]
    if ca_bundle is None:
        enclave_env["NITRO_KMS_SCHEME"] = "http"
    else:
        probe_cmd += ["--ca-bundle", str(ca_bundle)]
    probe = Proc(f"enclave-{name}", probe_cmd, enclave_env, tmp)
    stack["procs"].append(probe)
    ready = json.loads(probe.ready_line())
    assert ready["event"] == "ready", ready
    return info


async def as_parent(port: int, requests: list[tuple[str, object]]) -> list:
    """Push the role credentials (parent.credentials, from the environment), then run
    `requests` against the enclave; each result is the reply or the RemoteError."""
    session = boto3.Session(region_name="us-east-1", aws_access_key_id=ROLE["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=ROLE["AWS_SECRET_ACCESS_KEY"])
    address = VsockAddress(ENCLAVE_CID, port)
    await CredentialSender(address, session=session).push_once()
    out = []
    async with await ProtocolClient.connect(address, deadline=10) as client:
        for op, body in requests:
            try:
                out.append(await client.request(op, body, timeout=30))
            except RemoteError as exc:
                out.append(exc)
    return out


def parent_run(stack, port, requests):
    os.environ["NITRO_VSOCK_SIM_DIR"] = str(stack["vsock"])
    try:
        return asyncio.run(asyncio.wait_for(as_parent(port, requests), 90))
    finally:
        del os.environ["NITRO_VSOCK_SIM_DIR"]


def test_matching_pcrs_decrypt(stack, measured, key_id, blob):
    info = start_enclave(stack, "real", ROOT / "enclave", 5000)
    assert info["pcrs"]["0"] == measured[0].hex()  # the NSM measured the same code
    decrypted, data_key, random, decrypted_again, keyring = parent_run(stack, 5000, [
        ("decrypt", {"ciphertext": blob, "context": {"app": "it"}}),
        ("data-key", {"key_id": key_id}),
        ("random", {"n": 64}),
        ("decrypt", {"ciphertext": blob, "context": {"app": "it"}}),
        ("keyring", None),
    ])
    assert decrypted == {"sha256": hashlib.sha256(SECRET).digest(), "length": len(SECRET)}
    assert decrypted_again == decrypted
    assert data_key == {"length": 32, "round_trip": True}
    assert random == {"length": 64}
    assert keyring == {"rotations": 1, "documents": 1}  # one key pair, one document, 5 calls
    relay_log = (stack["tmp"] / "relay.log").read_text()
    assert "using 127.0.0.1 for 127.0.0.1" in relay_log  # KMS traffic went through the relay
    assert SECRET.decode() not in relay_log


def test_one_bit_changed_in_the_enclave_code_is_denied(stack, key_id, blob, measured):
    copy = stack["tmp"] / "enclave-modified"
    shutil.copytree(ROOT / "enclave", copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "kms" / "__init__.py"
    data = bytearray(target.read_bytes())
    i = data.index(b"Attested KMS")
    data[i] ^= 0x01  # "A" -> "@": one bit
    target.write_bytes(bytes(data))
    info = start_enclave(stack, "modified", copy, 5001)
    assert info["pcrs"]["0"] != measured[0].hex()
    (result,) = parent_run(stack, 5001, [("decrypt", {"ciphertext": blob,
                                                      "context": {"app": "it"}})])
    assert isinstance(result, RemoteError)
    assert result.code == "kms-access-denied"
    assert "AccessDenied" in result.message or "not authorized" in result.message


def test_the_parent_with_the_same_credentials_is_denied(stack, blob):
    parent = boto3.client("kms", endpoint_url=stack["url"], region_name="us-east-1",
                          aws_access_key_id=ROLE["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=ROLE["AWS_SECRET_ACCESS_KEY"])
    with pytest.raises(ClientError) as info:
        parent.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "it"})
    assert info.value.response["Error"]["Code"] == "AccessDeniedException"


def test_debug_mode_document_is_denied(stack, blob):
    info = start_enclave(stack, "debug", ROOT / "enclave", 5002, debug=True)
    assert set(info["pcrs"]["0"]) == {"0"}
    (result,) = parent_run(stack, 5002, [("decrypt", {"ciphertext": blob,
                                                      "context": {"app": "it"}})])
    assert isinstance(result, RemoteError) and result.code == "kms-access-denied"


def tls_files(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for `host` and 127.0.0.1: (ca, cert, key) PEMs."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "integration test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "kms-cert.pem", directory / "kms-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_hardware_shaped_path_tls_inside_the_enclave(stack, measured):
    """No NITRO_KMS_SCHEME: boto3 sends CONNECT kms.us-east-1.amazonaws.com:443 to the tunnel
    and runs TLS (certificate and host name checked) through vsock and the relay to an HTTPS
    KMS, exactly as on hardware; only the CA is a test one."""
    tmp, env = stack["tmp"], stack["env"]
    ca, cert, key = tls_files(tmp, "kms.us-east-1.amazonaws.com")
    kms = Proc("kms-tls", [sys.executable, "-m", "simulator.kms", "--port", "0",
                           "--state", str(tmp / "kms-tls"), "--trust-root",
                           str(tmp / "pki" / "root.pem"), "--tls-cert", str(cert),
                           "--tls-key", str(key)], env, tmp)
    stack["procs"].append(kms)
    url = kms.ready_line().rsplit(" ", 1)[1]
    assert url.startswith("https://")
    port = int(url.rsplit(":", 1)[1])
    allow = tmp / "allow-tls.yaml"
    allow.write_text(f"allowlist:\n- {{address: 127.0.0.1, port: {port}}}\n")
    relay = Proc("relay-tls", [sys.executable, "-m", "parent.kms_relay", "--config", str(allow),
                               str(RELAY_PORT + 1), "127.0.0.1", str(port)], env, tmp)
    stack["procs"].append(relay)
    wait_for(stack["vsock"] / f"{PARENT_CID}-{RELAY_PORT + 1}.sock", relay)
    operator = boto3.client("kms", endpoint_url=url, region_name="us-east-1", verify=str(ca),
                            **OPERATOR)
    policy = key_policy(pcrs={i: measured[i] for i in (0, 1, 2)}, enclave_role=ROLE_ARN,
                        admin=OPERATOR_ARN)
    key_id = operator.create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
    blob = operator.encrypt(KeyId=key_id, Plaintext=SECRET)["CiphertextBlob"]
    start_enclave(stack, "tls", ROOT / "enclave", 5003, relay_port=RELAY_PORT + 1, ca_bundle=ca)
    decrypted, random = parent_run(stack, 5003, [("decrypt", {"ciphertext": blob}),
                                                 ("random", {"n": 8})])
    assert decrypted == {"sha256": hashlib.sha256(SECRET).digest(), "length": len(SECRET)}
    assert random == {"length": 8}
