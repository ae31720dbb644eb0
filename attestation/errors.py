"""One exception family with stable codes, shared by the library and the CLI (DESIGN §3).

Every error carries a ``code`` (never reused, never renamed), a human ``message`` and, where a
value was compared, what was ``expected`` versus what was ``found``.

:class:`CodedError` is that shape on its own, the base the other packages' typed errors share;
:class:`AttestationError` is the family this library raises.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar, Final


class Kind(StrEnum):
    """The error kinds (DESIGN §3): every code belongs to one; the wire carries it with the code.

    Callers decide by kind (retry, report, HTTP status); the code says exactly what happened.
    """

    BAD_REQUEST = "bad-request"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not-found"
    CONFLICT = "conflict"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


BAD_REQUEST: Final = Kind.BAD_REQUEST
FORBIDDEN: Final = Kind.FORBIDDEN
NOT_FOUND: Final = Kind.NOT_FOUND
CONFLICT: Final = Kind.CONFLICT
UNAVAILABLE: Final = Kind.UNAVAILABLE
INTERNAL: Final = Kind.INTERNAL
KINDS: Final[tuple[str, ...]] = tuple(k.value for k in Kind)
"""The kinds' names, in the order of DESIGN §3."""
_KIND_NAMES = frozenset(KINDS)

MAX_CODE_LENGTH: Final = 64
CODE_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,63}\Z")
"""Lowercase letters, digits and dashes, 1..64 characters (anchored: ``match`` suffices)."""


def is_code(value: object) -> bool:
    """True for a well-formed error code: lowercase letters, digits, dashes; 1..64 long.

    The one place the code format is checked.
    """
    return isinstance(value, str) and CODE_PATTERN.match(value) is not None


def is_kind(value: object) -> bool:
    """True for one of :data:`KINDS`."""
    return isinstance(value, str) and value in _KIND_NAMES


class CodedError(Exception):
    """An error with a stable ``code``, its ``kind``, a human ``message`` and optional
    ``expected``/``found``.

    A family with one code per class sets ``code`` and ``kind`` as class attributes; a family
    whose instances carry their own code lists every code with its kind in ``codes``. A code
    missing from ``codes`` takes the class's ``kind`` (``internal`` unless the family says
    otherwise); ``kind=`` overrides both. ``str()`` is the message, or ``"code: message"`` when
    the class sets ``show_code``.
    """

    code: str
    kind: str = Kind.INTERNAL
    codes: ClassVar[Mapping[str, str]] = {}
    """The family's codes and their kinds (families with a code per instance)."""
    show_code: ClassVar[bool] = False
    """True: ``str()`` (and ``args``) read ``"code: message"`` instead of the bare message."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        kind: str | None = None,
        expected: Any = None,
        found: Any = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if self.show_code else message)
        self.code = code
        chosen = kind if kind is not None and is_kind(kind) else type(self).kind_of(code)
        self.kind = str(Kind(chosen))  # a plain str on the wire and in JSON
        self.message = message
        self.expected = expected
        self.found = found

    @classmethod
    def kind_of(cls, code: str) -> str:
        """The kind this family gives ``code``."""
        return cls.codes.get(code) or cls.kind

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"code", "kind", "message"}`` plus expected/found when known."""
        out: dict[str, Any] = {"code": self.code, "kind": self.kind, "message": self.message}
        if self.expected is not None:
            out["expected"] = _jsonable(self.expected)
        if self.found is not None:
            out["found"] = _jsonable(self.found)
        return out


class AttestationError(CodedError):
    """Base of every error this library raises; ``code`` is stable and scriptable."""

    code = "attestation-error"
    kind = FORBIDDEN

    def __init__(self, message: str, *, expected: Any = None, found: Any = None) -> None:
        super().__init__(type(self).code, message, expected=expected, found=found)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class MalformedError(AttestationError):
    """The bytes are not a well-formed attestation document (CBOR, COSE or schema)."""

    code = "malformed"
    kind = BAD_REQUEST


class NitroTpmDocumentError(MalformedError):
    """A NitroTPM (EC2 instance) attestation document, not an enclave's NSM document."""

    code = "nitrotpm-document"


class UnsupportedAlgorithmError(AttestationError):
    """The COSE algorithm, digest or key type is not the one Nitro uses (ES384/SHA384/P-384)."""

    code = "unsupported-algorithm"
    kind = BAD_REQUEST


class BadSignatureError(AttestationError):
    """The COSE_Sign1 signature does not verify with the leaf certificate's key."""

    code = "bad-signature"
    kind = FORBIDDEN


class UntrustedRootError(AttestationError):
    """The chain does not end at a pinned trust root."""

    code = "untrusted-root"
    kind = FORBIDDEN


class BadChainError(AttestationError):
    """The certificate path is invalid (signatures, CA flags, key usage, path length, names)."""

    code = "bad-chain"
    kind = FORBIDDEN


class ExpiredError(AttestationError):
    """A certificate in the path had expired at the reference time."""

    code = "expired"
    kind = FORBIDDEN


class NotYetValidError(AttestationError):
    """A certificate in the path was not yet valid at the reference time."""

    code = "not-yet-valid"
    kind = FORBIDDEN


class PcrMismatchError(AttestationError):
    """A PCR differs from the policy's expected value (or is missing)."""

    code = "pcr-mismatch"
    kind = FORBIDDEN


class NonceMismatchError(AttestationError):
    """The document's nonce differs from the expected one."""

    code = "nonce-mismatch"
    kind = FORBIDDEN


class UserDataMismatchError(AttestationError):
    """The document's user_data differs from the expected value."""

    code = "user-data-mismatch"
    kind = FORBIDDEN


class PublicKeyMismatchError(AttestationError):
    """The document's public_key differs from the expected value."""

    code = "public-key-mismatch"
    kind = FORBIDDEN


class StaleError(AttestationError):
    """The document's timestamp is older than allowed, or too far in the future."""

    code = "stale"
    kind = FORBIDDEN


class DebugEnclaveError(AttestationError):
    """The document comes from a debug-mode enclave (all-zero PCR0)."""

    code = "debug-enclave"
    kind = FORBIDDEN


class PolicyError(AttestationError):
    """The policy itself is unusable (e.g. it asks for no check where checks were requested)."""

    code = "invalid-policy"
    kind = BAD_REQUEST


class EifError(AttestationError):
    """An Enclave Image File is corrupt, truncated or not an EIF."""

    code = "bad-eif"
    kind = BAD_REQUEST


ALL_ERRORS: tuple[type[AttestationError], ...] = (
    MalformedError,
    NitroTpmDocumentError,
    UnsupportedAlgorithmError,
    BadSignatureError,
    UntrustedRootError,
    BadChainError,
    ExpiredError,
    NotYetValidError,
    PcrMismatchError,
    NonceMismatchError,
    UserDataMismatchError,
    PublicKeyMismatchError,
    StaleError,
    DebugEnclaveError,
    PolicyError,
    EifError,
)

ERROR_CODES: frozenset[str] = frozenset(e.code for e in ALL_ERRORS)
