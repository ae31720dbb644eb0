"""End-to-end (HPKE) codec: both sides, tampering, replay, and garbage never crashes."""

from __future__ import annotations

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.e2e import E2EError, ReplyOpener, seal_request
from enclave import e2e
from enclave.e2e import E2ELimits, EnclaveE2EKey

NONCE = b"n" * 32


def test_round_trip_request_and_reply() -> None:
    key = EnclaveE2EKey()
    sealed, opener = seal_request(key.public_key_der, NONCE, "sign", {"m": b"\x00\xff"})
    opened = key.open_request(sealed)
    assert (opened.op, opened.body, opened.nonce) == ("sign", {"m": b"\x00\xff"}, NONCE)
    assert opener.open(opened.seal_result({"sig": b"s"})) == {"ok": True, "result": {"sig": b"s"}}
    assert opener.open(opened.seal_error("no-such-secret", "x", "not-found")) == {
        "ok": False,
        "error": {"code": "no-such-secret", "kind": "not-found", "message": "x"},
    }


def test_the_plaintext_is_not_in_the_sealed_bytes() -> None:
    key = EnclaveE2EKey()
    marker = b"very-secret-marker-0123456789"
    sealed, opener = seal_request(key.public_key_der, NONCE, "sign", {"m": marker})
    assert marker not in sealed
    reply = key.open_request(sealed).seal_result({"echo": marker})
    assert marker not in reply
    assert opener.open(reply)["result"]["echo"] == marker


def test_public_key_is_x25519_spki() -> None:
    key = EnclaveE2EKey()
    loaded = serialization.load_der_public_key(key.public_key_der)
    assert isinstance(loaded, x25519.X25519PublicKey)


def test_a_request_sealed_to_another_enclave_is_refused() -> None:
    sealed, _ = seal_request(EnclaveE2EKey().public_key_der, NONCE, "sign")
    with pytest.raises(E2EError) as info:
        EnclaveE2EKey().open_request(sealed)
    assert info.value.code == "e2e-decrypt-failed"


def test_the_nonce_is_bound_as_hpke_info() -> None:
    key = EnclaveE2EKey()
    sealed, _ = seal_request(key.public_key_der, NONCE, "sign")
    envelope = cbor2.loads(sealed)
    envelope["nonce"] = b"m" * 32  # the parent swaps the session nonce
    with pytest.raises(E2EError) as info:
        key.open_request(cbor2.dumps(envelope))
    assert info.value.code == "e2e-decrypt-failed"


@pytest.mark.parametrize("position", [0, 10, -1])
def test_tampered_ciphertext_is_refused(position: int) -> None:
    key = EnclaveE2EKey()
    sealed, _ = seal_request(key.public_key_der, NONCE, "sign")
    envelope = cbor2.loads(sealed)
    ct = bytearray(envelope["ct"])
    ct[position] ^= 1
    envelope["ct"] = bytes(ct)
    with pytest.raises(E2EError) as info:
        key.open_request(cbor2.dumps(envelope))
    assert info.value.code == "e2e-decrypt-failed"


def test_replayed_request_is_refused() -> None:
    key = EnclaveE2EKey()
    sealed, _ = seal_request(key.public_key_der, NONCE, "sign")
    key.open_request(sealed)
    with pytest.raises(E2EError) as info:
        key.open_request(sealed)
    assert info.value.code == "e2e-replay"


def test_stale_request_is_refused() -> None:
    now = 1_700_000_000.0
    key = EnclaveE2EKey(limits=E2ELimits(replay_window_s=60), clock=lambda: now)
    old, _ = seal_request(key.public_key_der, NONCE, "sign", now_ms=int((now - 61) * 1000))
    future, _ = seal_request(key.public_key_der, NONCE, "sign", now_ms=int((now + 61) * 1000))
    for sealed in (old, future):
        with pytest.raises(E2EError) as info:
            key.open_request(sealed)
        assert info.value.code == "e2e-stale"


def test_replay_guard_is_bounded_and_never_reopens_a_replay() -> None:
    now = [1_700_000_000.0]
    key = EnclaveE2EKey(
        limits=E2ELimits(replay_window_s=300, replay_cache_entries=4), clock=lambda: now[0]
    )
    sealed = []
    for i in range(10):
        s, _ = seal_request(key.public_key_der, NONCE, "x", now_ms=int(now[0] * 1000) + i)
        key.open_request(s)
        sealed.append(s)
    assert len(key._guard) <= 4
    for s in sealed:  # evicted or remembered: every one is refused
        with pytest.raises(E2EError) as info:
            key.open_request(s)
        assert info.value.code in ("e2e-replay", "e2e-stale")


def test_reply_for_another_request_is_refused() -> None:
    key = EnclaveE2EKey()
    s1, o1 = seal_request(key.public_key_der, NONCE, "a")
    s2, o2 = seal_request(key.public_key_der, NONCE, "b")
    reply2 = key.open_request(s2).seal_result(2)
    key.open_request(s1)
    with pytest.raises(E2EError) as info:
        o1.open(reply2)
    assert info.value.code == "e2e-decrypt-failed"
    # same key, wrong request id: the id is bound as AAD
    with pytest.raises(E2EError):
        ReplyOpener(o2.response_key, o1.request_id).open(reply2)


def test_client_refuses_a_non_x25519_key() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = p256.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for bad in (der, b"not a key"):
        with pytest.raises(E2EError) as info:
            seal_request(bad, NONCE, "x")
        assert info.value.code == "e2e-bad-key"


def test_client_checks_nonce_and_op() -> None:
    key = EnclaveE2EKey()
    with pytest.raises(E2EError):
        seal_request(key.public_key_der, b"", "x")
    with pytest.raises(E2EError):
        seal_request(key.public_key_der, b"n" * (e2e.MAX_NONCE_LEN + 1), "x")
    with pytest.raises(E2EError):
        seal_request(key.public_key_der, NONCE, "")


def test_oversized_sealed_request_is_refused_before_decrypting() -> None:
    key = EnclaveE2EKey(limits=E2ELimits(max_sealed_len=100))
    sealed, _ = seal_request(key.public_key_der, NONCE, "x", {"pad": b"p" * 200})
    with pytest.raises(E2EError) as info:
        key.open_request(sealed)
    assert info.value.code == "e2e-too-large"


_KEY = EnclaveE2EKey()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_garbage_sealed_request_gives_a_typed_error(data: bytes) -> None:
    with pytest.raises(E2EError) as info:
        _KEY.open_request(data)
    assert info.value.code.startswith("e2e-")


_cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)  # wider integers are tag-2 bignums: tags are refused
    | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(_cbor_values)
def test_structured_garbage_envelopes_give_typed_errors(value: object) -> None:
    for candidate in (value, {"v": 1, "nonce": b"n", "ct": cbor2.dumps(value)}):
        with pytest.raises(E2EError):
            _KEY.open_request(cbor2.dumps(candidate))
        with pytest.raises(E2EError):
            ReplyOpener(b"k" * 32, b"i" * 16).open(cbor2.dumps(candidate))


@settings(max_examples=60, deadline=None)
@given(
    op=st.text(min_size=1, max_size=30),
    body=_cbor_values,
    nonce=st.binary(min_size=1, max_size=64),
)
def test_any_request_round_trips(op: str, body: object, nonce: bytes) -> None:
    key = EnclaveE2EKey()
    sealed, opener = seal_request(key.public_key_der, nonce, op, body)
    opened = key.open_request(sealed)
    assert (opened.op, opened.body, opened.nonce) == (op, body, nonce)
    assert opener.open(opened.seal_result(body)) == {"ok": True, "result": body}
