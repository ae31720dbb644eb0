"""Issue 9 items 1 and 2 on the e2e codec: hostile CBOR is refused in linear time (no
hash-collision blow-up, no tags), and the replay guard cannot lock honest clients out."""

from __future__ import annotations

import os
import time

import cbor2
import pytest
from cryptography.hazmat.primitives import hpke
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.e2e import E2EError, ReplyOpener, seal_request
from enclave import e2e
from enclave.e2e import E2ELimits, EnclaveE2EKey

NONCE = b"n" * 32
MIB = 1 << 20
FAST_S = 0.5  # "well under a second", generous for a loaded 2-core machine
_P61 = 2**61 - 1  # Python hashes an int n as n mod (2**61 - 1): these keys all collide


def colliding_int_map(size: int) -> bytes:
    """A CBOR map of about ``size`` bytes whose big-integer keys all hash alike (bignum tags)."""
    entries = []
    total = 0
    k = 1
    while total < size - 64:
        key = cbor2.dumps(7 + k * _P61 * 2**64)  # > 2**64: a tag-2 bignum
        entries.append(key + b"\x00")
        total += len(key) + 1
        k += 1
    count = len(entries)
    head = b"\xba" + count.to_bytes(4, "big")  # map with a 4-byte count
    return head + b"".join(entries)


def test_adversarial_map_is_what_the_review_used() -> None:
    body = colliding_int_map(MIB - 64)
    assert MIB // 2 < len(body) <= MIB
    assert body[5:8] == b"\xc2\x51\x00"[:1] + body[6:8]  # starts with a tag-2 bignum key
    assert len({hash(7 + k * _P61 * 2**64) for k in range(1, 50)}) == 1


def _hpke_seal(key: EnclaveE2EKey, plaintext: bytes) -> bytes:
    """A sealed request whose *inner* plaintext is attacker-chosen (the HPKE key is public)."""
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    ct = suite.encrypt(
        plaintext, e2e.load_public_key(key.public_key_der),
        info=e2e.request_info(key.public_key_der, NONCE),
    )
    return cbor2.dumps({"v": 1, "nonce": NONCE, "ct": ct})


def _refused_fast(fn, data: bytes) -> E2EError:
    start = time.perf_counter()
    with pytest.raises(E2EError) as info:
        fn(data)
    elapsed = time.perf_counter() - start
    assert elapsed < FAST_S, f"refusing took {elapsed:.2f} s"
    assert info.value.code == "e2e-malformed"
    return info.value


def test_colliding_big_int_keys_are_refused_fast_everywhere() -> None:
    key = EnclaveE2EKey()
    body = colliding_int_map(MIB - 1024)
    _refused_fast(key.open_request, body)  # the sealed envelope itself
    inner = colliding_int_map(MIB - 4096)
    _refused_fast(key.open_request, _hpke_seal(key, inner))  # the plaintext inside
    opener = ReplyOpener(os.urandom(32), os.urandom(16))
    _refused_fast(opener.open, body)  # a client reading a reply before authenticating it


@pytest.mark.parametrize(
    "value",
    [
        cbor2.CBORTag(2, b"\x01" * 9),  # bignum
        cbor2.CBORTag(28, [1]),  # shareable
        cbor2.CBORTag(1, 0),  # epoch date
        {1.5: 1},  # float key
        {(1, 2): 1},  # array key
    ],
)
def test_tags_and_odd_keys_are_refused_before_authentication(value) -> None:
    key = EnclaveE2EKey()
    envelope = cbor2.dumps({"v": 1, "nonce": NONCE, "ct": value})
    with pytest.raises(E2EError) as info:
        key.open_request(envelope)
    assert info.value.code == "e2e-malformed"
    with pytest.raises(E2EError) as info:
        ReplyOpener(os.urandom(32), os.urandom(16)).open(envelope)
    assert info.value.code == "e2e-malformed"


def test_deep_and_wide_plaintexts_are_refused() -> None:
    key = EnclaveE2EKey()
    deep: object = 0
    for _ in range(200):
        deep = [deep]
    wide = [0] * 200_000
    for body in (deep, wide):
        plain = cbor2.dumps({"op": "x", "body": body, "rk": b"k" * 32, "id": b"i" * 16, "ts": 1})
        _refused_fast(key.open_request, _hpke_seal(key, plain))


# ---------------------------------------------------------------- item 2: replay guard


def _skew_s(key: EnclaveE2EKey) -> float:
    return getattr(key.limits, "max_future_skew_s", 5.0)


def _open(key: EnclaveE2EKey, ts_ms: int) -> str:
    sealed, _ = seal_request(key.public_key_der, NONCE, "x", now_ms=ts_ms)
    try:
        key.open_request(sealed)
    except E2EError as exc:
        return exc.code
    return "ok"


def test_future_skew_is_a_few_seconds() -> None:
    now = 1_700_000_000.0
    key = EnclaveE2EKey(clock=lambda: now)
    skew_ms = int(_skew_s(key) * 1000)
    assert _skew_s(key) <= 10
    assert _open(key, int(now * 1000) + skew_ms) == "ok"
    assert _open(key, int(now * 1000) + skew_ms + 1) == "e2e-stale"
    assert _open(key, int(now * 1000) + 299_000) == "e2e-stale"


@pytest.mark.parametrize("forged_offset_s", [299, 60, 5])
def test_the_review_lockout_no_longer_locks_honest_clients_out(forged_offset_s) -> None:
    """Fill the guard with future-dated forgeries (anyone can seal: the key is public);
    an honest request a moment later must still be accepted."""
    capacity = 64
    now = [1_700_000_000.0]
    key = EnclaveE2EKey(limits=E2ELimits(replay_cache_entries=capacity), clock=lambda: now[0])
    for i in range(capacity * 3):
        _open(key, int((now[0] + forged_offset_s) * 1000) - i)
    assert len(key._guard) <= capacity
    now[0] += _skew_s(key) + 1.0  # the forger stopped
    for i in range(capacity * 2):  # every honest client, one after another, all accepted
        assert _open(key, int(now[0] * 1000) + i) == "ok"
        now[0] += 0.001


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    forged=st.lists(st.integers(min_value=-400_000, max_value=400_000), max_size=60),
    gap_ms=st.integers(min_value=0, max_value=20_000),
)
def test_property_honest_requests_after_any_burst_are_accepted(forged, gap_ms) -> None:
    capacity = 16
    now = [1_700_000_000.0]
    key = EnclaveE2EKey(limits=E2ELimits(replay_cache_entries=capacity), clock=lambda: now[0])
    replays = []
    for offset in forged:
        sealed, _ = seal_request(key.public_key_der, NONCE, "x", now_ms=int(now[0] * 1000) + offset)
        try:
            key.open_request(sealed)
            replays.append(sealed)
        except E2EError:
            pass
        assert len(key._guard) <= capacity
    now[0] += _skew_s(key) + 0.001 + gap_ms / 1000
    assert _open(key, int(now[0] * 1000)) == "ok"
    for sealed in replays:  # and no accepted request can ever be replayed
        with pytest.raises(E2EError) as info:
            key.open_request(sealed)
        assert info.value.code in ("e2e-replay", "e2e-stale")
