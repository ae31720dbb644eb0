"""The local KMS as a real process, driven by unmodified boto3 (integration).

One server process per module (``python -m simulator.kms``) trusting a TestPKI root; the key
policy comes from ``parent.key_policy`` (what ``make policy`` prints), the enclave's documents
from the TestPKI, and CiphertextForRecipient is opened with ``enclave.kms.cms``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation import TestPKI
from enclave.kms.cms import decrypt_enveloped_data
from parent.key_policy import key_policy, lint_policy, load_measurements, select_pcrs
from simulator.kms.credentials import DEFAULT_CREDENTIALS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
OPERATOR, PARENT = DEFAULT_CREDENTIALS
START_DEADLINE = 30.0
MODULE_ID = "i-0123456789abcdef0-enc0123456789abcdef"
OAEP = "RSAES_OAEP_SHA_256"


class KmsProcess:
    """``python -m simulator.kms`` on 127.0.0.1, port chosen by the OS, stopped on close."""

    def __init__(self, state: Path, roots: list[Path], extra: tuple[str, ...] = ()) -> None:
        self.state = state
        self.roots = roots
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        endpoint = self.state / "kms" / "endpoint.json"
        endpoint.unlink(missing_ok=True)
        args = [sys.executable, "-m", "simulator.kms", "--port", "0", "--state", str(self.state)]
        for root in self.roots:
            args += ["--trust-root", str(root)]
        args += self.extra
        log = open(self.state / "kms.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ}
        )
        log.close()
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kms exited: {(self.state / 'kms.log').read_text()}")
            if endpoint.exists():
                self.url = json.loads(endpoint.read_text())["url"]
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("kms did not start in time")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def client(
        self, access_key: str, secret: str, token: str | None = None, verify: Any = None
    ) -> Any:
        return boto3.client(
            "kms",
            endpoint_url=self.url,
            verify=verify,
            region_name="us-east-1",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret,
            aws_session_token=token,
            config=Config(retries={"total_max_attempts": 1}, read_timeout=30, connect_timeout=5),
        )


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.generate()


@pytest.fixture(scope="module")
def kms(tmp_path_factory, pki):
    state = tmp_path_factory.mktemp("kms-state")
    root_pem = state / "root.pem"
    root_pem.write_bytes(pki.root_pem)
    server = KmsProcess(state, [root_pem])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def operator(kms):
    return kms.client(OPERATOR.access_key_id, OPERATOR.secret_access_key)


@pytest.fixture
def parent(kms):
    return kms.client(PARENT.access_key_id, PARENT.secret_access_key)


@pytest.fixture(scope="module")
def enclave_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def _spki(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def pcrs() -> dict[int, bytes]:
    values = {i: bytes(48) for i in range(16)}
    values[0], values[1], values[2] = os.urandom(48), os.urandom(48), os.urandom(48)
    return values


@pytest.fixture(scope="module")
def policy_json(pcrs) -> str:
    """What ``make policy`` prints: the policy for nitro-cli build-enclave output."""
    build_output = "Enclave Image successfully created.\n" + json.dumps(
        {
            "Measurements": {
                "HashAlgorithm": "Sha384 { ... }",
                **{f"PCR{i}": pcrs[i].hex() for i in (0, 1, 2)},
            }
        }
    )
    measured = load_measurements(build_output)
    policy = key_policy(
        pcrs=select_pcrs(measured, [0, 1, 2]),
        enclave_role=PARENT.principal,
        admin=OPERATOR.principal,
    )
    assert lint_policy(policy) == []
    return json.dumps(policy, indent=2)


@pytest.fixture(scope="module")
def attested_key(kms, policy_json) -> str:
    client = kms.client(OPERATOR.access_key_id, OPERATOR.secret_access_key)
    key_id = client.create_key(Description="enclave secrets")["KeyMetadata"]["KeyId"]
    client.put_key_policy(KeyId=key_id, PolicyName="default", Policy=policy_json)
    client.create_alias(AliasName="alias/enclave", TargetKeyId=key_id)
    return key_id


def _recipient(document: bytes) -> dict[str, Any]:
    return {"AttestationDocument": document, "KeyEncryptionAlgorithm": OAEP}


def _doc(pki: TestPKI, pcrs: dict[int, bytes], key: Any, **kw: Any) -> bytes:
    return pki.sign_document(pcrs=pcrs, module_id=MODULE_ID, public_key=_spki(key), **kw)


def _error(call, *args, **kwargs) -> ClientError:
    with pytest.raises(ClientError) as info:
        call(*args, **kwargs)
    return info.value


def _code(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


SECRET = b"database password for the enclave"
CONTEXT = {"purpose": "db", "tenant": "acme"}


# --------------------------------------------------------------------------- attested flow
def test_attested_decrypt_returns_ciphertext_for_recipient_only(
    operator, parent, attested_key, pki, pcrs, enclave_key
):
    blob = operator.encrypt(KeyId="alias/enclave", Plaintext=SECRET, EncryptionContext=CONTEXT)
    answer = parent.decrypt(
        CiphertextBlob=blob["CiphertextBlob"],
        EncryptionContext=CONTEXT,
        Recipient=_recipient(_doc(pki, pcrs, enclave_key)),
    )
    assert "Plaintext" not in answer
    assert answer["KeyId"].endswith(attested_key)
    assert decrypt_enveloped_data(answer["CiphertextForRecipient"], enclave_key) == SECRET


def test_attested_generate_operations(parent, attested_key, pki, pcrs, enclave_key):
    recipient = _recipient(_doc(pki, pcrs, enclave_key))
    data_key = parent.generate_data_key(KeyId=attested_key, KeySpec="AES_256", Recipient=recipient)
    assert "Plaintext" not in data_key
    plain_key = decrypt_enveloped_data(data_key["CiphertextForRecipient"], enclave_key)
    assert len(plain_key) == 32
    again = parent.decrypt(CiphertextBlob=data_key["CiphertextBlob"], Recipient=recipient)
    assert decrypt_enveloped_data(again["CiphertextForRecipient"], enclave_key) == plain_key

    random = parent.generate_random(NumberOfBytes=64, Recipient=recipient)
    assert "Plaintext" not in random
    assert len(decrypt_enveloped_data(random["CiphertextForRecipient"], enclave_key)) == 64

    pair = parent.generate_data_key_pair(
        KeyId=attested_key, KeyPairSpec="ECC_NIST_P256", Recipient=recipient
    )
    assert "PrivateKeyPlaintext" not in pair and pair["PrivateKeyCiphertextBlob"]
    private = serialization.load_der_private_key(
        decrypt_enveloped_data(pair["CiphertextForRecipient"], enclave_key), None
    )
    assert _spki(private) == pair["PublicKey"]


def test_parent_without_attestation_is_denied(operator, parent, attested_key):
    blob = operator.encrypt(KeyId=attested_key, Plaintext=SECRET)["CiphertextBlob"]
    assert _code(_error(parent.decrypt, CiphertextBlob=blob)) == "AccessDeniedException"
    assert _code(_error(parent.generate_data_key, KeyId=attested_key, KeySpec="AES_256")) == (
        "AccessDeniedException"
    )


def test_operator_with_iam_kms_star_cannot_decrypt(operator, attested_key):
    """No account-root statement: the operator's IAM ``kms:*`` does not reach this key."""
    blob = operator.encrypt(KeyId=attested_key, Plaintext=SECRET)["CiphertextBlob"]
    exc = _error(operator.decrypt, CiphertextBlob=blob)
    assert _code(exc) == "AccessDeniedException"
    assert "kms:Decrypt" in exc.response["Error"]["Message"]


