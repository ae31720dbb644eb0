"""The NSM wire format, byte for byte against nitro-spec §1.2, and its parsers under abuse."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.nsm import NsmClient, NsmError
from enclave.nsm.codec import (
    ERROR_CODES,
    NSM_REQUEST_MAX_SIZE,
    NSM_RESPONSE_MAX_SIZE,
    RESPONSE_FOR,
    Attestation,
    AttestationDocumentBytes,
    DescribeNsm,
    DescribePcr,
    ErrorResponse,
    ExtendPcr,
    GetRandom,
    LockPcr,
    LockPcrs,
    NsmDescription,
    PcrExtended,
    PcrInfo,
    PcrLocked,
    PcrsLocked,
    RandomBytes,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

# nitro-spec §1.2, "Requests (exact hex ...)"
SPEC_REQUESTS = [
    (DescribePcr(0), "a16b4465736372696265504352a165696e64657800"),
    (ExtendPcr(16, b"abc"), "a169457874656e64504352a265696e64657810646461746143616263"),
    (LockPcr(16), "a1674c6f636b504352a165696e64657810"),
    (LockPcrs(32), "a1684c6f636b50435273a16572616e67651820"),
    (DescribeNsm(), "6b44657363726962654e534d"),
    (
        Attestation(),
        "a16b4174746573746174696f6ea369757365725f64617461f6656e6f6e6365f66a7075626c69635f6b6579f6",
    ),
    (GetRandom(), "6947657452616e646f6d"),
]
# the kernel driver's hard-coded GetRandom request (LKML fill_req_get_random)
KERNEL_GET_RANDOM = bytes([0x69, 0x47, 0x65, 0x74, 0x52, 0x61, 0x6E, 0x64, 0x6F, 0x6D])

PCR = bytes(range(48))


@pytest.mark.parametrize(("request_", "hex_"), SPEC_REQUESTS, ids=lambda v: type(v).__name__)
def test_requests_encode_exactly_as_the_spec_table(request_, hex_):
    assert encode_request(request_).hex() == hex_
    assert decode_request(bytes.fromhex(hex_)) == request_


def test_get_random_matches_the_kernel_driver_bytes():
    assert encode_request(GetRandom()) == KERNEL_GET_RANDOM


def test_attestation_with_values_keeps_declaration_order():
    data = encode_request(Attestation(user_data=b"u", nonce=b"n", public_key=b"k"))
    assert data == cbor2.dumps(
        {"Attestation": {"user_data": b"u", "nonce": b"n", "public_key": b"k"}}
    )
    assert data.index(b"user_data") < data.index(b"nonce") < data.index(b"public_key")


class _Recorder:
    """A transport that records requests and answers from a queue of CBOR values."""

    def __init__(self, *answers):
        self.sent: list[bytes] = []
        self.answers = list(answers)

    def __call__(self, request: bytes) -> bytes:
        self.sent.append(request)
        return cbor2.dumps(self.answers.pop(0))


def test_client_sends_the_spec_bytes_and_parses_each_answer():
    rec = _Recorder(
        {"DescribePCR": {"lock": True, "data": PCR}},
        {"ExtendPCR": {"data": PCR}},
        "LockPCR",
        "LockPCRs",
        {
            "DescribeNSM": {
                "version_major": 1,
                "version_minor": 2,
                "version_patch": 3,
                "module_id": "i-0123456789abcdef0-enc0123456789abcdef",
                "max_pcrs": 32,
                "locked_pcrs": list(range(16)),
                "digest": "SHA384",
            }
        },
        {"Attestation": {"document": b"\x84doc"}},
        {"GetRandom": {"random": bytes(256)}},
    )
    client = NsmClient(transport=rec)
    assert client.describe_pcr(0) == PcrInfo(locked=True, data=PCR)
    assert client.extend_pcr(16, b"abc") == PCR
    assert client.lock_pcr(16) is None
    assert client.lock_pcrs(32) is None
    desc = client.describe_nsm()
    assert desc.version == "1.2.3" and desc.locked_pcrs == tuple(range(16))
    assert desc.max_pcrs == 32 and desc.digest == "SHA384"
    assert client.attestation() == b"\x84doc"
    assert client.get_random() == bytes(256)
    assert [r.hex() for r in rec.sent] == [h for _, h in SPEC_REQUESTS]


@pytest.mark.parametrize("code", [c for c in ERROR_CODES if c != "Success"])
def test_error_answers_raise_with_the_device_code(code):
    client = NsmClient(transport=_Recorder({"Error": code}))
    with pytest.raises(NsmError) as info:
        client.describe_pcr(1)
    assert info.value.nsm_code == code


@pytest.mark.parametrize(
    "answer",
    [
        {"Error": "Success"},
        {"Error": "NoSuchCode"},
        {"Error": 3},
        {"ExtendPCR": {"data": PCR}},  # the answer to another request
        {"DescribePCR": {"lock": 1, "data": PCR}},  # int is not bool
        {"DescribePCR": {"lock": True, "data": PCR[:47]}},  # not a PCR length
        {"DescribePCR": {"lock": True}},  # missing field
        {"DescribePCR": [True, PCR]},  # not a map
        {"DescribePCR": {"lock": True, "data": "text"}},
        "DescribePCR",  # unit where a struct is expected
        {"DescribePCR": {"lock": True, "data": PCR}, "x": 1},  # two keys
        ["DescribePCR"],
        None,
        42,
    ],
    ids=repr,
)
def test_wrong_answers_are_invalid_response(answer):
    client = NsmClient(transport=_Recorder(answer))
    with pytest.raises(NsmError) as info:
        client.describe_pcr(0)
    assert info.value.nsm_code == "InvalidResponse"


def test_unknown_fields_are_ignored_as_serde_does():
    answer = {"DescribePCR": {"data": PCR, "lock": False, "future": [1, 2]}}
    assert NsmClient(transport=_Recorder(answer)).describe_pcr(2) == PcrInfo(False, PCR)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff",
        cbor2.dumps("LockPCR") + b"\x00",  # trailing bytes
        b"\xa2\x67LockPCR\xf6\x67LockPCR\xf6",  # duplicate keys
        b"\x81" * 50 + b"\x00",  # nesting too deep
        b"\x5a\xff\xff\xff\xff",  # byte string longer than the data
        bytes(NSM_RESPONSE_MAX_SIZE + 1),
    ],
    ids=lambda b: b[:8].hex(),
)
def test_undecodable_answers_are_invalid_response(raw):
    with pytest.raises(NsmError) as info:
        decode_response(raw, PcrLocked)
    assert info.value.nsm_code == "InvalidResponse"


def test_non_bytes_answer_is_invalid_response():
    with pytest.raises(NsmError) as info:
        NsmClient(transport=lambda _r: "LockPCR").lock_pcr(16)  # type: ignore[arg-type,return-value]
    assert info.value.nsm_code == "InvalidResponse"


@pytest.mark.parametrize(
    "request_",
    [
        DescribePcr(-1),
        DescribePcr(65536),
        DescribePcr(True),
        DescribePcr("1"),  # type: ignore[arg-type]
        ExtendPcr(16, "text"),  # type: ignore[arg-type]
        LockPcrs(1.0),  # type: ignore[arg-type]
        Attestation(nonce=[1, 2]),  # type: ignore[arg-type]
    ],
    ids=repr,
)
def test_bad_arguments_are_refused_before_sending(request_):
    with pytest.raises(NsmError) as info:
        encode_request(request_)
    assert info.value.nsm_code == "InvalidArgument"


def test_oversized_request_is_refused_before_the_transport():
    def transport(_request: bytes) -> bytes:
        raise AssertionError("must not be called")

    client = NsmClient(transport=transport)
    with pytest.raises(NsmError) as info:
        client.extend_pcr(16, bytes(NSM_REQUEST_MAX_SIZE))
    assert info.value.nsm_code == "InputTooLarge"
    with pytest.raises(NsmError) as info:
        client.attestation(user_data=bytes(2000), nonce=bytes(2000), public_key=bytes(100))
    assert info.value.nsm_code == "InputTooLarge"
    # the largest request that still fits is sent
    overhead = len(encode_request(ExtendPcr(16, bytes(100)))) - 100
    largest = NSM_REQUEST_MAX_SIZE - overhead - 2  # the length header grows by 2 bytes
    assert len(encode_request(ExtendPcr(16, bytes(largest)))) <= NSM_REQUEST_MAX_SIZE


def test_a_failing_transport_becomes_internal_error():
    def transport(_request: bytes) -> bytes:
        raise RuntimeError("wire cut")

    with pytest.raises(NsmError) as info:
        NsmClient(transport=transport).describe_nsm()
    assert info.value.nsm_code == "InternalError"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xff", "InvalidOperation"),
        (cbor2.dumps("Reboot"), "InvalidOperation"),
        (cbor2.dumps({"Reboot": {}}), "InvalidOperation"),
        (cbor2.dumps(7), "InvalidOperation"),
        (cbor2.dumps({"DescribePCR": {"index": 70000}}), "InvalidArgument"),
        (cbor2.dumps({"DescribePCR": {"index": -1}}), "InvalidArgument"),
        (cbor2.dumps({"DescribePCR": {}}), "InvalidArgument"),
        (cbor2.dumps({"ExtendPCR": {"index": 16, "data": "abc"}}), "InvalidArgument"),
        (cbor2.dumps({"DescribeNSM": {}}), "InvalidArgument"),
        (cbor2.dumps("ExtendPCR"), "InvalidArgument"),
        (bytes(NSM_REQUEST_MAX_SIZE + 1), "InputTooLarge"),
    ],
    ids=lambda v: v[:12].hex() if isinstance(v, bytes) else v,
)
def test_request_parser_codes(raw, code):
    with pytest.raises(NsmError) as info:
        decode_request(raw)
    assert info.value.nsm_code == code


def test_missing_optional_attestation_fields_read_as_null():
    assert decode_request(cbor2.dumps({"Attestation": {"nonce": b"n"}})) == Attestation(nonce=b"n")


# -- properties -------------------------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
small_bytes = st.binary(max_size=300)
opt_bytes = st.none() | small_bytes
pcr_value = st.sampled_from([32, 48, 64]).flatmap(lambda n: st.binary(min_size=n, max_size=n))

requests = st.one_of(
    st.builds(DescribePcr, u16),
    st.builds(ExtendPcr, u16, small_bytes),
    st.builds(LockPcr, u16),
    st.builds(LockPcrs, u16),
    st.just(DescribeNsm()),
    st.builds(Attestation, opt_bytes, opt_bytes, opt_bytes),
    st.just(GetRandom()),
)
responses = st.one_of(
    st.builds(PcrInfo, st.booleans(), pcr_value),
    st.builds(PcrExtended, pcr_value),
    st.just(PcrLocked()),
    st.just(PcrsLocked()),
    st.builds(
        NsmDescription,
        u16,
        u16,
        u16,
        st.text(max_size=60),
        u16,
        st.lists(u16, max_size=40, unique=True).map(lambda v: tuple(sorted(v))),
        st.sampled_from(["SHA256", "SHA384", "SHA512"]),
    ),
    st.builds(AttestationDocumentBytes, st.binary(min_size=1, max_size=2000)),
    st.builds(RandomBytes, st.binary(max_size=256)),
)
cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=60)
    | st.sampled_from(["Error", "DescribePCR", "LockPCR", "GetRandom", "lock", "data"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["Error", "DescribePCR", "ExtendPCR", "lock", "data", "random"])
            | st.text(max_size=8),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)
expected_types = st.sampled_from(sorted(set(RESPONSE_FOR.values()), key=lambda t: t.__name__))


@settings(max_examples=150, deadline=None)
@given(requests)
def test_request_round_trip(request_):
    data = encode_request(request_)
    assert len(data) <= NSM_REQUEST_MAX_SIZE
    assert decode_request(data) == request_


@settings(max_examples=150, deadline=None)
@given(responses)
def test_response_round_trip(response):
    assert decode_response(encode_response(response), type(response)) == response


@settings(max_examples=50, deadline=None)
@given(st.sampled_from([c for c in ERROR_CODES if c != "Success"]), expected_types)
def test_error_round_trip(code, expected):
    with pytest.raises(NsmError) as info:
        decode_response(encode_response(ErrorResponse(code)), expected)
    assert info.value.nsm_code == code


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), expected_types)
def test_garbage_bytes_only_raise_nsm_error(raw, expected):
    try:
        decode_response(raw, expected)
    except NsmError as e:
        assert e.nsm_code in ERROR_CODES


@settings(max_examples=200, deadline=None)
@given(cbor_values, expected_types)
def test_arbitrary_cbor_answers_only_raise_nsm_error(value, expected):
    try:
        result = decode_response(cbor2.dumps(value), expected)
    except NsmError as e:
        assert e.nsm_code in ERROR_CODES
    else:
        assert isinstance(result, expected)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | cbor_values.map(cbor2.dumps))
def test_arbitrary_requests_only_raise_nsm_error(raw):
    try:
        parsed = decode_request(raw)
    except NsmError as e:
        assert e.nsm_code in {"InvalidOperation", "InvalidArgument", "InputTooLarge"}
    else:
        assert decode_request(encode_request(parsed)) == parsed


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=100) | cbor_values.map(cbor2.dumps))
def test_client_over_a_garbage_transport_only_raises_nsm_error(raw):
    client = NsmClient(transport=lambda _request: raw)
    for call in (
        lambda: client.describe_pcr(0),
        lambda: client.extend_pcr(16, b"x"),
        lambda: client.lock_pcr(16),
        lambda: client.lock_pcrs(16),
        client.describe_nsm,
        client.attestation,
        lambda: client.get_random(16),
    ):
        with contextlib.suppress(NsmError):
            call()
