"""enclave.kms.AttestedKms against the local KMS (real HTTP, SigV4, key policies) and a
simulated NSM measuring the real enclave/ code."""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from _servers.local_kms import LocalKms
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from attestation import TestPKI
from enclave.kms import AttestedKms, KeyLimits, KmsError
from enclave.nsm import NsmClient
from parent.key_policy import key_policy
from simulator.nsm import SimulatedNsm

ENCLAVE_DIR = Path(__file__).resolve().parents[2] / "enclave"
ACCOUNT = "111122223333"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/parent-instance-role"
OPERATOR = f"arn:aws:iam::{ACCOUNT}:user/operator"
OPERATOR_KEYS = {"aws_access_key_id": "AKIASIMOPERATOR00001",
                 "aws_secret_access_key": "sim-operator-secret-key"}
ROLE_KEYS = {"aws_access_key_id": "AKIASIMPARENTROLE001",
             "aws_secret_access_key": "sim-parent-role-secret-key"}
SECRET = b"the launch codes: 0000 (do not log)"


@pytest.fixture(scope="module")
def pki():
    return TestPKI.generate()


@pytest.fixture(scope="module")
def kms(tmp_path_factory, pki):
    local = LocalKms(tmp_path_factory.mktemp("kms"), pki)
    yield local
    local.close()


@pytest.fixture(scope="module")
def nsm(pki):
    return SimulatedNsm.for_enclave(pki, ENCLAVE_DIR)


@pytest.fixture(scope="module")
def operator(kms):
    return kms.client(OPERATOR_KEYS)


def make_key(operator, pcrs, **create) -> str:
    policy = key_policy(pcrs={i: pcrs[i] for i in (0, 1, 2)}, enclave_role=ROLE, admin=OPERATOR)
    return operator.create_key(Policy=json.dumps(policy), **create)["KeyMetadata"]["KeyId"]


@pytest.fixture(scope="module")
def key_id(operator, nsm):
    return make_key(operator, nsm.pcrs)


@pytest.fixture
def attested(kms, nsm):
    return AttestedKms(kms.client(ROLE_KEYS), nsm=NsmClient(transport=nsm.handle))


def test_decrypt_with_matching_pcrs(attested, operator, key_id, caplog):
    caplog.set_level(logging.DEBUG)
    blob = operator.encrypt(KeyId=key_id, Plaintext=SECRET)["CiphertextBlob"]
    assert attested.decrypt(blob) == SECRET
    ctx = {"app": "demo"}
    blob = operator.encrypt(KeyId=key_id, Plaintext=SECRET, EncryptionContext=ctx)[
        "CiphertextBlob"
    ]
    assert attested.decrypt(blob, encryption_context=ctx, key_id=key_id) == SECRET
    with pytest.raises(KmsError) as info:
        attested.decrypt(blob, encryption_context={"app": "other"})
    assert info.value.code == "kms-invalid-ciphertext"
    assert SECRET.decode() not in caplog.text
    assert SECRET.hex() not in caplog.text


def test_the_same_role_without_recipient_is_denied(kms, operator, key_id):
    blob = operator.encrypt(KeyId=key_id, Plaintext=SECRET)["CiphertextBlob"]
    with pytest.raises(Exception) as info:
        kms.client(ROLE_KEYS).decrypt(CiphertextBlob=blob)
    assert info.value.response["Error"]["Code"] == "AccessDeniedException"


def test_other_measurements_are_denied_with_a_typed_error(kms, operator, nsm, pki):
    other = dict(nsm.pcrs)
    other[0] = bytes(48 * [7])
    key = make_key(operator, other)
    blob = operator.encrypt(KeyId=key, Plaintext=SECRET)["CiphertextBlob"]
    client = AttestedKms(kms.client(ROLE_KEYS), nsm=NsmClient(transport=nsm.handle))
    with pytest.raises(KmsError) as info:
        client.decrypt(blob)
    err = info.value
    assert (err.code, err.aws_code, err.operation) == (
        "kms-access-denied", "AccessDeniedException", "Decrypt"
    )
    assert SECRET.decode() not in str(err)


def test_debug_mode_document_is_denied(kms, operator, key_id, pki):
    debug = SimulatedNsm.for_enclave(pki, ENCLAVE_DIR, debug=True)
    blob = operator.encrypt(KeyId=key_id, Plaintext=SECRET)["CiphertextBlob"]
    client = AttestedKms(kms.client(ROLE_KEYS), nsm=NsmClient(transport=debug.handle))
    with pytest.raises(KmsError) as info:
        client.decrypt(blob)
    assert info.value.code == "kms-access-denied"


def test_generate_data_key(attested, key_id):
    dk = attested.generate_data_key(key_id)
    assert len(dk.plaintext) == 32
    assert attested.decrypt(dk.ciphertext_blob) == dk.plaintext
    assert dk.plaintext.hex() not in repr(dk)
    assert len(attested.generate_data_key(key_id, number_of_bytes=17).plaintext) == 17


def test_generate_data_key_pair(attested, key_id):
    pair = attested.generate_data_key_pair(key_id, "ECC_NIST_P256")
    private = serialization.load_der_private_key(pair.private_key_plaintext, None)
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public == pair.public_key
    assert attested.decrypt(pair.private_key_ciphertext_blob) == pair.private_key_plaintext


def test_generate_random(attested):
    a, b = attested.generate_random(32), attested.generate_random(32)
    assert len(a) == 32 and a != b
    with pytest.raises(KmsError) as info:
        attested.generate_random(1025)
    assert info.value.code == "bad-request"