def test_changed_enclave_code_is_denied(operator, parent, attested_key, pki, pcrs, enclave_key):
    blob = operator.encrypt(KeyId=attested_key, Plaintext=SECRET)["CiphertextBlob"]
    changed = {**pcrs, 0: os.urandom(48)}
    exc = _error(
        parent.decrypt, CiphertextBlob=blob, Recipient=_recipient(_doc(pki, changed, enclave_key))
    )
    assert _code(exc) == "AccessDeniedException"
    changed_pcr2 = {**pcrs, 2: os.urandom(48)}
    exc = _error(
        parent.decrypt,
        CiphertextBlob=blob,
        Recipient=_recipient(_doc(pki, changed_pcr2, enclave_key)),
    )
    assert _code(exc) == "AccessDeniedException"


def test_debug_mode_document_is_denied(operator, parent, attested_key, pki, enclave_key):
    blob = operator.encrypt(KeyId=attested_key, Plaintext=SECRET)["CiphertextBlob"]
    zeros = {i: bytes(48) for i in range(16)}
    exc = _error(
        parent.decrypt, CiphertextBlob=blob, Recipient=_recipient(_doc(pki, zeros, enclave_key))
    )
    assert _code(exc) == "AccessDeniedException"


def test_untrusted_root_is_denied(operator, parent, attested_key, pcrs, enclave_key):
    blob = operator.encrypt(KeyId=attested_key, Plaintext=SECRET)["CiphertextBlob"]
    stranger = TestPKI.generate()
    exc = _error(
        parent.decrypt, CiphertextBlob=blob, Recipient=_recipient(_doc(stranger, pcrs, enclave_key))
    )
    assert _code(exc) == "AccessDeniedException"
    assert "untrusted-root" in exc.response["Error"]["Message"]


