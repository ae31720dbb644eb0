"""Hypothesis: nothing but AttestationError escapes, and only unmodified documents verify."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import cbor2
import pytest
from attestation_helpers import Vector
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation import (
    AttestationError,
    Policy,
    TestPKI,
    Verifier,
    parse_document,
)
from attestation._cli import decode_input

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ALLOW_DEBUG = Policy(allow_debug=True)


def outcome(verifier: Verifier, data: bytes):
    """The verified document or the AttestationError; anything else fails the test."""
    try:
        return verifier.verify(data, ALLOW_DEBUG, at="document")
    except AttestationError as exc:
        assert exc.code and isinstance(exc.message, str)
        exc.to_dict()
        return exc


@SETTINGS
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        parse_document(data)
    result = outcome(Verifier(), data)
    assert isinstance(result, AttestationError)


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.binary(max_size=64)
    | st.text(max_size=16),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12) | st.integers(0, 40), children, max_size=6)
    ),
    max_leaves=20,
)
payload_keys = st.sampled_from(
    ["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle", "nonce", "user_data"]
)


@SETTINGS
@given(
    st.dictionaries(payload_keys | st.text(max_size=5), cbor_values, max_size=9),
    st.sampled_from([b"\xa1\x01\x38\x22", b"\xa1\x01\x26", b"\xa0", b"\xa1\x01\x38\x22\x00"]),
    st.binary(min_size=90, max_size=100),
)
def test_structured_garbage_never_crashes(fields: dict, protected: bytes, sig: bytes) -> None:
    data = cbor2.dumps([protected, {}, cbor2.dumps(fields), sig])
    assert isinstance(outcome(Verifier(), data), AttestationError)


@st.composite
def mutations(draw, size: int):
    kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
    at = draw(st.integers(0, size - 1))
    return kind, at, draw(st.integers(1, 255)), draw(st.binary(min_size=1, max_size=8))


def mutate(data: bytes, m) -> bytes:
    kind, at, value, blob = m
    b = bytearray(data)
    if kind == "flip":
        b[at] ^= value
    elif kind == "set":
        b[at] = value
    elif kind == "insert":
        b[at:at] = blob
    elif kind == "delete":
        del b[at : at + len(blob)]
    elif kind == "truncate":
        del b[at:]
    else:
        b[at : at + len(blob)] = blob
    return bytes(b)


@pytest.fixture(scope="module")
def real(vectors: list[Vector]) -> list[Vector]:
    return [v for v in vectors if v.genuine]


@pytest.fixture(scope="module")
def shared_verifier() -> Verifier:
    return Verifier()


@SETTINGS
@given(data=st.data())
def test_mutated_real_documents_never_verify(real, shared_verifier, data) -> None:
    v = data.draw(st.sampled_from(real))
    m = data.draw(st.lists(mutations(len(v.data)), min_size=1, max_size=3))
    mutated = v.data
    for one in m:
        if mutated:
            mutated = mutate(mutated, (one[0], one[1] % len(mutated), one[2], one[3]))
    result = outcome(shared_verifier, mutated)
    if not isinstance(result, AttestationError):
        # Only acceptable when the signed parts are exactly the original ones, e.g. a tag
        # 18 inserted in front. The unprotected header must stay empty, so nothing unsigned
        # can ride along with a valid signature.
        original = parse_document(v.data)
        assert (result.protected, result.payload, result.signature) == (
            original.protected,
            original.payload,
            original.signature,
        ), m


def test_tagging_a_real_document_keeps_it_valid_and_unsigned_additions_are_refused(real) -> None:
    v = real[0]
    assert not isinstance(outcome(Verifier(), b"\xd2" + v.data), AttestationError)
    # Put something in the unprotected header (unsigned): refused, even though the signature
    # would still verify.
    assert v.data[6] == 0xA0
    smuggled = v.data[:6] + cbor2.dumps({4: b"kid"}) + v.data[7:]
    result = outcome(Verifier(), smuggled)
    assert isinstance(result, AttestationError) and result.code == "malformed"


@pytest.fixture(scope="module")
def module_pki() -> TestPKI:
    return TestPKI.generate()


@SETTINGS
@given(
    pcrs=st.dictionaries(
        st.integers(0, 31),
        st.sampled_from([32, 48, 64]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
        min_size=1,
        max_size=32,
    ),
    module_id=st.text(min_size=1, max_size=60),
    public_key=st.none() | st.binary(max_size=1024),
    user_data=st.none() | st.binary(max_size=1024),
    nonce=st.none() | st.binary(max_size=1024),
    tagged=st.booleans(),
    indefinite=st.booleans(),
)
def test_testpki_round_trip(
    module_pki, pcrs, module_id, public_key, user_data, nonce, tagged, indefinite
) -> None:
    data = module_pki.sign_document(
        pcrs=pcrs,
        module_id=module_id,
        public_key=public_key,
        user_data=user_data,
        nonce=nonce,
        tagged=tagged,
        indefinite_map=indefinite,
    )
    doc = Verifier([module_pki.root_certificate]).verify(data, ALLOW_DEBUG)
    assert dict(doc.pcrs) == pcrs and doc.module_id == module_id
    assert (doc.public_key, doc.user_data, doc.nonce) == (public_key, user_data, nonce)
    expected_policy = Policy(
        pcrs=pcrs,
        nonce=nonce,
        user_data=user_data,
        public_key=public_key,
        max_age=timedelta(minutes=1),
        allow_debug=True,
    )
    Verifier([module_pki.root_certificate]).verify(data, expected_policy)


@SETTINGS
@given(st.binary(max_size=300))
def test_cli_input_decoding_never_crashes(data: bytes) -> None:
    assert isinstance(decode_input(data), bytes)
