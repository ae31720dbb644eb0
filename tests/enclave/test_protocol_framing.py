"""The wire format (enclave.protocol._framing): ``read_frame`` properties and the message rules."""

from __future__ import annotations

import asyncio
import struct

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave.protocol import ERROR_CODES, FrameError, ProtocolLimits
from enclave.protocol._framing import (
    CBOR_MAX_DEPTH,
    HEADER_SIZE,
    MAGIC,
    FrameClock,
    decode_cbor,
    encode_error,
    encode_request,
    encode_response,
    frame,
    parse_reply,
    parse_request,
    read_frame,
)

MAX_FRAME = 64 * 1024
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# CBOR values a body may hold (strict keys: text or bytes)
leaves = (
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=40) | st.binary(max_size=200)
)
bodies = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=10) | st.binary(max_size=10), inner, max_size=5),
    max_leaves=25,
)
requests = st.builds(
    lambda rid, op, body, timeout: (rid, op, body, timeout),
    st.integers(0, 2**64 - 1),
    st.text(min_size=1, max_size=30),
    bodies,
    st.none() | st.integers(0, 2**32),
)


def stream_of(payloads):
    return b"".join(b"".join(frame(p)) for p in payloads)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


async def _read_all(chunks, max_frame, out, *, eof=True):
    """Frames read by ``read_frame`` while ``chunks`` arrive one by one (the reader runs
    between chunks, so every split point is exercised); appended to ``out`` as they come."""
    reader = asyncio.StreamReader()

    async def feed():
        for chunk in chunks:
            reader.feed_data(chunk)
            await asyncio.sleep(0)
        if eof:
            reader.feed_eof()

    feeder = asyncio.ensure_future(feed())
    try:
        while (payload := await read_frame(reader, max_frame)) is not None:
            out.append(payload)
    finally:
        feeder.cancel()
    return reader


def decode_all(chunks, max_frame=MAX_FRAME):
    out: list[bytes] = []
    asyncio.run(_read_all(chunks, max_frame, out))
    return out


# --- framing properties -----------------------------------------------------------------


@PROPERTY
@given(st.lists(requests, min_size=1, max_size=8), st.lists(st.integers(0, 10**6), max_size=30))
def test_any_split_of_a_valid_stream_decodes_to_the_same_messages(messages, cuts):
    payloads = [encode_request(*m, strict_keys=True) for m in messages]
    data = stream_of(payloads)
    decoded = decode_all(split(data, cuts))
    assert decoded == payloads
    for payload, (rid, op, body, timeout) in zip(decoded, messages, strict=True):
        request = parse_request(decode_cbor(payload))
        assert (request.id, request.op, request.body, request.timeout_ms) == (
            rid, op, body, timeout
        )


@PROPERTY
@given(st.lists(requests, min_size=1, max_size=4))
def test_byte_at_a_time_decodes_the_same(messages):
    payloads = [encode_request(*m, strict_keys=True) for m in messages]
    data = stream_of(payloads)
    assert decode_all([data[i : i + 1] for i in range(len(data))]) == payloads


@PROPERTY
@given(st.binary(max_size=600), st.lists(st.integers(0, 10**4), max_size=10))
def test_garbage_raises_only_the_typed_error(garbage, cuts):
    try:
        for payload in decode_all(split(garbage, cuts)):
            parse_request(decode_cbor(payload))
    except FrameError as error:
        assert error.code in ERROR_CODES
        assert error.message


@PROPERTY
@given(st.binary(max_size=300))
def test_garbage_payloads_raise_only_the_typed_error(payload):
    for parse in (parse_request, parse_reply):
        try:
            parse(decode_cbor(payload))
        except FrameError as error:
            assert error.code in {"bad-cbor", "bad-message", "bad-request"}


@PROPERTY
@given(st.lists(requests, min_size=1, max_size=3), st.data())
def test_a_stream_cut_inside_a_frame_is_truncated(messages, data):
    payloads = [encode_request(*m, strict_keys=True) for m in messages]
    stream = stream_of(payloads)
    boundaries = set()
    offset = 0
    for p in payloads:
        offset += HEADER_SIZE + len(p)
        boundaries.add(offset)
    cut = data.draw(st.integers(1, len(stream) - 1).filter(lambda c: c not in boundaries))
    complete: list[bytes] = []
    with pytest.raises(FrameError) as caught:
        asyncio.run(_read_all([stream[:cut]], MAX_FRAME, complete))
    assert complete == payloads[: len(complete)]
    assert caught.value.code == "truncated"


@PROPERTY
@given(st.integers(MAX_FRAME + 1, 2**32 - 1), st.binary(max_size=100))
def test_oversized_frame_is_refused_at_its_header(length, rest):
    header = struct.pack(">2sBBI", MAGIC, 1, 0, length)

    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(header + rest)
        reader.feed_eof()
        with pytest.raises(FrameError) as caught:
            await read_frame(reader, MAX_FRAME)
        assert await reader.read() == rest  # refused before any payload byte was read
        return caught.value

    error = asyncio.run(go())
    assert error.code == "frame-too-large"
    assert str(length) in error.message