def test_stale_and_forged_documents_are_denied(
    operator, parent, attested_key, pki, pcrs, enclave_key
):
    blob = operator.encrypt(KeyId=attested_key, Plaintext=SECRET)["CiphertextBlob"]
    old = int((time.time() - 600) * 1000)
    exc = _error(
        parent.decrypt,
        CiphertextBlob=blob,
        Recipient=_recipient(_doc(pki, pcrs, enclave_key, timestamp_ms=old)),
    )
    assert _code(exc) == "AccessDeniedException" and "stale" in exc.response["Error"]["Message"]
    forged = bytearray(_doc(pki, pcrs, enclave_key))
    forged[-1] ^= 1  # last byte of the signature
    exc = _error(parent.decrypt, CiphertextBlob=blob, Recipient=_recipient(bytes(forged)))
    assert _code(exc) == "AccessDeniedException"
    exc = _error(parent.decrypt, CiphertextBlob=blob, Recipient=_recipient(b"\xa0not a doc"))
    assert _code(exc) == "AccessDeniedException"


def test_recipient_key_and_algorithm_are_validated(
    operator, parent, attested_key, pki, pcrs, enclave_key
):
    blob = operator.encrypt(KeyId=attested_key, Plaintext=SECRET)["CiphertextBlob"]
    no_key = pki.sign_document(pcrs=pcrs, module_id=MODULE_ID)
    ec_key = _doc(pki, pcrs, ec.generate_private_key(ec.SECP384R1()))
    for document in (no_key, ec_key):
        exc = _error(parent.decrypt, CiphertextBlob=blob, Recipient=_recipient(document))
        assert _code(exc) == "ValidationException"
    bad_algorithm = {"AttestationDocument": _doc(pki, pcrs, enclave_key),
                     "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_1"}  # fmt: skip
    exc = _error(parent.decrypt, CiphertextBlob=blob, Recipient=bad_algorithm)
    assert _code(exc) == "ValidationException"


def test_encryption_context_is_bound(operator, parent, attested_key, pki, pcrs, enclave_key):
    blob = operator.encrypt(KeyId=attested_key, Plaintext=SECRET, EncryptionContext=CONTEXT)
    exc = _error(
        parent.decrypt,
        CiphertextBlob=blob["CiphertextBlob"],
        EncryptionContext={**CONTEXT, "tenant": "evil"},
        Recipient=_recipient(_doc(pki, pcrs, enclave_key)),
    )
    assert exc.response["Error"]["Code"] == "InvalidCiphertextException"
    assert isinstance(exc, parent.exceptions.InvalidCiphertextException)


