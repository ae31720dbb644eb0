"""Policy: construction refuses empty or contradictory checks; each claim check reports."""

from __future__ import annotations

from datetime import timedelta

import pytest
from attestation_helpers import NOW, PCRS, sign

from attestation import (
    DebugEnclaveError,
    NonceMismatchError,
    PcrMismatchError,
    Policy,
    PolicyError,
    PublicKeyMismatchError,
    StaleError,
    TestPKI,
    UserDataMismatchError,
    parse_document,
)
from attestation.policy import (
    AnyOfPcrs,
    Fresh,
    NonceMatches,
    NotDebug,
    PcrsMatch,
    PublicKeyMatches,
    UserDataMatches,
)

PCR0 = PCRS[0]


@pytest.fixture(scope="module")
def doc(pki: TestPKI):
    ts = int(NOW.timestamp() * 1000)
    return parse_document(
        sign(pki, nonce=b"nonce", user_data=b"", public_key=b"key", timestamp_ms=ts)
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pcrs": {}},
        {"any_of": []},
        {"any_of": [{}]},
        {"any_of": [{0: PCR0}, {}]},
        {"any_of": {0: PCR0}},
        {"any_of": "00"},
        {"pcrs": {32: PCR0}},
        {"pcrs": {-1: PCR0}},
        {"pcrs": {"0": PCR0}},
        {"pcrs": {True: PCR0}},
        {"pcrs": {0: "zz" * 48}},
        {"pcrs": {0: b"\x00" * 47}},
        {"pcrs": {0: 5}},
        {"pcrs": [PCR0]},
        {"image_sha384": b"\x00" * 32},
        {"image_sha384": "not hex"},
        {"image_sha384": PCR0, "pcrs": {0: PCRS[1]}},
        {"nonce": "6e6f6e6365"},
        {"user_data": 5},
        {"public_key": ["k"]},
        {"max_age": timedelta(0)},
        {"max_age": timedelta(seconds=-1)},
        {"max_age": 60},
        {"max_skew": timedelta(seconds=-1)},
        {"max_skew": 1.0},
        {"allow_debug": "yes"},
    ],
)
def test_unusable_policies_are_refused_at_construction(kwargs: dict) -> None:
    with pytest.raises(PolicyError) as err:
        Policy(**kwargs)
    assert err.value.code == "invalid-policy"


def test_pcrs_accept_hex_and_bytes_and_any_subset(doc) -> None:
    at = doc.datetime
    Policy(pcrs={0: PCR0.hex()}).check(doc, at)
    Policy(pcrs={0: "0x" + PCR0.hex().upper()}).check(doc, at)
    Policy(pcrs={7: PCRS[7], 15: bytearray(PCRS[15])}).check(doc, at)
    Policy(pcrs=dict(PCRS)).check(doc, at)
    with pytest.raises(PcrMismatchError) as err:
        Policy(pcrs={7: PCRS[7], 9: PCRS[8], 20: PCRS[8]}).check(doc, at)
    assert err.value.expected == {9: PCRS[8].hex(), 20: PCRS[8].hex()}
    assert err.value.found == {9: PCRS[9].hex(), 20: None}
    assert "PCR9" in err.value.message and "PCR20" in err.value.message


def test_image_sha384_is_pcr0(doc) -> None:
    at = doc.datetime
    Policy(image_sha384=PCR0).check(doc, at)
    Policy(image_sha384=PCR0.hex(), pcrs={0: PCR0, 1: PCRS[1]}).check(doc, at)
    with pytest.raises(PcrMismatchError) as err:
        Policy(image_sha384=PCRS[1]).check(doc, at)
    assert list(err.value.expected) == [0]


def test_any_of_accepts_one_matching_set(doc) -> None:
    at = doc.datetime
    old = {0: "11" * 48, 1: PCRS[1]}
    new = {0: PCR0, 1: PCRS[1]}
    Policy(any_of=[old, new]).check(doc, at)
    Policy(any_of=[new]).check(doc, at)
    with pytest.raises(PcrMismatchError) as err:
        Policy(any_of=[old, {2: "22" * 48}]).check(doc, at)
    assert len(err.value.expected) == 2
    assert set(err.value.found) == {0, 1, 2}
    # any_of and pcrs both apply
    with pytest.raises(PcrMismatchError):
        Policy(any_of=[new], pcrs={3: "33" * 48}).check(doc, at)