def test_derive_shared_secret(attested, operator, nsm):
    policy = key_policy(pcrs={0: nsm.pcrs[0]}, enclave_role=ROLE, admin=OPERATOR)
    policy["Statement"].append({"Sid": "ReadPublicKey", "Effect": "Allow",
                                "Principal": {"AWS": OPERATOR}, "Action": "kms:GetPublicKey",
                                "Resource": "*"})
    key = operator.create_key(
        Policy=json.dumps(policy), KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT"
    )["KeyMetadata"]["KeyId"]
    kms_public = serialization.load_der_public_key(
        operator.get_public_key(KeyId=key)["PublicKey"]
    )
    mine = ec.generate_private_key(ec.SECP256R1())
    mine_der = mine.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    secret = attested.derive_shared_secret(key, mine_der)
    assert secret == mine.exchange(ec.ECDH(), kms_public)


def test_key_pair_and_document_are_cached_then_renewed(kms, nsm, key_id, operator):
    now = [1000.0]
    calls = []

    def attest(spki):
        calls.append(spki)
        return NsmClient(transport=nsm.handle).attestation(public_key=spki)

    client = AttestedKms(kms.client(ROLE_KEYS), attest=attest,
                         key_limits=KeyLimits(rotate_after_s=600, document_refresh_s=60))
    client.keyring._clock = lambda: now[0]
    blob = operator.encrypt(KeyId=key_id, Plaintext=SECRET)["CiphertextBlob"]
    for _ in range(5):
        assert client.decrypt(blob) == SECRET
    assert len(calls) == 1 and client.keyring.rotations == 1
    now[0] += 61  # document refreshed, same key
    assert client.decrypt(blob) == SECRET
    assert len(calls) == 2 and calls[0] == calls[1] and client.keyring.rotations == 1
    now[0] += 600  # key rotated
    assert client.decrypt(blob) == SECRET
    assert len(calls) == 3 and calls[2] != calls[0] and client.keyring.rotations == 2


def test_concurrent_calls_share_one_key(kms, nsm, key_id, operator):
    client = AttestedKms(kms.client(ROLE_KEYS), nsm=NsmClient(transport=nsm.handle))
    blob = operator.encrypt(KeyId=key_id, Plaintext=SECRET)["CiphertextBlob"]
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(client.decrypt(blob)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [SECRET] * 8
    assert client.keyring.rotations == 1 and client.keyring.documents == 1


# -- error mapping -------------------------------------------------------------------------------


def test_not_found_and_bad_ciphertext(attested):
    with pytest.raises(KmsError) as info:
        attested.generate_data_key("00000000-0000-0000-0000-000000000000")
    assert info.value.code == "kms-not-found"
    with pytest.raises(KmsError) as info:
        attested.decrypt(b"\x01" * 100)
    assert info.value.code == "kms-invalid-ciphertext"
    with pytest.raises(KmsError) as info:
        attested.decrypt(b"")
    assert info.value.code == "bad-request"


def test_unreachable_kms(nsm):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    client = boto3.client(
        "kms", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
        config=boto3.session.Config(retries={"max_attempts": 1}, connect_timeout=1),
        **ROLE_KEYS,
    )
    with pytest.raises(KmsError) as info:
        AttestedKms(client, nsm=NsmClient(transport=nsm.handle)).generate_random(8)
    assert info.value.code == "kms-unreachable"


def test_nsm_failure_is_attestation_failed(kms):
    def broken(_spki):
        raise OSError("no device")

    with pytest.raises(KmsError) as info:
        AttestedKms(kms.client(ROLE_KEYS), attest=broken).generate_random(8)
    assert info.value.code == "attestation-failed"


class _FakeKms(BaseHTTPRequestHandler):
    """A KMS-shaped server answering every call with `answer` (a JSON object)."""

    answer: dict = {}
    status = 200

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        out = json.dumps(self.answer).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_kms():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKms)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "answer", "code"),
    [
        (200, {"Plaintext": "c2VjcmV0"}, "kms-recipient-ignored"),
        (200, {"CiphertextForRecipient": "MIAGCSqGSIb3DQEHA6CAMIACAQI="}, "kms-bad-response"),
        (200, {}, "kms-bad-response"),
        (400, {"__type": "DisabledException", "message": "key disabled"}, "kms-key-disabled"),
        (400, {"__type": "KMSInvalidStateException", "message": "pending"}, "kms-invalid-state"),
        (400, {"__type": "UnrecognizedClientException", "message": "?"}, "kms-bad-credentials"),
        (400, {"__type": "SomethingNewException", "message": "?"}, "kms-error"),
    ],
)
def test_responses_map_to_stable_codes(fake_kms, nsm, status, answer, code):
    _FakeKms.answer, _FakeKms.status = answer, status
    client = boto3.client(
        "kms", endpoint_url=f"http://127.0.0.1:{fake_kms.server_address[1]}",
        region_name="us-east-1", config=boto3.session.Config(retries={"max_attempts": 1}),
        **ROLE_KEYS,
    )
    with pytest.raises(KmsError) as info:
        AttestedKms(client, nsm=NsmClient(transport=nsm.handle)).decrypt(b"x" * 10)
    assert info.value.code == code
    assert "secret" not in str(info.value)


def test_recipient_key_is_rsa_2048_oaep_ready(attested):
    key = attested.keyring.current()
    public = serialization.load_der_public_key(key.public_key_der)
    assert public.key_size == 2048 and public.public_numbers().e == 65537
    wrapped = public.encrypt(b"k" * 32, padding.OAEP(padding.MGF1(hashes.SHA256()),
                                                     hashes.SHA256(), None))
    assert key.private_key.decrypt(
        wrapped, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    ) == b"k" * 32
    assert "private" not in repr(key).lower() or "bytes" in repr(key)