# ------------------------------------------------------------------------- key management
def test_key_lifecycle_and_modelled_exceptions(operator):
    key_id = operator.create_key()["KeyMetadata"]["KeyId"]
    other = operator.create_key()["KeyMetadata"]["KeyId"]
    assert operator.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    listed = {k["KeyId"] for k in operator.list_keys(Limit=1000)["Keys"]}
    assert {key_id, other} <= listed
    first = operator.list_keys(Limit=1)
    assert first["Truncated"] and len(first["Keys"]) == 1
    second = operator.list_keys(Limit=1, Marker=first["NextMarker"])
    assert second["Keys"] != first["Keys"]
    with pytest.raises(operator.exceptions.InvalidMarkerException):
        operator.list_keys(Marker="no-such-marker")
    with pytest.raises(operator.exceptions.NotFoundException):
        operator.describe_key(KeyId="00000000-0000-4000-8000-000000000000")
    blob = operator.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    assert operator.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"  # no KeyId needed
    with pytest.raises(operator.exceptions.IncorrectKeyException):
        operator.decrypt(CiphertextBlob=blob, KeyId=other)
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(operator.exceptions.InvalidCiphertextException):
        operator.decrypt(CiphertextBlob=bytes(tampered))
    moved = operator.re_encrypt(CiphertextBlob=blob, DestinationKeyId=other)
    assert operator.decrypt(CiphertextBlob=moved["CiphertextBlob"])["KeyId"].endswith(other)
    without = operator.generate_data_key_without_plaintext(KeyId=key_id, NumberOfBytes=24)
    assert len(operator.decrypt(CiphertextBlob=without["CiphertextBlob"])["Plaintext"]) == 24

    operator.create_alias(AliasName="alias/lifecycle", TargetKeyId=key_id)
    with pytest.raises(operator.exceptions.AlreadyExistsException):
        operator.create_alias(AliasName="alias/lifecycle", TargetKeyId=other)
    with pytest.raises(operator.exceptions.InvalidAliasNameException):
        operator.create_alias(AliasName="alias/aws/reserved", TargetKeyId=other)
    aliases = operator.list_aliases(KeyId=key_id)["Aliases"]
    assert [a["AliasName"] for a in aliases] == ["alias/lifecycle"]

    operator.disable_key(KeyId=key_id)
    with pytest.raises(operator.exceptions.DisabledException):
        operator.encrypt(KeyId="alias/lifecycle", Plaintext=b"x")
    operator.enable_key(KeyId=key_id)
    operator.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    with pytest.raises(operator.exceptions.KMSInvalidStateException):
        operator.encrypt(KeyId=key_id, Plaintext=b"x")
    operator.cancel_key_deletion(KeyId=key_id)
    assert operator.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"


def test_policy_lockout_and_malformed_policies_are_refused(operator, policy_json):
    key_id = operator.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(operator.exceptions.MalformedPolicyDocumentException):
        operator.put_key_policy(KeyId=key_id, PolicyName="default", Policy="{not json")
    lockout = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": PARENT.principal},
                           "Action": "kms:*", "Resource": "*"}],
        }
    )  # fmt: skip
    with pytest.raises(operator.exceptions.MalformedPolicyDocumentException):
        operator.put_key_policy(KeyId=key_id, PolicyName="default", Policy=lockout)
    operator.put_key_policy(KeyId=key_id, PolicyName="default", Policy=policy_json)
    assert json.loads(operator.get_key_policy(KeyId=key_id)["Policy"]) == json.loads(policy_json)


def test_derive_shared_secret_with_attestation(operator, pki, pcrs, enclave_key, policy_json):
    meta = operator.create_key(KeySpec="ECC_NIST_P384", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]
    peer = ec.generate_private_key(ec.SECP384R1())
    kms_public = serialization.load_der_public_key(
        operator.get_public_key(KeyId=meta["KeyId"])["PublicKey"]
    )
    plain = operator.derive_shared_secret(
        KeyId=meta["KeyId"], KeyAgreementAlgorithm="ECDH", PublicKey=_spki(peer)
    )
    assert plain["SharedSecret"] == peer.exchange(ec.ECDH(), kms_public)
    attested = operator.derive_shared_secret(
        KeyId=meta["KeyId"],
        KeyAgreementAlgorithm="ECDH",
        PublicKey=_spki(peer),
        Recipient=_recipient(_doc(pki, pcrs, enclave_key)),
    )
    assert "SharedSecret" not in attested
    opened = decrypt_enveloped_data(attested["CiphertextForRecipient"], enclave_key)
    assert opened == plain["SharedSecret"]


