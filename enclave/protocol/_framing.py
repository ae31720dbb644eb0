"""Wire format of the protocol: 8-byte header + one CBOR item (docs/protocol.md).

Header, big-endian: ``"NE"`` (0x4E 0x45) | version (0x01) | flags (0x00) | u32 length.
The payload is exactly one CBOR data item of ``length`` bytes: a request map
``{"id", "op", "body", ?"timeout_ms"}`` or a reply map ``{"id", "body"}`` /
``{"id", "error": {"code", "kind", "message"}}``.

``read_frame`` reads one frame from a StreamReader (``readexactly``: header, limit check,
payload); the encode/parse functions are sans-I/O. Every failure is a ``FrameError`` with a
stable code.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, replace
from typing import Any

import cbor2

from attestation._cbor import KEY_BYTES, KEY_INT, KEY_TEXT, CborLimits, decode_strict
from attestation.errors import MAX_CODE_LENGTH, Kind, MalformedError, is_code, is_kind
from enclave.protocol._base import (
    MAX_OP_LENGTH,
    MAX_REQUEST_ID,
    MAX_U32,
    PROTOCOL_VERSION,
    FrameError,
    ProtocolError,
    clip,
)

MAGIC = b"NE"
FLAGS_NONE = 0
HEADER = struct.Struct(">2sBBI")
HEADER_SIZE = HEADER.size  # 8
CBOR_MAX_DEPTH = 64  # nesting of arrays/maps in one payload
MAX_FRAME_ITEMS = 1 << 17  # CBOR data items in one payload (keys and values count)
JOIN_BELOW = 64 * 1024  # frames smaller than this are sent as one buffer (header + payload)

FRAME_CBOR = CborLimits(
    max_bytes=MAX_U32,  # the frame header's max_frame bounds the size
    max_depth=CBOR_MAX_DEPTH,
    max_items=MAX_FRAME_ITEMS,
    key_types=frozenset({KEY_TEXT, KEY_BYTES}),
)
"""Every payload is decoded by attestation's strict decoder within these limits: no tags, no
duplicate keys, text/byte-string keys (ProtocolLimits.strict_map_keys)."""
LOOSE_FRAME_CBOR = replace(FRAME_CBOR, key_types=frozenset({KEY_TEXT, KEY_BYTES, KEY_INT}))
"""The same with small-integer keys allowed too (strict_map_keys=False)."""


def _header_problem(prefix: bytes, max_frame: int) -> FrameError | None:
    """What is wrong with the first bytes of a header (any length up to 8), if anything."""
    if prefix[:2] != MAGIC[: len(prefix)]:
        got = prefix[:2]
        hint = ""
        if got[:1] in (b"G", b"P", b"H", b"D", b"O") and got != MAGIC[: len(got)]:
            hint = " (it looks like HTTP)"
        elif got[:1] == b"\x16":
            hint = " (it looks like TLS)"
        return FrameError(
            "bad-frame",
            f"bad magic 0x{got.hex()}{hint}: frames start with 0x4e45 ('NE'); this endpoint "
            f"speaks the framed protocol of docs/protocol.md",
        )
    if len(prefix) > 2 and prefix[2] != PROTOCOL_VERSION:
        return FrameError(
            "bad-frame", f"unsupported version {prefix[2]} (this side speaks {PROTOCOL_VERSION})"
        )
    if len(prefix) > 3 and prefix[3] != FLAGS_NONE:
        return FrameError(
            "bad-frame", f"unknown flags 0x{prefix[3]:02x} (version 1 defines none: 0x00)"
        )
    if len(prefix) == HEADER_SIZE:
        length = HEADER.unpack(prefix)[3]
        if length == 0:
            return FrameError(
                "bad-frame", "empty payload (length 0): a frame carries one CBOR item"
            )
        if length > max_frame:
            return FrameError(
                "frame-too-large",
                f"frame of {length} bytes is over the limit of {max_frame} bytes (max_frame)",
            )
    return None


def payload_length(header: bytes, max_frame: int) -> int:
    """The payload length a complete 8-byte header announces; FrameError when the header is
    bad or the length is 0 or over ``max_frame`` (so no payload byte is read for it)."""
    problem = _header_problem(header, max_frame)
    if problem is not None:
        raise problem
    length: int = HEADER.unpack(header)[3]
    return length


class FrameClock:
    """The read deadlines of one connection, watched by one lazily re-armed timer.

    ``read_frame`` notes when a frame's first byte came and when the frame ended; the
    owner sets ``idle_deadline`` (event-loop time, None: not idle). Every ``tick`` seconds
    (a quarter of the shortest timeout) the timer looks: a frame older than
    ``read_timeout``, or a passed idle deadline, cancels the watched task, and
    ``read_frame`` turns that into FrameError read-timeout / idle-timeout. So no timer is
    set per frame (``asyncio.timeout`` per frame cost 2-3 heap pushes, measured in
    docs/benchmarks.md §12); a deadline is noticed up to one tick late.
    """

    __slots__ = (
        "_frame_start",
        "_handle",
        "_loop",
        "_task",
        "_tick",
        "expired",
        "idle_deadline",
        "idle_timeout",
        "read_timeout",
    )

    def __init__(self, read_timeout: float, idle_timeout: float | None = None) -> None:
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.idle_deadline: float | None = None
        self.expired: str | None = None  # "read-timeout" / "idle-timeout" once fired
        self._tick = min(read_timeout, idle_timeout or read_timeout) / 4
        self._frame_start: float | None = None
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Watch the current task (the one that calls ``read_frame``)."""
        self._task = asyncio.current_task()
        self._handle = self._loop.call_later(self._tick, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        now = self._loop.time()
        if self._frame_start is not None and now - self._frame_start >= self.read_timeout:
            self.expired = "read-timeout"
        elif self.idle_deadline is not None and now >= self.idle_deadline:
            self.expired = "idle-timeout"
        if self.expired is not None and self._task is not None:
            self._handle = None
            self._task.cancel()
        else:
            self._handle = self._loop.call_later(self._tick, self._check)

    def _timed_out(self) -> FrameError:
        if self.expired == "idle-timeout":
            return FrameError(
                "idle-timeout", f"no request for {self.idle_timeout:g} s (idle_timeout)"
            )
        return FrameError(
            "read-timeout", f"frame not completed within {self.read_timeout:g} s (read_timeout)"
        )


async def read_frame(
    reader: asyncio.StreamReader, max_frame: int, clock: FrameClock | None = None
) -> bytes | None:
    """The next frame's payload, or None when the stream ends cleanly between frames.

    Header, check, payload (``readexactly``). FrameError: bad-frame (at once when the first
    byte shows it is not a frame, else once the header is in), frame-too-large (before any
    payload byte is read), truncated; with a started ``clock``, read-timeout and
    idle-timeout too.
    """
    try:
        first = await reader.read(1)
        if not first:
            return None
        if clock is not None:
            clock._frame_start = clock._loop.time()
        problem = _header_problem(first, max_frame)  # HTTP, TLS, ...: refused at once
        if problem is not None:
            raise problem
        length = payload_length(first + await reader.readexactly(HEADER_SIZE - 1), max_frame)
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise FrameError(
            "truncated", f"stream ended inside a frame ({len(exc.partial)} more bytes came)"
        ) from None
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if clock is None or clock.expired is None or task is None or task.uncancel() > 0:
            raise  # not (only) the clock's cancellation
        raise clock._timed_out() from None
    if clock is not None:
        clock._frame_start = None
    return payload


# --- CBOR ----------------------------------------------------------------------------------


def decode_cbor(payload: bytes, *, strict_keys: bool = True) -> Any:
    """The one CBOR item that is ``payload``; FrameError(bad-cbor) for anything else."""
    try:
        return decode_strict(payload, "payload", FRAME_CBOR if strict_keys else LOOSE_FRAME_CBOR)
    except MalformedError as exc:
        raise FrameError("bad-cbor", clip(exc.message, 300)) from None


_ID_KEY = b"\x62id"  # the text string "id" (encode_request always writes it first)


def peek_request_id(payload: bytes) -> int | None:
    """The id of a request payload that did not decode, when its head still shows one:
    a definite map whose first key is "id" and whose first value an unsigned integer.
    Lets the server answer a bad frame on its request instead of dropping the connection."""
    if not payload or payload[0] >> 5 != 5:
        return None
    info = payload[0] & 31
    pos = 1 + {24: 1, 25: 2, 26: 4, 27: 8}.get(info, 0 if info < 24 else 99)
    if payload[pos : pos + 3] != _ID_KEY or len(payload) <= pos + 3:
        return None
    pos += 3
    head = payload[pos]
    if head >> 5 != 0:
        return None
    info = head & 31
    if info < 24:
        return info
    width = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if width is None or len(payload) < pos + 1 + width:
        return None
    return int.from_bytes(payload[pos + 1 : pos + 1 + width], "big")


def bad_key_type(value: Any) -> str | None:
    """The type name of the first map key / set item that is not text or bytes, if any."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, str | bytes):
                    return type(key).__name__
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, set | frozenset):
            for member in item:
                if not isinstance(member, str | bytes):
                    return type(member).__name__
        elif isinstance(item, cbor2.CBORTag):
            stack.append(item.value)
    return None


def encode_cbor(message: dict[str, Any], *, strict_keys: bool, what: str) -> bytes:
    """CBOR bytes of ``message``; FrameError(bad-request/bad-response) when impossible."""
    code = "bad-request" if what == "request" else "bad-response"
    if strict_keys:
        bad = bad_key_type(message.get("body"))
        if bad is not None:
            raise FrameError(
                code,
                f"{what} body has a map key or set item of type {bad}; keys must be text or "
                f"byte strings (ProtocolLimits.strict_map_keys)",
            )
    try:
        return cbor2.dumps(message)
    except Exception as exc:  # CBOREncodeError, TypeError, ValueError, RecursionError
        raise FrameError(
            code, clip(f"{what} body cannot be encoded as CBOR: {type(exc).__name__}", 300)
        ) from None


def frame(payload: bytes) -> list[bytes]:
    """The buffers to write for one frame: one joined buffer when small, else two."""
    header = HEADER.pack(MAGIC, PROTOCOL_VERSION, FLAGS_NONE, len(payload))
    if len(payload) < JOIN_BELOW:
        return [header + payload]
    return [header, payload]


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    op: str
    body: Any
    timeout_ms: int | None


@dataclass(frozen=True, slots=True)
class Reply:
    """A response (``error`` is None) or an error reply (``body`` is None)."""

    id: int | None
    body: Any
    error: tuple[str, str, str] | None
    """(code, message, kind)"""


def _valid_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_REQUEST_ID


def parse_request(item: Any) -> Request:
    """Validate a decoded request map. Without a valid id: FrameError(bad-message);
    with one but other fields wrong: FrameError(bad-request, request_id=id)."""
    if not isinstance(item, dict):
        raise FrameError("bad-message", f"a request is a CBOR map, got {type(item).__name__}")
    rid = item.get("id")
    if not _valid_id(rid):
        raise FrameError("bad-message", "request has no valid id (unsigned integer < 2**64)")
    op = item.get("op")
    if not isinstance(op, str) or not 0 < len(op) <= MAX_OP_LENGTH:
        raise FrameError(
            "bad-request", f"op must be a text string of 1..{MAX_OP_LENGTH} characters",
            request_id=rid,
        )
    timeout_ms = item.get("timeout_ms")
    if timeout_ms is not None and not (
        isinstance(timeout_ms, int) and not isinstance(timeout_ms, bool) and timeout_ms >= 0
    ):
        raise FrameError(
            "bad-request", "timeout_ms must be an unsigned integer", request_id=rid
        )
    assert isinstance(rid, int)  # _valid_id
    return Request(rid, op, item.get("body"), timeout_ms)


def parse_reply(item: Any) -> Reply:
    """Validate a decoded reply map; FrameError(bad-message) when it is not one."""
    if not isinstance(item, dict):
        raise FrameError("bad-message", f"a reply is a CBOR map, got {type(item).__name__}")
    rid = item.get("id")
    if rid is not None and not _valid_id(rid):
        raise FrameError("bad-message", "reply id must be an unsigned integer < 2**64 or null")
    if "error" not in item:
        if rid is None:
            raise FrameError("bad-message", "a reply without error needs an id")
        return Reply(rid, item.get("body"), None)
    error = item["error"]
    if not isinstance(error, dict):
        raise FrameError("bad-message", "reply error must be a map {code, message}")
    code, message = error.get("code"), error.get("message", "")
    if not isinstance(code, str) or not 0 < len(code) <= MAX_CODE_LENGTH:
        raise FrameError("bad-message", "reply error code must be a short text string")
    if not isinstance(message, str):
        raise FrameError("bad-message", "reply error message must be a text string")
    sent = error.get("kind")
    # a peer that predates kinds: the protocol's table, else internal
    kind = sent if isinstance(sent, str) and is_kind(sent) else ProtocolError.kind_of(code)
    return Reply(rid, None, (code, clip(message), kind))


def encode_request(
    rid: int, op: str, body: Any, timeout_ms: int | None, *, strict_keys: bool
) -> bytes:
    message: dict[str, Any] = {"id": rid, "op": op, "body": body}
    if timeout_ms is not None:
        message["timeout_ms"] = timeout_ms
    return encode_cbor(message, strict_keys=strict_keys, what="request")


def encode_response(rid: int, body: Any, *, strict_keys: bool) -> bytes:
    return encode_cbor({"id": rid, "body": body}, strict_keys=strict_keys, what="response")


def encode_error(rid: int | None, code: str, message: str, kind: str | None = None) -> bytes:
    """An error reply ``{"id", "error": {"code", "kind", "message"}}``; a malformed code is
    sent as ``internal``, a missing kind is the protocol's for the code."""
    if not is_code(code):
        code, kind = "internal", Kind.INTERNAL
    if kind is None or not is_kind(kind):
        kind = ProtocolError.kind_of(code)
    error = {"code": code, "kind": kind, "message": clip(message)}
    return cbor2.dumps({"id": rid, "error": error})