@pytest.mark.parametrize(
    ("first_bytes", "needle"),
    [
        (b"G", "HTTP"),
        (b"\x16\x03", "TLS"),
        (b"\xff", "bad magic"),
    ],
)
def test_a_stream_that_is_not_frames_is_refused_at_its_first_byte(first_bytes, needle):
    """No wait for the rest of a header (nor for read_timeout): the first byte decides."""
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(first_bytes)  # and nothing more, no EOF
        async with asyncio.timeout(1):
            await read_frame(reader, MAX_FRAME)

    with pytest.raises(FrameError) as caught:
        asyncio.run(go())
    assert caught.value.code == "bad-frame" and needle in caught.value.message


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        (b"NX\x01\x00\x00\x00\x00\x01", "bad magic"),
        (b"NE\x02\x00\x00\x00\x00\x01", "version 2"),
        (b"NE\x01\x80\x00\x00\x00\x01", "flags 0x80"),
        (b"NE\x01\x00\x00\x00\x00\x00", "empty payload"),
    ],
)
def test_bad_header_is_refused_once_its_eight_bytes_are_in(header, needle):
    with pytest.raises(FrameError) as caught:
        decode_all([header + b"never read"])
    assert caught.value.code == "bad-frame" and needle in caught.value.message


def test_a_frame_trickling_in_is_cut_at_read_timeout_counted_from_its_first_byte():
    data = b"".join(frame(encode_request(1, "echo", "x" * 40, None, strict_keys=True)))

    async def go():
        reader = asyncio.StreamReader()
        clock = FrameClock(read_timeout=0.2, idle_timeout=60)
        clock.start()

        async def trickle():
            await asyncio.sleep(0.3)  # waiting for a first byte is not read time
            for i in range(len(data)):
                reader.feed_data(data[i : i + 1])
                await asyncio.sleep(0.02)

        feeder = asyncio.ensure_future(trickle())
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(FrameError) as caught:
                await read_frame(reader, MAX_FRAME, clock)
        finally:
            feeder.cancel()
            clock.stop()
        assert asyncio.current_task().cancelling() == 0  # the clock's cancel was taken back
        return caught.value, loop.time() - started

    error, elapsed = asyncio.run(go())
    assert error.code == "read-timeout"
    assert 0.45 < elapsed < 2.0  # 0.3 s idle, then header and payload within one read_timeout


def test_an_idle_deadline_ends_the_wait_for_a_frame():
    async def go():
        reader = asyncio.StreamReader()
        clock = FrameClock(read_timeout=5.0, idle_timeout=0.2)
        clock.idle_deadline = asyncio.get_running_loop().time() + 0.2
        clock.start()
        try:
            with pytest.raises(FrameError) as caught:
                await read_frame(reader, MAX_FRAME, clock)
        finally:
            clock.stop()
        return caught.value

    assert asyncio.run(go()).code == "idle-timeout"


def test_a_cancellation_not_from_the_clock_stays_a_cancellation():
    async def go():
        reader = asyncio.StreamReader()

        async def read_with_clock():
            clock = FrameClock(read_timeout=5.0, idle_timeout=5.0)
            clock.start()
            try:
                return await read_frame(reader, MAX_FRAME, clock)
            finally:
                clock.stop()

        task = asyncio.ensure_future(read_with_clock())
        await asyncio.sleep(0.05)
        task.cancel()  # e.g. the server shutting down: not a read-timeout
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())


@PROPERTY
@given(st.integers(1, MAX_FRAME), st.integers(0, 200))
def test_a_header_promising_more_than_arrives_is_truncated(length, sent):
    header = struct.pack(">2sBBI", MAGIC, 1, 0, length)
    sent = min(sent, length - 1)
    with pytest.raises(FrameError) as caught:
        decode_all([header, b"p" * sent])
    assert caught.value.code == "truncated"


def test_frame_header_layout_is_big_endian_with_magic_version_flags():
    payload = encode_response(7, "ok", strict_keys=True)
    data = b"".join(frame(payload))
    assert data[:2] == b"NE" and data[2] == 1 and data[3] == 0
    assert int.from_bytes(data[4:8], "big") == len(payload)
    assert data[8:] == payload
    assert cbor2.loads(payload) == {"id": 7, "body": "ok"}
    big = b"".join(frame(b"\x40" * 70_000))
    assert big[4:8] == (70_000).to_bytes(4, "big")


# --- CBOR rules ---------------------------------------------------------------------------


@PROPERTY
@given(bodies, st.binary(min_size=1, max_size=20))
def test_bytes_after_the_cbor_item_are_refused(body, trailing):
    payload = encode_response(1, body, strict_keys=True)
    with pytest.raises(FrameError) as caught:
        decode_cbor(payload + trailing)
    assert caught.value.code == "bad-cbor"


