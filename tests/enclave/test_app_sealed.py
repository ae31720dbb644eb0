"""Sealed secrets: the store (kinds, limits, no way to read a secret back) and the default
app's operations against the local KMS (real HTTP, SigV4, key policy naming the PCRs of a
simulated NSM measuring the real enclave/ code) through real attested KMS."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from _servers.local_kms import LocalKms
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import TestPKI
from enclave.app import default_app
from enclave.kms import AttestedKms
from enclave.nsm import NsmClient
from enclave.protocol import ProtocolClient, RemoteError
from enclave.sealed import SealedError, SealedLimits, SealedStore
from enclave.transport import VMADDR_CID_ANY, VsockAddress
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
pytestmark = pytest.mark.timeout(90)


def p256_pkcs8() -> tuple[bytes, ec.EllipticCurvePublicKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return der, key.public_key()


# ---------------------------------------------------------------- the store


def test_store_signs_with_p256_in_both_formats() -> None:
    der, public = p256_pkcs8()
    store = SealedStore()
    info = store.put("k1", "ec-p256", der)
    assert serialization.load_der_public_key(info.public_key) == public
    public.verify(store.sign("k1", b"m"), b"m", ec.ECDSA(hashes.SHA256()))
    raw = store.sign("k1", b"m", signature_format="raw")
    assert len(raw) == 64
    public.verify(
        encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")),
        b"m", ec.ECDSA(hashes.SHA256()),
    )


def test_store_accepts_raw_keys_and_ed25519() -> None:
    store = SealedStore()
    scalar = (12345).to_bytes(32, "big")
    info = store.put("raw", "ec-p256", scalar)
    expected = ec.derive_private_key(12345, ec.SECP256R1()).public_key()
    assert serialization.load_der_public_key(info.public_key) == expected
    seed = os.urandom(32)
    info = store.put("ed", "ed25519", seed)
    pub = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
    pub.verify(store.sign("ed", b"msg"), b"msg")


def test_store_hmac_and_wrong_kinds() -> None:
    store = SealedStore()
    store.put("mac", "hmac", b"k" * 32)
    assert store.hmac_sha256("mac", b"m") == hmac.new(b"k" * 32, b"m", hashlib.sha256).digest()
    with pytest.raises(SealedError) as info:
        store.sign("mac", b"m")
    assert info.value.code == "wrong-kind"
    store.put("sig", "ed25519", os.urandom(32))
    with pytest.raises(SealedError) as info:
        store.hmac_sha256("sig", b"m")
    assert info.value.code == "wrong-kind"


@pytest.mark.parametrize(
    ("name", "kind", "material", "code"),
    [
        ("bad name!", "hmac", b"k" * 32, "bad-name"),
        ("ok", "rsa", b"k" * 32, "bad-kind"),
        ("ok", "hmac", b"short", "bad-secret"),
        ("ok", "ec-p256", b"\x00" * 32, "bad-secret"),  # scalar 0 is not a key
        ("ok", "ec-p256", b"not DER at all, and too long for raw", "bad-secret"),
        ("ok", "ed25519", p256_pkcs8()[0], "bad-secret"),  # a P-256 key is not Ed25519
        ("ok", "hmac", b"", "bad-secret"),
    ],
)
def test_store_refuses_bad_input(name: str, kind: str, material: bytes, code: str) -> None:
    with pytest.raises(SealedError) as info:
        SealedStore().put(name, kind, material)
    assert info.value.code == code


def test_store_is_bounded_and_hides_secrets() -> None:
    store = SealedStore(SealedLimits(max_secrets=2, max_message_len=10))
    store.put("a", "hmac", b"A" * 32)
    store.put("b", "hmac", b"B" * 32)
    store.put("a", "hmac", b"C" * 32)  # replacing is fine
    with pytest.raises(SealedError) as info:
        store.put("c", "hmac", b"D" * 32)
    assert info.value.code == "store-full"
    with pytest.raises(SealedError) as info:
        store.hmac_sha256("a", b"x" * 11)
    assert info.value.code == "bad-request"
    with pytest.raises(SealedError) as info:
        store.sign("missing", b"x")
    assert info.value.code == "no-such-secret"
    assert b"C" * 32 not in repr(store._secrets).encode()
    assert all(k in ("name", "kind", "public_key") for k in store.info("a").to_dict())
    assert store.delete("a") and not store.delete("a")


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(["ec-p256", "ed25519", "hmac"]), material=st.binary(max_size=200))
def test_store_put_never_raises_untyped(kind: str, material: bytes) -> None:
    try:
        SealedStore().put("x", kind, material)
    except SealedError as exc:
        assert exc.code in ("bad-secret",)


# ---------------------------------------------------------------- operations over real KMS


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.generate()


@pytest.fixture(scope="module")
def kms(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI):
    local = LocalKms(tmp_path_factory.mktemp("kms"), pki)
    yield local
    local.close()


@pytest.fixture(scope="module")
def nsm(pki: TestPKI) -> SimulatedNsm:
    return SimulatedNsm.for_enclave(pki, ENCLAVE_DIR)


@pytest.fixture(scope="module")
def key_id(kms: LocalKms, nsm: SimulatedNsm) -> str:
    policy = key_policy(pcrs={0: nsm.pcrs[0], 1: nsm.pcrs[1], 2: nsm.pcrs[2]},
                        enclave_role=ROLE, admin=OPERATOR)
    operator = kms.client(OPERATOR_KEYS)
    return operator.create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]


def call_app(
    kms: LocalKms, nsm: SimulatedNsm, requests: list[tuple[str, Any]], **app_kwargs: Any
) -> list[Any]:
    """Run the default app (attested KMS to ``kms``) and send ``requests`` in order; each
    answer is the reply body or the RemoteError."""
    attested = AttestedKms(kms.client(ROLE_KEYS), nsm=NsmClient(transport=nsm.handle))
    app = default_app(nsm=NsmClient(transport=nsm.handle), kms=attested, **app_kwargs)

    async def go() -> list[Any]:
        with tempfile.TemporaryDirectory(prefix="sealed-") as d:
            server = await app.serve(VsockAddress(VMADDR_CID_ANY, 5000), sim_dir=d, sim_cid=16)
            client = await ProtocolClient.connect(VsockAddress(16, 5000), sim_dir=d, deadline=5)
            out: list[Any] = []
            try:
                for op, body in requests:
                    try:
                        out.append(await client.request(op, body, timeout=30))
                    except RemoteError as exc:
                        out.append(exc)
            finally:
                await client.close()
                server.close()
                await server.wait_closed()
                app.close()
            return out

    return asyncio.run(go())


def test_seal_load_sign_hmac_public_key(kms: LocalKms, nsm: SimulatedNsm, key_id: str) -> None:
    operator = kms.client(OPERATOR_KEYS)
    der, public = p256_pkcs8()
    ctx = {"purpose": "test"}
    blob = operator.encrypt(KeyId=key_id, Plaintext=der, EncryptionContext=ctx)["CiphertextBlob"]
    mac_key = os.urandom(32)
    mac_blob = operator.encrypt(KeyId=key_id, Plaintext=mac_key)["CiphertextBlob"]
    loaded, wrong_ctx, mac_loaded, sig, mac, pub, listed, no_plain = call_app(kms, nsm, [
        ("seal-load", {"name": "s", "kind": "ec-p256", "ciphertext": blob,
                       "encryption_context": ctx}),
        ("seal-load", {"name": "t", "kind": "ec-p256", "ciphertext": blob,
                       "encryption_context": {"purpose": "other"}}),
        ("seal-load", {"name": "m", "kind": "hmac", "ciphertext": mac_blob}),
        ("sign", {"name": "s", "message": b"hello"}),
        ("hmac", {"name": "m", "message": b"hello"}),
        ("public-key", {"name": "s"}),
        ("seal-list", {}),
        ("seal-load", {"name": "x", "kind": "ec-p256", "ciphertext": b"\x01" * 50}),
    ])
    assert loaded == {"name": "s", "kind": "ec-p256", "public_key": pub["public_key"]}
    assert serialization.load_der_public_key(pub["public_key"]) == public
    assert isinstance(wrong_ctx, RemoteError) and wrong_ctx.code.startswith("kms-")
    assert mac_loaded["public_key"] is None
    public.verify(sig["signature"], b"hello", ec.ECDSA(hashes.SHA256()))
    assert mac["mac"] == hmac.new(mac_key, b"hello", hashlib.sha256).digest()
    assert sorted(s["name"] for s in listed["secrets"]) == ["m", "s"]
    assert isinstance(no_plain, RemoteError) and no_plain.code.startswith("kms-")
    answers = repr([loaded, mac_loaded, sig, mac, pub, listed]).encode()
    assert der.hex().encode() not in answers and mac_key.hex().encode() not in answers


def test_envelope_decrypt_returns_nothing_derived_from_the_plaintext(
    kms: LocalKms, nsm: SimulatedNsm, key_id: str
) -> None:
    operator = kms.client(OPERATOR_KEYS)
    data_key = AESGCM.generate_key(bit_length=256)
    plaintext = b"confidential records " * 20
    iv = os.urandom(12)
    ct = AESGCM(data_key).encrypt(iv, plaintext, b"aad")
    encrypted_key = operator.encrypt(KeyId=key_id, Plaintext=data_key)["CiphertextBlob"]
    tampered = bytearray(ct)
    tampered[0] ^= 1
    base = {"encrypted_key": encrypted_key, "iv": iv, "ciphertext": ct, "aad": b"aad"}
    good, bad_aad, bad_ct, bad_result, digest, mac_in_clear = call_app(kms, nsm, [
        ("envelope-decrypt", base),
        ("envelope-decrypt", {**base, "aad": None}),
        ("envelope-decrypt", {**base, "ciphertext": bytes(tampered)}),
        ("envelope-decrypt", {**base, "result": "plaintext"}),
        ("envelope-decrypt", {**base, "result": "sha256"}),
        ("envelope-decrypt", {**base, "result": "hmac-sha256", "mac_key": b"k" * 32}),
    ])
    assert good == {"verified": True, "length": len(plaintext)}
    assert bad_aad.code == "envelope-auth-failed" and bad_ct.code == "envelope-auth-failed"
    assert bad_result.code == "bad-request" and digest.code == "bad-request"
    assert mac_in_clear.code == "bad-request"  # a MAC only inside an end-to-end request


def _sealed_envelope_calls(
    kms: LocalKms, nsm: SimulatedNsm, bodies: list[dict]
) -> tuple[list[bytes], list[Any]]:
    """Send each body as a sealed envelope-decrypt; returns what the parent sees (the sealed
    replies) and what the client opens."""
    from attestation.e2e import seal_request
    from enclave.e2e import EnclaveE2EKey

    e2e_key = EnclaveE2EKey()
    sealed, openers = [], []
    for body in bodies:
        request, opener = seal_request(e2e_key.public_key_der, b"n" * 32, "envelope-decrypt", body)
        sealed.append(("e2e", {"sealed": request}))
        openers.append(opener)
    answers = call_app(kms, nsm, sealed, e2e_key=e2e_key)
    seen = [a["sealed"] for a in answers]
    return seen, [o.open(r) for o, r in zip(openers, seen, strict=True)]


def test_a_short_pin_cannot_be_brute_forced_from_what_the_parent_sees(
    kms: LocalKms, nsm: SimulatedNsm, key_id: str
) -> None:
    """Issue 9 item 6: the parent recovered an 8-digit PIN from the unkeyed SHA-256 result.
    Now, for every route it can see, its view is the same whatever the PIN (same length)."""
    operator = kms.client(OPERATOR_KEYS)
    pins = [b"12345678", b"87654321"]
    bodies = []
    for pin in pins:
        data_key = AESGCM.generate_key(bit_length=256)
        iv = os.urandom(12)
        bodies.append({
            "encrypted_key": operator.encrypt(KeyId=key_id, Plaintext=data_key)["CiphertextBlob"],
            "iv": iv, "ciphertext": AESGCM(data_key).encrypt(iv, pin, None),
        })
    plain = call_app(kms, nsm, [("envelope-decrypt", b) for b in bodies])
    assert plain[0] == plain[1]  # the plain route: identical for both PINs
    candidates = [f"{n:08d}".encode() for n in range(0, 100_000_000, 9_973)] + pins
    views = repr(plain).encode()
    for guess in candidates:  # nothing a guess can be checked against
        for derived in (hashlib.sha256(guess).digest(), hashlib.sha1(guess).digest(), guess):
            assert derived not in views
    mac_key = os.urandom(32)
    seen, opened = _sealed_envelope_calls(
        kms, nsm, [{**b, "result": "hmac-sha256", "mac_key": mac_key} for b in bodies]
    )
    for pin, reply in zip(pins, opened, strict=True):  # the client gets a MAC it can check
        assert reply["ok"] and reply["result"]["mac"] == hmac.new(mac_key, pin, "sha256").digest()
    for guess in candidates:  # the parent sees sealed bytes only; no key, nothing to test
        for derived in (hashlib.sha256(guess).digest(), guess):
            assert all(derived not in s for s in seen)


def test_the_parent_cannot_decrypt_what_the_enclave_can(kms: LocalKms, key_id: str) -> None:
    operator = kms.client(OPERATOR_KEYS)
    blob = operator.encrypt(KeyId=key_id, Plaintext=b"k" * 32)["CiphertextBlob"]
    with pytest.raises(Exception) as info:
        kms.client(ROLE_KEYS).decrypt(CiphertextBlob=blob)
    assert "AccessDenied" in str(info.value)


@pytest.mark.parametrize(
    ("op", "body"),
    [
        ("seal-load", {"name": "a", "kind": "ec-p256"}),
        ("seal-load", {"name": "a", "kind": "rsa", "ciphertext": b"x"}),
        ("seal-load", {"name": "a", "kind": "hmac", "ciphertext": b"x", "extra": 1}),
        ("sign", {"name": "a", "message": "not bytes"}),
        ("sign", {"name": "a", "message": b"m", "format": "pem"}),
        ("hmac", []),
        ("envelope-decrypt", {"encrypted_key": b"k", "iv": b"short", "ciphertext": b"c" * 16}),
        ("public-key", {"name": 5}),
    ],
)
def test_bad_bodies_are_refused_before_any_kms_call(
    kms: LocalKms, nsm: SimulatedNsm, op: str, body: Any
) -> None:
    (answer,) = call_app(kms, nsm, [(op, body)])
    assert isinstance(answer, RemoteError)
    assert answer.code in ("bad-request", "bad-kind")


def test_signing_with_an_unknown_secret(kms: LocalKms, nsm: SimulatedNsm) -> None:
    (answer,) = call_app(kms, nsm, [("sign", {"name": "nothing", "message": b"m"})])
    assert answer.code == "no-such-secret"


def test_signature_does_not_verify_for_another_message(kms: LocalKms, nsm: SimulatedNsm,
                                                       key_id: str) -> None:
    der, public = p256_pkcs8()
    blob = kms.client(OPERATOR_KEYS).encrypt(KeyId=key_id, Plaintext=der)["CiphertextBlob"]
    _, sig = call_app(kms, nsm, [
        ("seal-load", {"name": "s", "kind": "ec-p256", "ciphertext": blob}),
        ("sign", {"name": "s", "message": b"one"}),
    ])
    with pytest.raises(InvalidSignature):
        public.verify(sig["signature"], b"two", ec.ECDSA(hashes.SHA256()))
