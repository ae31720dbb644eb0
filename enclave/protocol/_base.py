"""Limits, error codes and error types of the framed protocol (see docs/protocol.md)."""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass

from attestation.errors import CODE_PATTERN, MAX_CODE_LENGTH, CodedError, Kind
from enclave.wire import PROTOCOL_CODES

__all__ = ["CODE_PATTERN", "MAX_CODE_LENGTH"]  # re-exported: defined in attestation.errors

PROTOCOL_VERSION = 1
MAX_U32 = 0xFFFFFFFF
MAX_REQUEST_ID = 2**64 - 1
MAX_OP_LENGTH = 128  # characters of an op name
MAX_MESSAGE_LENGTH = 1024  # characters of an error message (longer ones are cut)

ERROR_CODES: dict[str, str] = {
    # connection-level: sent with "id": null, then the server closes the connection
    "bad-frame": "bad magic, version or flags in a frame header",
    "frame-too-large": "a frame's declared length is over max_frame",
    "truncated": "the connection ended in the middle of a frame",
    "bad-cbor": "a payload is not exactly one well-formed CBOR item within the decoding rules "
    "(request-level when the payload's head still shows its id)",
    "bad-message": "a payload is CBOR but not a map with a valid id",
    "read-timeout": "a started frame was not completed within read_timeout",
    "idle-timeout": "no request for idle_timeout seconds",
    "too-many-connections": "the server already holds max_connections connections",
    "shutting-down": "the server is stopping",
    # request-level: sent with the request's id; the connection stays open
    "bad-request": "the request map has a bad op, body or timeout_ms, or reuses an id in flight",
    "unknown-op": "no handler is registered for the op",
    "timeout": "the request did not finish before its deadline",
    "internal": "the handler failed unexpectedly (details stay in the server's log)",
    "response-too-large": "the encoded response is over max_frame",
    "bad-response": "the handler returned a body that cannot be encoded within the rules",
    # client-side only, never on the wire
    "connection-lost": "the connection dropped or closed while the request was pending",
    "invalid-limits": "a ProtocolLimits field is out of range",
    "bad-handlers": "serve() was given something other than op names mapped to callables",
}


REQUEST_DEADLINE: ContextVar[float | None] = ContextVar("request_deadline", default=None)
"""Event-loop time by which the request being handled must be answered: the server sets it
from ``min(request_timeout, the request's timeout_ms)``, so a handler (``enclave.app``)
derives its own deadline from the caller's instead of setting another one."""


class ProtocolError(CodedError):
    """A protocol failure with a stable ``code`` (see ERROR_CODES), its kind and a ``message``."""

    codes = PROTOCOL_CODES
    show_code = True


class FrameError(ProtocolError):
    """The peer sent bytes that break the wire format. ``request_id`` is set when the
    failure concerns one identified request (code bad-request); otherwise it is None and
    the connection cannot go on."""

    def __init__(self, code: str, message: str, *, request_id: int | None = None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


class RemoteError(ProtocolError):
    """The server answered a request with an error reply ``{code, kind, message}``."""


class ConnectionLostError(ProtocolError):
    """The connection dropped or was closed before the reply came (code connection-lost)."""

    def __init__(self, message: str) -> None:
        super().__init__("connection-lost", message)


class RequestTimeoutError(ProtocolError, TimeoutError):
    """No reply within the request's timeout (code timeout)."""

    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


class HandlerError(CodedError):
    """Raised by a handler to answer with a typed error: its code and message reach the
    client unchanged. Any other exception becomes code "internal" with a generic message.

    ``code``: lowercase letters, digits and dashes, at most 64 characters
    (``attestation.errors.is_code``); a handler error with another code is answered as
    "internal" and logged. ``kind``: one of the error kinds; by default the one
    ``enclave.wire.PROTOCOL_CODES`` gives the code, else ``bad-request``.
    """

    codes = PROTOCOL_CODES
    kind = Kind.BAD_REQUEST
    show_code = True

    def __init__(self, code: str, message: str = "", *, kind: str | None = None) -> None:
        super().__init__(code, str(message), kind=kind)


def clip(text: str, limit: int = MAX_MESSAGE_LENGTH) -> str:
    """``text`` cut to ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check(name: str, value: object, *, integer: bool, upper: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError("invalid-limits", f"ProtocolLimits.{name} must be a number")
    if integer and not isinstance(value, int):
        raise ProtocolError("invalid-limits", f"ProtocolLimits.{name} must be an integer")
    if not (0 < value <= upper and math.isfinite(value)):
        raise ProtocolError(
            "invalid-limits", f"ProtocolLimits.{name} must be in (0, {upper}], got {value}"
        )


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    """Every size and wait of a protocol connection (server and client)."""

    max_frame: int = 16 * 1024 * 1024
    """Largest payload (CBOR bytes after the 8-byte header) sent or accepted."""
    max_in_flight: int = 64
    """Requests handled at once per connection; beyond it the server stops reading."""
    request_timeout: float = 30.0
    """Longest a request may take (server: handler deadline; client: default timeout)."""
    idle_timeout: float = 300.0
    """Server closes a connection with nothing in flight and no byte received this long."""
    read_timeout: float = 10.0
    """Once a frame's first byte arrived, the whole frame must arrive within this."""
    write_timeout: float = 30.0
    """A reply must be accepted by the peer (drained) within this, else the connection
    is aborted (a client that does not read cannot pin the server's memory)."""
    max_connections: int = 256
    """Connections a server holds at once; more are answered too-many-connections."""
    strict_map_keys: bool = True
    """CBOR map keys (and set items) must be text or byte strings: no hash-flooding with
    crafted integer, float or array keys. Set False to accept any hashable key."""

    def __post_init__(self) -> None:
        _check("max_frame", self.max_frame, integer=True, upper=MAX_U32)
        _check("max_in_flight", self.max_in_flight, integer=True)
        _check("max_connections", self.max_connections, integer=True)
        for name in ("request_timeout", "idle_timeout", "read_timeout", "write_timeout"):
            _check(name, getattr(self, name), integer=False)
        if not isinstance(self.strict_map_keys, bool):
            raise ProtocolError("invalid-limits", "ProtocolLimits.strict_map_keys is a bool")
