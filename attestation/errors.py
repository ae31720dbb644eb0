"""One exception family with stable codes, shared by the library and the CLI (DESIGN §3).

Every error carries a ``code`` (never reused, never renamed), a human ``message`` and, where a
value was compared, what was ``expected`` versus what was ``found``.

:class:`CodedError` is that shape on its own, the base the other packages' typed errors share;
:class:`AttestationError` is the family this library raises.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CodedError(Exception):
    """An error with a stable ``code``, a human ``message`` and optional ``expected``/``found``.

    A family with one code per class passes its class attribute (``type(self).code``); others
    pass the code per instance. ``str()`` is the message, or ``"code: message"`` when the class
    sets ``show_code``.
    """

    code: str
    show_code: ClassVar[bool] = False
    """True: ``str()`` (and ``args``) read ``"code: message"`` instead of the bare message."""

    def __init__(self, code: str, message: str, *, expected: Any = None, found: Any = None) -> None:
        super().__init__(f"{code}: {message}" if self.show_code else message)
        self.code = code
        self.message = message
        self.expected = expected
        self.found = found

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"code", "message"}`` plus expected/found when known."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.expected is not None:
            out["expected"] = _jsonable(self.expected)
        if self.found is not None:
            out["found"] = _jsonable(self.found)
        return out


class AttestationError(CodedError):
    """Base of every error this library raises; ``code`` is stable and scriptable."""

    code: ClassVar[str] = "attestation-error"

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


class NitroTpmDocumentError(MalformedError):
    """A NitroTPM (EC2 instance) attestation document, not an enclave's NSM document."""

    code = "nitrotpm-document"


class UnsupportedAlgorithmError(AttestationError):
    """The COSE algorithm, digest or key type is not the one Nitro uses (ES384/SHA384/P-384)."""

    code = "unsupported-algorithm"


class BadSignatureError(AttestationError):
    """The COSE_Sign1 signature does not verify with the leaf certificate's key."""

    code = "bad-signature"


class UntrustedRootError(AttestationError):
    """The chain does not end at a pinned trust root."""

    code = "untrusted-root"


class BadChainError(AttestationError):
    """The certificate path is invalid (signatures, CA flags, key usage, path length, names)."""

    code = "bad-chain"


class ExpiredError(AttestationError):
    """A certificate in the path had expired at the reference time."""

    code = "expired"


class NotYetValidError(AttestationError):
    """A certificate in the path was not yet valid at the reference time."""

    code = "not-yet-valid"


class PcrMismatchError(AttestationError):
    """A PCR differs from the policy's expected value (or is missing)."""

    code = "pcr-mismatch"


class NonceMismatchError(AttestationError):
    """The document's nonce differs from the expected one."""

    code = "nonce-mismatch"


class UserDataMismatchError(AttestationError):
    """The document's user_data differs from the expected value."""

    code = "user-data-mismatch"


class PublicKeyMismatchError(AttestationError):
    """The document's public_key differs from the expected value."""

    code = "public-key-mismatch"


class StaleError(AttestationError):
    """The document's timestamp is older than allowed, or too far in the future."""

    code = "stale"


class DebugEnclaveError(AttestationError):
    """The document comes from a debug-mode enclave (all-zero PCR0)."""

    code = "debug-enclave"


class PolicyError(AttestationError):
    """The policy itself is unusable (e.g. it asks for no check where checks were requested)."""

    code = "invalid-policy"


class EifError(AttestationError):
    """An Enclave Image File is corrupt, truncated or not an EIF."""

    code = "bad-eif"


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
