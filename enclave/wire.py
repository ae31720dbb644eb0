"""The parent <-> enclave wire contract in one place: ports, op names and error kinds.

Every process (enclave, parent services, simulator) takes these facts from here; see
docs/protocol.md for the frame format and docs/architecture.md for who uses which.
"""

from __future__ import annotations

from typing import Final

from attestation.errors import (
    BAD_REQUEST,
    CONFLICT,
    FORBIDDEN,
    INTERNAL,
    KINDS,
    MAX_CODE_LENGTH,
    NOT_FOUND,
    UNAVAILABLE,
    is_code,
    is_kind,
)

__all__ = [
    "APP_PORT",
    "ATTESTATION_OP",
    "BAD_REQUEST",
    "CONFLICT",
    "DESCRIBE_OP",
    "E2E_OP",
    "FORBIDDEN",
    "HEALTH_OP",
    "INGRESS_PORT",
    "INTERNAL",
    "KINDS",
    "KMS_RELAY_PORT",
    "MAX_CODE_LENGTH",
    "NOT_FOUND",
    "PARENT_CID",
    "SET_CREDENTIALS_OP",
    "UNAVAILABLE",
    "is_code",
    "is_kind",
    "is_op_name",
]

PARENT_CID: Final = 3
"""The parent instance's vsock CID, as seen from inside an enclave."""
APP_PORT: Final = 5000
"""vsock port the enclave app serves the framed protocol on (``python -m enclave``)."""
KMS_RELAY_PORT: Final = 8000
"""vsock port on the parent where the KMS relay listens (``python -m parent kms-relay``)."""
INGRESS_PORT: Final = 5443
"""vsock port of the enclave's attested TLS listener (``python -m enclave --asgi``)."""

HEALTH_OP: Final = "health"
DESCRIBE_OP: Final = "describe"
ATTESTATION_OP: Final = "attestation"
E2E_OP: Final = "e2e"
SET_CREDENTIALS_OP: Final = "set-credentials"
"""Built-in operations every enclave app answers (enclave/handlers/)."""


def is_op_name(value: object) -> bool:
    """True for a well-formed operation name. Op names share the error-code format (lowercase
    letters, digits, dashes; 1..64 long), so they fit a URL path segment as they are."""
    return is_code(value)


PROTOCOL_CODES: Final[dict[str, str]] = {
    # connection-level (sent with "id": null, then the connection closes)
    "bad-frame": BAD_REQUEST,
    "frame-too-large": BAD_REQUEST,
    "truncated": BAD_REQUEST,
    "bad-cbor": BAD_REQUEST,
    "bad-message": BAD_REQUEST,
    "read-timeout": BAD_REQUEST,
    "idle-timeout": UNAVAILABLE,
    "too-many-connections": UNAVAILABLE,
    "shutting-down": UNAVAILABLE,
    # request-level
    "bad-request": BAD_REQUEST,
    "unknown-op": NOT_FOUND,
    "timeout": UNAVAILABLE,
    "internal": INTERNAL,
    "response-too-large": INTERNAL,
    "bad-response": INTERNAL,
    # the app framework (enclave.app) and its built-in operations (enclave/handlers/)
    "busy": UNAVAILABLE,
    "deadline-exceeded": UNAVAILABLE,
    "forbidden-field": BAD_REQUEST,
    "bad-kind": BAD_REQUEST,
    "wrong-kind": BAD_REQUEST,
    "bad-data-key": BAD_REQUEST,
    "envelope-auth-failed": BAD_REQUEST,
    # client side only, never on the wire
    "connection-lost": UNAVAILABLE,
    "secret-store-failed": UNAVAILABLE,  # parent: loaded, but not kept for restarts
    "invalid-limits": INTERNAL,
    "bad-handlers": INTERNAL,
}
"""Codes of the framed protocol and of the app framework, with their kinds. A handler's own
``HandlerError`` code not listed here is ``bad-request`` unless it passes ``kind=``; errors of
the other families (sealed store, e2e, KMS, NSM, credentials) bring their own kinds."""
