"""What to accept once a document is authentic: one small check class per claim.

A :class:`Policy` is built from keyword arguments and turned into a tuple of checks run in a
fixed order (debug mode first, then freshness, PCRs, nonce, user data, public key). Each check
raises the error of its claim with what was expected and what was found. A policy that would
check nothing where the caller asked for a check (``pcrs={}``, ``any_of=[]``, a PCR set with
no entries) is refused with :class:`PolicyError` when it is built, never silently passed.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from .document import PCR_INDEX_LIMIT, PCR_SIZES, AttestationDocument
from .errors import (
    AttestationError,
    DebugEnclaveError,
    NonceMismatchError,
    PcrMismatchError,
    PolicyError,
    PublicKeyMismatchError,
    StaleError,
    UserDataMismatchError,
)

__all__ = [
    "DEFAULT_MAX_SKEW",
    "AnyOfPcrs",
    "Check",
    "Fresh",
    "NonceMatches",
    "NotDebug",
    "PcrsMatch",
    "Policy",
    "PublicKeyMatches",
    "UserDataMatches",
]

DEFAULT_MAX_SKEW = timedelta(seconds=60)
"""How far a document's timestamp may lie in the future of the reference time."""
IMAGE_SHA384_SIZE = 48


class Check(Protocol):
    """One checked claim: raise the claim's AttestationError, or return None."""

    def __call__(self, doc: AttestationDocument, at: datetime) -> None: ...


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _to_bytes(value: bytes | str, what: str) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        text = value.strip()
        if text[:2].lower() == "0x":
            text = text[2:]
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise PolicyError(f"{what} is not valid hex") from None
    raise PolicyError(f"{what} must be bytes or a hex string, not {type(value).__name__}")


def _pcr_set(values: Mapping[int, bytes | str], what: str) -> dict[int, bytes]:
    if not isinstance(values, Mapping):
        raise PolicyError(f"{what} must be a mapping of PCR index to value")
    if not values:
        raise PolicyError(f"{what} is empty: it would check nothing")
    out: dict[int, bytes] = {}
    for index, value in values.items():
        if type(index) is not int or not 0 <= index < PCR_INDEX_LIMIT:
            raise PolicyError(f"{what}: PCR index {index!r} is not an int in 0..31")
        raw = _to_bytes(value, f"{what}[{index}]")
        if len(raw) not in PCR_SIZES:
            raise PolicyError(f"{what}[{index}] is {len(raw)} bytes; a PCR is 32, 48 or 64")
        out[index] = raw
    return out


def _pcr_differences(expected: Mapping[int, bytes], doc: AttestationDocument) -> list[int]:
    return [i for i, v in expected.items() if not _equal(doc.pcrs.get(i), v)]


def _equal(found: bytes | None, expected: bytes) -> bool:
    return found is not None and hmac.compare_digest(found, expected)


class NotDebug:
    """The enclave is not in debug mode (PCR0 is not all zero)."""

    def __call__(self, doc: AttestationDocument, at: datetime) -> None:
        if doc.is_debug:
            raise DebugEnclaveError(
                "document comes from a debug-mode enclave (PCR0 is all zero); "
                "pass allow_debug=True to accept it",
                expected="non-zero PCR0",
                found=_hex(doc.pcrs.get(0)),
            )


class Fresh:
    """The timestamp is at most ``max_age`` old (when set) and at most ``max_skew`` ahead."""

    def __init__(self, max_age: timedelta | None, max_skew: timedelta) -> None:
        self.max_age = max_age
        self.max_skew = max_skew

    def __call__(self, doc: AttestationDocument, at: datetime) -> None:
        age_ms = round(at.timestamp() * 1000) - doc.timestamp
        if -age_ms > self.max_skew / timedelta(milliseconds=1):
            raise StaleError(
                f"document timestamp is {-age_ms / 1000:.3f} s in the future",
                expected=f"<= {self.max_skew.total_seconds():g} s ahead",
                found=f"{-age_ms / 1000:.3f} s ahead",
            )
        if self.max_age is not None and age_ms > self.max_age / timedelta(milliseconds=1):
            raise StaleError(
                f"document is {age_ms / 1000:.3f} s old",
                expected=f"<= {self.max_age.total_seconds():g} s",
                found=f"{age_ms / 1000:.3f} s",
            )


class PcrsMatch:
    """Every listed PCR has exactly the expected value."""

    def __init__(self, expected: Mapping[int, bytes]) -> None:
        self.expected = dict(expected)

    def __call__(self, doc: AttestationDocument, at: datetime) -> None:
        wrong = _pcr_differences(self.expected, doc)
        if wrong:
            raise PcrMismatchError(
                "PCR" + ", PCR".join(map(str, wrong)) + " differ from the policy",
                expected={i: self.expected[i].hex() for i in wrong},
                found={i: _hex(doc.pcrs.get(i)) for i in wrong},
            )


class AnyOfPcrs:
    """At least one of several PCR sets matches (e.g. old and new image during a deploy)."""

    def __init__(self, options: Sequence[Mapping[int, bytes]]) -> None:
        self.options = [dict(o) for o in options]

    def __call__(self, doc: AttestationDocument, at: datetime) -> None:
        if any(not _pcr_differences(option, doc) for option in self.options):
            return
        indexes = sorted({i for option in self.options for i in option})
        raise PcrMismatchError(
            f"PCRs match none of the {len(self.options)} acceptable sets",
            expected=[{i: v.hex() for i, v in o.items()} for o in self.options],
            found={i: _hex(doc.pcrs.get(i)) for i in indexes},
        )