@pytest.mark.parametrize(
    ("tag", "value"),
    [(28, [1]), (29, 0), (35, "a+"), (36, "MIME-Version: 1.0\r\n\r\n"), (256, "x"), (25, 0)],
)
def test_tags_that_build_live_objects_are_refused(tag, value):
    payload = cbor2.dumps({"id": 1, "op": "x", "body": cbor2.CBORTag(tag, value)})
    with pytest.raises(FrameError) as caught:
        decode_cbor(payload)
    assert caught.value.code == "bad-cbor" and f"tag {tag}" in caught.value.message


def test_strict_keys_refuse_non_string_map_keys_both_ways():
    payload = cbor2.dumps({"id": 1, "op": "x", "body": {1: "one"}})
    with pytest.raises(FrameError) as caught:
        decode_cbor(payload)
    assert caught.value.code == "bad-cbor" and "map key" in caught.value.message
    assert decode_cbor(payload, strict_keys=False)["body"] == {1: "one"}
    with pytest.raises(FrameError) as caught:
        encode_request(1, "x", {"a": [{(1, 2): 3}]}, None, strict_keys=True)
    assert caught.value.code == "bad-request" and "tuple" in caught.value.message
    with pytest.raises(FrameError) as caught:
        encode_response(1, {2: 3}, strict_keys=True)
    assert caught.value.code == "bad-response"
    assert encode_response(1, {2: 3}, strict_keys=False)


def test_deep_nesting_and_duplicate_keys_are_refused():
    deep = b"\x81" * (CBOR_MAX_DEPTH + 5) + b"\x00"
    with pytest.raises(FrameError):
        decode_cbor(deep)
    duplicate = bytes.fromhex("a2 61 61 01 61 61 02")  # {"a": 1, "a": 2}
    with pytest.raises(FrameError):
        decode_cbor(duplicate)


def test_unencodable_body_is_a_typed_error():
    with pytest.raises(FrameError) as caught:
        encode_request(1, "x", object(), None, strict_keys=True)
    assert caught.value.code == "bad-request"


# --- message schema -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "code", "request_id"),
    [
        ([1, 2], "bad-message", None),
        ({"op": "x"}, "bad-message", None),
        ({"id": -1, "op": "x"}, "bad-message", None),
        ({"id": True, "op": "x"}, "bad-message", None),
        ({"id": 5}, "bad-request", 5),
        ({"id": 5, "op": ""}, "bad-request", 5),
        ({"id": 5, "op": "x" * 129}, "bad-request", 5),
        ({"id": 5, "op": "x", "timeout_ms": -1}, "bad-request", 5),
        ({"id": 5, "op": "x", "timeout_ms": 1.5}, "bad-request", 5),
    ],
)
def test_bad_requests_say_what_is_wrong(message, code, request_id):
    with pytest.raises(FrameError) as caught:
        parse_request(decode_cbor(cbor2.dumps(message)))
    assert caught.value.code == code and caught.value.request_id == request_id


def test_unknown_request_keys_are_ignored_and_body_defaults_to_null():
    request = parse_request({"id": 1, "op": "x", "future": 1})
    assert request.body is None and request.timeout_ms is None


def test_replies_parse_and_error_codes_are_sanitised():
    assert parse_reply(decode_cbor(encode_response(3, [1], strict_keys=True))).body == [1]
    reply = parse_reply(decode_cbor(encode_error(None, "read-timeout", "slow")))
    assert reply.id is None and reply.error == ("read-timeout", "slow", "bad-request")
    assert parse_reply(cbor2.loads(encode_error(4, "Not A Code!", "x"))).error[:3:2] == (
        "internal", "internal"
    )
    # the kind travels with the code; a peer without kinds gets the protocol's, else internal
    custom = parse_reply(cbor2.loads(encode_error(4, "store-full", "m", "conflict")))
    assert custom.error == ("store-full", "m", "conflict")
    old = {"id": 4, "error": {"code": "unknown-op", "message": "m"}}
    assert parse_reply(old).error == ("unknown-op", "m", "not-found")
    odd = {"id": 4, "error": {"code": "app-thing", "message": "m", "kind": "nonsense"}}
    assert parse_reply(odd).error == ("app-thing", "m", "internal")
    long = parse_reply(cbor2.loads(encode_error(4, "x", "m" * 5000))).error[1]
    assert len(long) == 1024
    for bad in ({"body": 1}, {"id": 1, "error": "x"}, {"id": 1, "error": {"code": 5}}):
        with pytest.raises(FrameError):
            parse_reply(bad)


def test_limits_are_validated():
    for field, value in [("max_frame", 0), ("max_frame", 2**32), ("read_timeout", -1),
                         ("max_in_flight", 1.5), ("idle_timeout", float("nan"))]:
        with pytest.raises(Exception) as caught:
            ProtocolLimits(**{field: value})
        assert caught.value.code == "invalid-limits"
