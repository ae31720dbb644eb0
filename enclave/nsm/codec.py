"""The NSM wire format (nitro-spec §1.2): CBOR requests and responses, both directions.

The device speaks serde_cbor's externally tagged enums: a unit variant is a text string
(``"DescribeNSM"``), a struct variant a one-key map ``{name: {field: value, ...}}`` with the
fields in declaration order, ``None`` is ``null``, byte buffers are byte strings and the error
newtype is ``{"Error": "<ErrorCode>"}``. The client encodes requests and decodes responses; the
simulator (``simulator.nsm``) decodes requests and encodes responses with the same tables, so
the two cannot drift apart.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import cbor2

from attestation._cbor import KEY_TEXT, CborLimits, decode_strict
from attestation.errors import CodedError, Kind, MalformedError

__all__ = [
    "DIGEST_SIZES",
    "ERROR_CODES",
    "MAX_CBOR_DEPTH",
    "NSM_ERROR_CODES",
    "NSM_REQUEST_MAX_SIZE",
    "NSM_RESPONSE_MAX_SIZE",
    "REQUEST_TYPES",
    "RESPONSE_FOR",
    "SOCKET_FRAME_HEADER",
    "Attestation",
    "AttestationDocumentBytes",
    "DescribeNsm",
    "DescribePcr",
    "ErrorResponse",
    "ExtendPcr",
    "GetRandom",
    "LockPcr",
    "LockPcrs",
    "NsmDescription",
    "NsmError",
    "PcrExtended",
    "PcrInfo",
    "PcrLocked",
    "PcrsLocked",
    "RandomBytes",
    "Request",
    "Response",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

NSM_REQUEST_MAX_SIZE = 0x1000
"""Largest request the kernel driver accepts (``NSM_REQUEST_MAX_SIZE``); larger → EMSGSIZE."""
NSM_RESPONSE_MAX_SIZE = 0x3000
"""Response buffer size of the driver (``NSM_RESPONSE_MAX_SIZE``)."""
MAX_CBOR_DEPTH = 8
NSM_CBOR = CborLimits(
    max_bytes=NSM_RESPONSE_MAX_SIZE,
    max_depth=MAX_CBOR_DEPTH,
    max_items=4096,
    key_types=frozenset({KEY_TEXT}),
)
"""Bounds of every NSM request and reply decoded (the driver's buffers are at most 12 KiB)."""
"""Nesting depth allowed when decoding a message (the deepest real message has depth 3)."""
U16_MAX = 0xFFFF

ERROR_CODES: tuple[str, ...] = (
    "Success",
    "InvalidArgument",
    "InvalidIndex",
    "InvalidResponse",
    "ReadOnlyIndex",
    "InvalidOperation",
    "BufferTooSmall",
    "InputTooLarge",
    "InternalError",
)
"""The NSM ``ErrorCode`` names, in the order of the Rust enum."""

DIGEST_SIZES: dict[str, int] = {"SHA256": 32, "SHA384": 48, "SHA512": 64}
"""The NSM ``Digest`` names and the PCR length each implies."""


NSM_ERROR_CODES: dict[str, tuple[str, str]] = {
    "InvalidArgument": ("nsm-invalid-argument", Kind.BAD_REQUEST),
    "InvalidIndex": ("nsm-invalid-index", Kind.BAD_REQUEST),
    "InvalidResponse": ("nsm-invalid-response", Kind.INTERNAL),
    "ReadOnlyIndex": ("nsm-read-only-index", Kind.CONFLICT),
    "InvalidOperation": ("nsm-invalid-operation", Kind.BAD_REQUEST),
    "BufferTooSmall": ("nsm-buffer-too-small", Kind.INTERNAL),
    "InputTooLarge": ("nsm-input-too-large", Kind.BAD_REQUEST),
    "InternalError": ("nsm-internal-error", Kind.INTERNAL),
    "DeviceUnavailable": ("nsm-device-unavailable", Kind.UNAVAILABLE),
}
"""NSM ``ErrorCode`` name (and the client's ``DeviceUnavailable``) -> (our code, its kind)."""


class NsmError(CodedError):
    """An NSM operation failed. ``nsm_code`` is the NSM ``ErrorCode`` name (or the client's
    ``DeviceUnavailable``); ``code`` and ``kind`` are ours, from ``NSM_ERROR_CODES``.
    """

    codes = dict(NSM_ERROR_CODES.values())
    show_code = True

    def __init__(self, nsm_code: str, message: str | None = None) -> None:
        code = NSM_ERROR_CODES.get(nsm_code, NSM_ERROR_CODES["InternalError"])[0]
        super().__init__(code, message or nsm_code)
        self.nsm_code = nsm_code if nsm_code in NSM_ERROR_CODES else "InternalError"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


# -- field kinds ------------------------------------------------------------------------------
# Each kind checks a decoded CBOR value and returns the Python value, or raises _Bad. The
# encoder runs the same check on the Python side, so a request that encodes also decodes.


class _Bad(Exception):
    """A value has the wrong type or range (turned into the caller's error code)."""


def _u16(v: Any) -> int:
    if type(v) is not int or not 0 <= v <= U16_MAX:
        raise _Bad(f"expected an integer in 0..{U16_MAX}, got {_describe(v)}")
    return v


def _bytes(v: Any) -> bytes:
    if not isinstance(v, bytes | bytearray | memoryview):
        raise _Bad(f"expected bytes, got {_describe(v)}")
    return bytes(v)


def _opt_bytes(v: Any) -> bytes | None:
    return None if v is None else _bytes(v)


def _nonempty_bytes(v: Any) -> bytes:
    b = _bytes(v)
    if not b:
        raise _Bad("expected non-empty bytes")
    return b


def _pcr_value(v: Any) -> bytes:
    b = _bytes(v)
    if len(b) not in DIGEST_SIZES.values():
        raise _Bad(f"a PCR is 32, 48 or 64 bytes, got {len(b)}")
    return b


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _Bad(f"expected a bool, got {_describe(v)}")
    return v


def _text(v: Any) -> str:
    if type(v) is not str:
        raise _Bad(f"expected text, got {_describe(v)}")
    return v


def _u16_set(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list | tuple):
        raise _Bad(f"expected an array, got {_describe(v)}")
    return tuple(sorted({_u16(x) for x in v}))


def _digest(v: Any) -> str:
    if type(v) is not str or v not in DIGEST_SIZES:
        raise _Bad(f"expected one of {sorted(DIGEST_SIZES)}, got {_describe(v)}")
    return v


def _describe(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"


_OPTIONAL_KINDS = {_opt_bytes}
"""Kinds whose field may be missing from a map (serde treats a missing ``Option`` as None)."""


@dataclass(frozen=True)
class _Field:
    wire: str
    attr: str
    kind: Any


# -- messages ---------------------------------------------------------------------------------
# Each message class names its variant (WIRE) and its fields in declaration order (FIELDS);
# FIELDS is None for a unit variant.


@dataclass(frozen=True)
class DescribePcr:
    """Request: value and lock state of one PCR."""

    index: int
    WIRE: ClassVar[str] = "DescribePCR"
    FIELDS: ClassVar[tuple[_Field, ...] | None] = (_Field("index", "index", _u16),)


@dataclass(frozen=True)
class ExtendPcr:
    """Request: ``PCR[index] = SHA384(PCR[index] ‖ data)``."""

    index: int
    data: bytes
    WIRE: ClassVar[str] = "ExtendPCR"
    FIELDS: ClassVar[tuple[_Field, ...] | None] = (
        _Field("index", "index", _u16),
        _Field("data", "data", _bytes),
    )


@dataclass(frozen=True)
class LockPcr:
    """Request: make one PCR read-only until the enclave terminates."""

    index: int
    WIRE: ClassVar[str] = "LockPCR"
    FIELDS: ClassVar[tuple[_Field, ...] | None] = (_Field("index", "index", _u16),)


@dataclass(frozen=True)
class LockPcrs:
    """Request: lock PCRs ``[0, range_)``."""

    range_: int
    WIRE: ClassVar[str] = "LockPCRs"
    FIELDS: ClassVar[tuple[_Field, ...] | None] = (_Field("range", "range_", _u16),)


@dataclass(frozen=True)
class DescribeNsm:
    """Request: version, module id, PCR count, locked PCRs and digest of the NSM."""

    WIRE: ClassVar[str] = "DescribeNSM"
    FIELDS: ClassVar[tuple[_Field, ...] | None] = None


@dataclass(frozen=True)
class Attestation:
    """Request: an attestation document carrying the given optional fields."""

    user_data: bytes | None = None
    nonce: bytes | None = None
    public_key: bytes | None = None
    WIRE: ClassVar[str] = "Attestation"
    FIELDS: ClassVar[tuple[_Field, ...] | None] = (
        _Field("user_data", "user_data", _opt_bytes),
        _Field("nonce", "nonce", _opt_bytes),
        _Field("public_key", "public_key", _opt_bytes),
    )


@dataclass(frozen=True)
class GetRandom:
    """Request: random bytes from the NSM's entropy source."""

    WIRE: ClassVar[str] = "GetRandom"
    FIELDS: ClassVar[tuple[_Field, ...] | None] = None


@dataclass(frozen=True)
class PcrInfo:
    """Response to DescribePCR: whether the PCR is locked and its value."""

    locked: bool
    data: bytes
    WIRE: ClassVar[str] = "DescribePCR"
    FIELDS: ClassVar[tuple[_Field, ...] | None] = (
        _Field("lock", "locked", _bool),
        _Field("data", "data", _pcr_value),
    )


@dataclass(frozen=True)
class PcrExtended:
    """Response to ExtendPCR: the PCR's new value."""

    data: bytes
    WIRE: ClassVar[str] = "ExtendPCR"
    FIELDS: ClassVar[tuple[_Field, ...] | None] = (_Field("data", "data", _pcr_value),)


@dataclass(frozen=True)
class PcrLocked:
    """Response to LockPCR (a unit variant)."""

    WIRE: ClassVar[str] = "LockPCR"
    FIELDS: ClassVar[tuple[_Field, ...] | None] = None


@dataclass(frozen=True)
class PcrsLocked:
    """Response to LockPCRs (a unit variant)."""

    WIRE: ClassVar[str] = "LockPCRs"
    FIELDS: ClassVar[tuple[_Field, ...] | None] = None


@dataclass(frozen=True)
class NsmDescription:
    """Response to DescribeNSM."""

    version_major: int
    version_minor: int
    version_patch: int
    module_id: str
    max_pcrs: int
    locked_pcrs: tuple[int, ...]
    digest: str
    WIRE: ClassVar[str] = "DescribeNSM"
    FIELDS: ClassVar[tuple[_Field, ...] | None] = (
        _Field("version_major", "version_major", _u16),
        _Field("version_minor", "version_minor", _u16),
        _Field("version_patch", "version_patch", _u16),
        _Field("module_id", "module_id", _text),
        _Field("max_pcrs", "max_pcrs", _u16),
        _Field("locked_pcrs", "locked_pcrs", _u16_set),
        _Field("digest", "digest", _digest),
    )

    @property
    def version(self) -> str:
        """``"major.minor.patch"``."""
        return f"{self.version_major}.{self.version_minor}.{self.version_patch}"


@dataclass(frozen=True)
class AttestationDocumentBytes:
    """Response to Attestation: the COSE_Sign1 document."""

    document: bytes
    WIRE: ClassVar[str] = "Attestation"
    FIELDS: ClassVar[tuple[_Field, ...] | None] = (_Field("document", "document", _nonempty_bytes),)


@dataclass(frozen=True)
class RandomBytes:
    """Response to GetRandom."""

    random: bytes
    WIRE: ClassVar[str] = "GetRandom"
    FIELDS: ClassVar[tuple[_Field, ...] | None] = (_Field("random", "random", _bytes),)


@dataclass(frozen=True)
class ErrorResponse:
    """Response ``{"Error": code}``."""

    code: str


Request = DescribePcr | ExtendPcr | LockPcr | LockPcrs | DescribeNsm | Attestation | GetRandom
Response = (
    PcrInfo
    | PcrExtended
    | PcrLocked
    | PcrsLocked
    | NsmDescription
    | AttestationDocumentBytes
    | RandomBytes
)

REQUEST_TYPES: tuple[type, ...] = (
    DescribePcr,
    ExtendPcr,
    LockPcr,
    LockPcrs,
    DescribeNsm,
    Attestation,
    GetRandom,
)
RESPONSE_FOR: dict[type, type] = {
    DescribePcr: PcrInfo,
    ExtendPcr: PcrExtended,
    LockPcr: PcrLocked,
    LockPcrs: PcrsLocked,
    DescribeNsm: NsmDescription,
    Attestation: AttestationDocumentBytes,
    GetRandom: RandomBytes,
}
"""Which response variant answers which request."""

_REQUEST_BY_WIRE: dict[str, type] = {t.WIRE: t for t in REQUEST_TYPES}  # type: ignore[attr-defined]


# -- encoding ---------------------------------------------------------------------------------


def _to_wire(message: Any) -> Any:
    """The CBOR data model value of a message (checks every field's type and range)."""
    spec: tuple[_Field, ...] | None = type(message).FIELDS
    if spec is None:
        return type(message).WIRE
    body = {}
    for f in spec:
        value = f.kind(getattr(message, f.attr))
        body[f.wire] = list(value) if isinstance(value, tuple) else value
    return {type(message).WIRE: body}


def encode_request(request: Request) -> bytes:
    """CBOR bytes of a request, byte-exact as the Rust NSM library writes them.

    Raises ``NsmError("InvalidArgument")`` for a field of the wrong type or range and
    ``NsmError("InputTooLarge")`` when the encoding exceeds ``NSM_REQUEST_MAX_SIZE``.
    """
    if type(request) not in _REQUEST_BY_WIRE.values():
        raise NsmError("InvalidArgument", f"not an NSM request: {type(request).__name__}")
    try:
        data = cbor2.dumps(_to_wire(request))
    except _Bad as e:
        raise NsmError("InvalidArgument", f"{request.WIRE}: {e}") from None
    if len(data) > NSM_REQUEST_MAX_SIZE:
        raise NsmError(
            "InputTooLarge",
            f"{request.WIRE} request is {len(data)} bytes; the NSM takes {NSM_REQUEST_MAX_SIZE}",
        )
    return data


def encode_response(response: Response | ErrorResponse) -> bytes:
    """CBOR bytes of a response (used by the simulated NSM)."""
    if isinstance(response, ErrorResponse):
        return cbor2.dumps({"Error": response.code})
    try:
        return cbor2.dumps(_to_wire(response))
    except _Bad as e:
        raise NsmError("InternalError", f"cannot encode {response.WIRE}: {e}") from None


# -- decoding ---------------------------------------------------------------------------------


def _load_cbor(data: bytes) -> Any:
    """Exactly one CBOR item within NSM_CBOR (attestation's strict decoder); raises _Bad."""
    try:
        return decode_strict(data, "NSM message", NSM_CBOR)
    except MalformedError as e:
        raise _Bad(f"not CBOR ({e.message})") from None


def _variant(value: Any) -> tuple[str, Any, bool]:
    """``(name, body, is_unit)`` of an externally tagged enum value; raises _Bad."""
    if type(value) is str:
        return value, None, True
    if isinstance(value, dict) and len(value) == 1:
        ((name, body),) = value.items()
        if type(name) is str:
            return name, body, False
    raise _Bad(f"expected a text string or a one-key map, got {_describe(value)}")


_T = TypeVar("_T")


def _from_body(cls: type[_T], body: Any, is_unit: bool) -> _T:
    spec: tuple[_Field, ...] | None = cls.FIELDS  # type: ignore[attr-defined]
    if spec is None:
        if not is_unit:
            raise _Bad(f"{cls.WIRE} is a unit variant")  # type: ignore[attr-defined]
        return cls()
    if is_unit or not isinstance(body, dict):
        raise _Bad(f"{cls.WIRE} needs a map of fields")  # type: ignore[attr-defined]
    values = {}
    for f in spec:
        if f.wire in body:
            values[f.attr] = f.kind(body[f.wire])
        elif f.kind in _OPTIONAL_KINDS:
            values[f.attr] = None
        else:
            raise _Bad(f"field {f.wire!r} is missing")
    return cls(**values)


def decode_request(data: bytes) -> Request:
    """Parse a request as the device does (used by the simulated NSM).

    Raises ``NsmError`` with ``InputTooLarge`` (over 4096 bytes), ``InvalidOperation`` (not CBOR
    or not a known request) or ``InvalidArgument`` (a known request with bad fields).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise NsmError("InvalidOperation", "a request is bytes")
    data = bytes(data)
    if len(data) > NSM_REQUEST_MAX_SIZE:
        raise NsmError("InputTooLarge", f"request of {len(data)} bytes")
    try:
        name, body, is_unit = _variant(_load_cbor(data))
    except _Bad as e:
        raise NsmError("InvalidOperation", str(e)) from None
    cls = _REQUEST_BY_WIRE.get(name)
    if cls is None:
        raise NsmError("InvalidOperation", f"unknown request {name[:40]!r}")
    try:
        return _from_body(cls, body, is_unit)
    except _Bad as e:
        raise NsmError("InvalidArgument", f"{name}: {e}") from None


def decode_response(data: bytes, expected: type[_T]) -> _T:
    """Parse the answer to a request whose response type is ``expected``.

    ``{"Error": code}`` raises ``NsmError(code)``; anything else that is not exactly an
    ``expected`` response raises ``NsmError("InvalidResponse")``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise NsmError("InvalidResponse", f"the transport returned {type(data).__name__}")
    data = bytes(data)
    if len(data) > NSM_RESPONSE_MAX_SIZE:
        raise NsmError("InvalidResponse", f"response of {len(data)} bytes exceeds the buffer")
    try:
        name, body, is_unit = _variant(_load_cbor(data))
    except _Bad as e:
        raise NsmError("InvalidResponse", str(e)) from None
    if name == "Error" and not is_unit:
        if type(body) is str and body in ERROR_CODES and body != "Success":
            raise NsmError(body, f"the NSM answered {body}")
        raise NsmError("InvalidResponse", f"unknown error code {_describe(body)}")
    wire = expected.WIRE  # type: ignore[attr-defined]
    if name != wire:
        raise NsmError("InvalidResponse", f"expected a {wire} response, got {name[:40]!r}")
    try:
        return _from_body(expected, body, is_unit)
    except _Bad as e:
        raise NsmError("InvalidResponse", f"{wire}: {e}") from None


SOCKET_FRAME_HEADER = struct.Struct(">I")
"""Frames one message on the simulated NSM's Unix socket: a u32 big-endian length
(the real device takes one ioctl per message, unframed)."""