class _FieldMatches:
    field = ""
    error: type[AttestationError] = PcrMismatchError

    def __init__(self, expected: bytes) -> None:
        self.expected = expected

    def __call__(self, doc: AttestationDocument, at: datetime) -> None:
        found = getattr(doc, self.field)
        if not _equal(found, self.expected):
            state = "absent" if found is None else "different"
            raise self.error(
                f"{self.field} is {state}",
                expected=self.expected.hex(),
                found=_hex(found),
            )


class NonceMatches(_FieldMatches):
    """The document carries exactly the expected nonce."""

    field = "nonce"
    error = NonceMismatchError


class UserDataMatches(_FieldMatches):
    """The document carries exactly the expected user_data (b"" means present and empty)."""

    field = "user_data"
    error = UserDataMismatchError


class PublicKeyMatches(_FieldMatches):
    """The document binds exactly the expected public_key."""

    field = "public_key"
    error = PublicKeyMismatchError


def _optional_bytes(value: bytes | None, what: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, bytes | bytearray):
        raise PolicyError(f"{what} must be bytes, not {type(value).__name__}")
    return bytes(value)


@dataclass(frozen=True, eq=False, repr=False)
class Policy:
    """What an authentic document must also satisfy. Immutable once built; derive another
    with ``dataclasses.replace(policy, nonce=...)`` (the new one is checked the same way).

    ``pcrs``: any subset of PCRs (index -> bytes or hex). ``any_of``: several acceptable PCR
    sets, one must match. ``image_sha384``: alias of PCR0 (KMS ``ImageSha384``). ``nonce``,
    ``user_data``, ``public_key``: exact bytes. ``max_age``: oldest accepted timestamp relative
    to the reference time; ``max_skew``: how far in the future it may be. Debug-mode documents
    are refused unless ``allow_debug=True``.
    """

    pcrs: Mapping[int, bytes | str] | None = None
    any_of: Sequence[Mapping[int, bytes | str]] | None = None
    image_sha384: bytes | str | None = None
    nonce: bytes | None = None
    user_data: bytes | None = None
    public_key: bytes | None = None
    max_age: timedelta | None = None
    max_skew: timedelta = DEFAULT_MAX_SKEW
    allow_debug: bool = False
    _checks: tuple[Check, ...] = field(init=False, repr=False, default=())
    _description: str = field(init=False, repr=False, default="")

    def __post_init__(self) -> None:
        pcrs, any_of, max_age, max_skew = self.pcrs, self.any_of, self.max_age, self.max_skew
        allow_debug = self.allow_debug
        expected = _pcr_set(pcrs, "pcrs") if pcrs is not None else {}
        pcrs_only = dict(expected)
        image: bytes | None = None
        if self.image_sha384 is not None:
            image = _to_bytes(self.image_sha384, "image_sha384")
            if len(image) != IMAGE_SHA384_SIZE:
                raise PolicyError(f"image_sha384 is {len(image)} bytes, expected 48")
            if 0 in expected and expected[0] != image:
                raise PolicyError("image_sha384 and pcrs[0] disagree (image_sha384 is PCR0)")
            expected[0] = image
        options: list[dict[int, bytes]] | None = None
        if any_of is not None:
            if isinstance(any_of, Mapping | str | bytes) or not isinstance(any_of, Sequence):
                raise PolicyError("any_of must be a sequence of PCR mappings")
            if not any_of:
                raise PolicyError("any_of is empty: no PCR set could ever match")
            options = [_pcr_set(o, f"any_of[{n}]") for n, o in enumerate(any_of)]
        if max_age is not None and (not isinstance(max_age, timedelta) or max_age <= timedelta(0)):
            raise PolicyError("max_age must be a positive timedelta")
        if not isinstance(max_skew, timedelta) or max_skew < timedelta(0):
            raise PolicyError("max_skew must be a non-negative timedelta")
        if not isinstance(allow_debug, bool):
            raise PolicyError("allow_debug must be a bool")

        checks: list[Check] = []
        described: list[str] = []
        if not allow_debug:
            checks.append(NotDebug())
            described.append("not debug")
        checks.append(Fresh(max_age, max_skew))
        described.append(f"max_age={max_age}" if max_age is not None else f"max_skew={max_skew}")
        if expected:
            checks.append(PcrsMatch(expected))
            described.append("pcrs=" + ",".join(map(str, sorted(expected))))
        if options is not None:
            checks.append(AnyOfPcrs(options))
            described.append(f"any_of={len(options)} sets")
        normalized: dict[str, bytes | None] = {}
        for name, value, check in (
            ("nonce", self.nonce, NonceMatches),
            ("user_data", self.user_data, UserDataMatches),
            ("public_key", self.public_key, PublicKeyMatches),
        ):
            raw = normalized[name] = _optional_bytes(value, name)
            if raw is not None:
                checks.append(check(raw))
                described.append(name)
        # The fields keep their validated, normalized values (bytes, plain dicts, tuples).
        put = object.__setattr__
        put(self, "pcrs", pcrs_only if pcrs is not None else None)
        put(self, "image_sha384", image)
        put(self, "any_of", tuple(options) if options is not None else None)
        for name, raw in normalized.items():
            put(self, name, raw)
        put(self, "_checks", tuple(checks))
        put(self, "_description", "; ".join(described))

    @property
    def checks(self) -> tuple[Check, ...]:
        """The checks in the order they run."""
        return self._checks

    @property
    def allows_debug(self) -> bool:
        return not any(isinstance(c, NotDebug) for c in self._checks)

    def check(self, doc: AttestationDocument, at: datetime) -> None:
        """Run every check against an authentic document; the first failure is raised."""
        for check in self._checks:
            check(doc, at)

    def __repr__(self) -> str:
        return f"Policy({self._description})"


DEFAULT_POLICY_CHECKS: tuple[Check, ...] = (NotDebug(),)
"""What ``policy=None`` still enforces: debug-mode documents are refused."""