# ------------------------------------------------------------------------ authentication
def test_bad_signatures_are_refused(kms):
    wrong_secret = kms.client(OPERATOR.access_key_id, "not-the-secret")
    assert _code(_error(wrong_secret.list_keys)) == "InvalidSignatureException"
    unknown = kms.client("AKIAUNKNOWNKEY000001", "x")
    assert _code(_error(unknown.list_keys)) == "UnrecognizedClientException"


def test_session_token_credentials_are_read_from_the_state_dir(kms):
    path = kms.state / "kms" / "credentials.json"
    entries = json.loads(path.read_text())
    entries.append(
        {
            "access_key_id": "ASIASIMSESSION000001",
            "secret_access_key": "session-secret",
            "session_token": "session-token-1",
            "principal": "arn:aws:sts::111122223333:assumed-role/parent-instance-role/i-0abc",
            "iam_actions": ["kms:GenerateRandom"],
        }
    )
    path.write_text(json.dumps(entries))
    good = kms.client("ASIASIMSESSION000001", "session-secret", "session-token-1")
    assert len(good.generate_random(NumberOfBytes=8)["Plaintext"]) == 8
    bad = kms.client("ASIASIMSESSION000001", "session-secret", "other-token")
    assert _code(_error(bad.generate_random, NumberOfBytes=8)) == "UnrecognizedClientException"


# ------------------------------------------------------------------------------ bad input
def _raw(
    kms: KmsProcess,
    body: bytes,
    *,
    target: str = "TrentService.Encrypt",
    content_type: str = "application/x-amz-json-1.1",
    sign: bool = True,
) -> tuple[int, dict[str, Any]]:
    headers = {"X-Amz-Target": target, "Content-Type": content_type}
    request = AWSRequest(method="POST", url=kms.url + "/", data=body, headers=headers)
    if sign:
        creds = Credentials(OPERATOR.access_key_id, OPERATOR.secret_access_key)
        SigV4Auth(creds, "kms", "us-east-1").add_auth(request)
    prepared = urllib.request.Request(
        kms.url + "/", data=body, headers=dict(request.headers.items()), method="POST"
    )
    try:
        with urllib.request.urlopen(prepared, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_garbage_requests_get_typed_errors_and_the_server_keeps_serving(kms, operator):
    cases = [
        (b"{not json", "TrentService.Encrypt", "SerializationException"),
        (b"[1, 2]", "TrentService.Encrypt", "SerializationException"),
        (b'{"KeyId": 5, "Plaintext": "aGk="}', "TrentService.Encrypt", "SerializationException"),
        (b'{"KeyId": "k", "Plaintext": "@@@"}', "TrentService.Encrypt", "SerializationException"),
        (b'{"KeyId": "k"}', "TrentService.Encrypt", "ValidationException"),
        (b"{}", "TrentService.Nope", "UnknownOperationException"),
        (b"{}", "Other.Encrypt", "UnknownOperationException"),
        (b"[" * 5000 + b"]" * 5000, "TrentService.Encrypt", "SerializationException"),
        (b'{"a":' * 100 + b"1" + b"}" * 100, "TrentService.Encrypt", "SerializationException"),
    ]
    for body, target, expected in cases:
        status, answer = _raw(kms, body, target=target)
        assert (status, answer["__type"]) == (400, expected), body[:40]
    status, answer = _raw(kms, b"{}", content_type="text/plain", target="TrentService.ListKeys")
    assert answer["__type"] == "SerializationException"
    status, answer = _raw(kms, b"{}", sign=False)
    assert (status, answer["__type"]) == (400, "MissingAuthenticationTokenException")
    status, answer = _raw(kms, b"x" * ((1 << 20) + 1))
    assert (status, answer["__type"]) == (413, "RequestEntityTooLargeException")
    assert "Keys" in operator.list_keys()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    target=st.sampled_from(["Decrypt", "Encrypt", "GenerateDataKey", "CreateKey", "PutKeyPolicy"]),
    body=st.binary(max_size=200)
    | st.dictionaries(
        st.sampled_from(["KeyId", "CiphertextBlob", "Plaintext", "Recipient", "Policy"]),
        st.text(max_size=30) | st.integers() | st.none() | st.lists(st.integers(), max_size=2),
        max_size=4,
    ).map(lambda d: json.dumps(d).encode()),
)
def test_random_bodies_never_cause_server_errors(kms, target, body):
    status, answer = _raw(kms, body, target=f"TrentService.{target}")
    assert status in (200, 400), answer  # never a 5xx
    if status == 400:
        assert answer["__type"].endswith("Exception") and answer["message"]