@pytest.mark.parametrize(
    ("field", "error"),
    [
        ("nonce", NonceMismatchError),
        ("user_data", UserDataMismatchError),
        ("public_key", PublicKeyMismatchError),
    ],
)
def test_bound_fields(doc, field: str, error: type) -> None:
    at = doc.datetime
    Policy(**{field: getattr(doc, field)}).check(doc, at)
    with pytest.raises(error) as err:
        Policy(**{field: b"something else"}).check(doc, at)
    assert err.value.expected == b"something else".hex()
    assert err.value.found == getattr(doc, field).hex()


def test_empty_bytes_is_not_absent(doc) -> None:
    at = doc.datetime
    Policy(user_data=b"").check(doc, at)  # present and empty
    absent = doc.__class__(**{**_fields(doc), "user_data": None})
    with pytest.raises(UserDataMismatchError) as err:
        Policy(user_data=b"").check(absent, at)
    assert "absent" in err.value.message


def _fields(doc) -> dict:
    return {name: getattr(doc, name) for name in doc.__dataclass_fields__}


def test_freshness(doc) -> None:
    t = doc.datetime
    p = Policy(max_age=timedelta(minutes=5))
    p.check(doc, t)
    p.check(doc, t + timedelta(minutes=5))
    with pytest.raises(StaleError) as err:
        p.check(doc, t + timedelta(minutes=5, milliseconds=1))
    assert "old" in err.value.message and err.value.expected == "<= 300 s"
    p.check(doc, t - timedelta(seconds=60))  # default skew: 60 s in the future is fine
    with pytest.raises(StaleError) as err:
        p.check(doc, t - timedelta(seconds=61))
    assert "future" in err.value.message
    Policy(max_skew=timedelta(0)).check(doc, t)


def test_debug_refused_by_default(doc) -> None:
    debug = doc.__class__(**{**_fields(doc), "pcrs": {**doc.pcrs, 0: bytes(48)}})
    with pytest.raises(DebugEnclaveError) as err:
        Policy().check(debug, doc.datetime)
    assert err.value.found == "00" * 48
    Policy(allow_debug=True).check(debug, doc.datetime)
    assert Policy(allow_debug=True).allows_debug and not Policy().allows_debug


def test_one_check_class_per_claim() -> None:
    p = Policy(
        pcrs={1: PCRS[1]},
        any_of=[{0: PCR0}],
        nonce=b"n",
        user_data=b"u",
        public_key=b"k",
        max_age=timedelta(seconds=9),
    )
    kinds = [type(c) for c in p.checks]
    assert kinds == [
        NotDebug,
        Fresh,
        PcrsMatch,
        AnyOfPcrs,
        NonceMatches,
        UserDataMatches,
        PublicKeyMatches,
    ]
    assert "nonce" in repr(p) and "pcrs=1" in repr(p)
    assert [type(c) for c in Policy(allow_debug=True).checks] == [Fresh]


def test_policy_is_a_frozen_dataclass_that_replace_derives_from(doc) -> None:
    import dataclasses

    base = Policy(pcrs={0: PCR0.hex() if isinstance(PCR0, bytes) else PCR0}, allow_debug=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.nonce = b"x"  # type: ignore[misc]
    derived = dataclasses.replace(base, nonce=b"nonce", max_age=timedelta(days=3650))
    assert derived.nonce == b"nonce" and derived.pcrs == base.pcrs and base.nonce is None
    derived.check(doc, NOW)  # the derived policy is checked like a new one
    with pytest.raises(NonceMismatchError):
        dataclasses.replace(base, nonce=b"other").check(doc, NOW)
    with pytest.raises(PolicyError):  # replace validates like the constructor
        dataclasses.replace(base, max_age=timedelta(0))