# ------------------------------------------------------------------------------ CLI, TLS
def _self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.pem", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_endpoint_with_default_aws_root(tmp_path):
    cert, key = _self_signed(tmp_path)
    server = KmsProcess(tmp_path, [], ("--tls-cert", str(cert), "--tls-key", str(key)))
    server.start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        client = server.client(OPERATOR.access_key_id, OPERATOR.secret_access_key, verify=str(cert))
        key_id = client.create_key()["KeyMetadata"]["KeyId"]
        assert client.list_keys()["Keys"][0]["KeyId"] == key_id
    finally:
        server.stop()


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "0"],  # no --state
        ["--state", "{tmp}", "--trust-root", "{tmp}/missing.pem"],
        ["--state", "{tmp}", "--credentials", "not-a-credential"],
        ["--state", "{tmp}", "--tls-cert", "{tmp}/only-cert.pem"],
    ],
)
def test_cli_usage_errors_exit_2(tmp_path, args):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "simulator.kms", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------------- restart
def test_restart_keeps_keys_aliases_and_policies(kms, attested_key, pki, pcrs, enclave_key):
    """Runs last in this module: restarts the shared server on the same state directory."""
    operator = kms.client(OPERATOR.access_key_id, OPERATOR.secret_access_key)
    blob = operator.encrypt(KeyId="alias/enclave", Plaintext=SECRET, EncryptionContext=CONTEXT)
    kms.stop()
    kms.start()
    parent = kms.client(PARENT.access_key_id, PARENT.secret_access_key)
    answer = parent.decrypt(
        CiphertextBlob=blob["CiphertextBlob"],
        EncryptionContext=CONTEXT,
        Recipient=_recipient(_doc(pki, pcrs, enclave_key)),
    )
    assert decrypt_enveloped_data(answer["CiphertextForRecipient"], enclave_key) == SECRET
    assert _code(_error(parent.decrypt, CiphertextBlob=blob["CiphertextBlob"],
                        EncryptionContext=CONTEXT)) == "AccessDeniedException"  # fmt: skip
    operator = kms.client(OPERATOR.access_key_id, OPERATOR.secret_access_key)
    assert operator.describe_key(KeyId="alias/enclave")["KeyMetadata"]["KeyId"] == attested_key


# ------------------------------------------- issue 9 item 15: case-colliding context keys
def test_case_colliding_encryption_context_keys_are_refused(operator):
    key_id = operator.create_key()["KeyMetadata"]["KeyId"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": OPERATOR.principal},
             "Action": ["kms:PutKeyPolicy", "kms:GetKeyPolicy", "kms:DescribeKey"],
             "Resource": "*"},
            {"Sid": "AliceOnly", "Effect": "Allow", "Principal": {"AWS": OPERATOR.principal},
             "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*",
             "Condition": {"StringEquals": {"kms:EncryptionContext:tenant": "alice"}}},
        ],
    }  # fmt: skip
    operator.put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(policy))
    for context in ({"tenant": "alice"}, {"TENANT": "alice"}):  # condition keys ignore case
        blob = operator.encrypt(KeyId=key_id, Plaintext=b"x", EncryptionContext=context)
        operator.decrypt(CiphertextBlob=blob["CiphertextBlob"], EncryptionContext=context)
    bob = _error(operator.encrypt, KeyId=key_id, Plaintext=b"x", EncryptionContext={"tenant": "b"})
    assert _code(bob) == "AccessDeniedException"
    colliding = [
        {"tenant": "bob", "TENANT": "alice"},
        {"TENANT": "alice", "tenant": "bob"},
        {"Tenant": "alice", "tenant": "alice"},
    ]
    for context in colliding:
        exc = _error(operator.encrypt, KeyId=key_id, Plaintext=b"x", EncryptionContext=context)
        assert _code(exc) == "ValidationException", context
        assert "differ only by case" in exc.response["Error"]["Message"]
