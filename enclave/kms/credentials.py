"""AWS credentials the parent hands to the enclave, held in memory and fed to boto3.

The enclave has no instance metadata service: the parent reads its instance-role credentials
and pushes them with the protocol operation ``set-credentials`` (parent/credentials.py), again
before they expire. They are not secret from the parent (the attestation document is what
gates KMS), but they never reach a log or a file here.

boto3 sees them through a stock botocore credential provider returning
``DeferredRefreshableCredentials`` whose refresh function reads this store: while the held
credentials have more than ``CredentialLimits.min_validity_s`` left it returns at once;
otherwise (none yet, or about to expire) the request WAITS up to ``CredentialLimits.wait_s`` for
the parent to push fresh ones, then fails with ``CredentialsError("credentials-unavailable")``.

    store = CredentialStore()
    handlers = {SET_CREDENTIALS_OP: store.handle_set_credentials, ...}   # enclave.protocol.serve
    kms_client = store.boto3_session(region).client("kms", ...)
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import botocore.session
from botocore.credentials import (
    CredentialProvider,
    CredentialResolver,
    DeferredRefreshableCredentials,
)

from attestation.errors import Kind
from enclave.protocol import HandlerError
from enclave.wire import SET_CREDENTIALS_OP

__all__ = [
    "DEFAULT_REGION",
    "SET_CREDENTIALS_OP",
    "AwsCredentials",
    "CredentialLimits",
    "CredentialStore",
    "CredentialsError",
    "ParentCredentialProvider",
    "limit_sdk_debug_logs",
    "parse_credentials",
]

"""Protocol operation carrying credentials from the parent."""
DEFAULT_REGION = "us-east-1"
"""Region when neither the app nor the parent names one (kmstool's default too)."""

MAX_ACCESS_KEY_ID = 128
MAX_SECRET_ACCESS_KEY = 256
MAX_SESSION_TOKEN = 16_384
MAX_REGION = 32

_ACCESS_KEY_RE = re.compile(r"[A-Z0-9]{16,128}")
_SECRET_RE = re.compile(r"[\x21-\x7e]{1,256}")  # printable ASCII, no spaces
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,16384}")
_REGION_RE = re.compile(r"[a-z]{2}(-[a-z0-9]+){1,3}-\d{1,2}")
_FIELDS = frozenset(
    {"access_key_id", "secret_access_key", "session_token", "expiration", "region"}
)


class CredentialsError(HandlerError):
    """Bad or missing credentials; `code` is stable, the message never holds a secret.

    Codes: ``bad-credentials`` (a field is missing or malformed), ``credentials-expired``
    (already expired, or about to), ``credentials-unavailable`` (none arrived in time).
    A HandlerError, so the protocol answers ``set-credentials`` with this code.
    """

    codes = {
        "bad-credentials": Kind.BAD_REQUEST,
        "credentials-expired": Kind.UNAVAILABLE,
        "credentials-unavailable": Kind.UNAVAILABLE,
    }


@dataclass(frozen=True)
class CredentialLimits:
    """Waits and margins (seconds)."""

    wait_s: float = 10.0
    """A request waits this long for usable credentials before failing."""
    min_validity_s: float = 60.0
    """Credentials closer than this to expiry are not used (and not accepted)."""
    static_lifetime_s: float = 3600.0
    """Credentials without an expiration are re-read from the store this often."""


@dataclass(frozen=True, repr=False)
class AwsCredentials:
    """One set of credentials. `repr` shows no secret."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None
    expiration: datetime | None  # timezone-aware; None = does not expire
    region: str | None = None

    def __repr__(self) -> str:
        exp = self.expiration.isoformat() if self.expiration else None
        return f"AwsCredentials(expiration={exp!r}, region={self.region!r}, secrets=hidden)"

    def remaining(self, now: datetime) -> float:
        """Seconds until expiry (infinite when it has none)."""
        if self.expiration is None:
            return float("inf")
        return (self.expiration - now).total_seconds()


SDK_LOGGERS = ("botocore", "boto3")
"""Loggers that print the session token (and raw response bodies) at DEBUG level."""
SDK_MIN_LOG_LEVEL = logging.INFO


def limit_sdk_debug_logs() -> None:
    """Keep botocore's DEBUG records (canonical requests carry the session token) out of
    every log: their loggers are set to INFO unless already stricter."""
    for name in SDK_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < SDK_MIN_LOG_LEVEL:
            logger.setLevel(SDK_MIN_LOG_LEVEL)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def parse_credentials(body: Any) -> AwsCredentials:
    """Validate a ``set-credentials`` body; CredentialsError("bad-credentials") otherwise."""
    if not isinstance(body, Mapping):
        raise CredentialsError("bad-credentials", "body must be a map")
    unknown = {str(k)[:40] for k in body if k not in _FIELDS}
    if unknown:
        raise CredentialsError("bad-credentials", f"unknown fields: {sorted(unknown)}")
    access_key_id = _field(body, "access_key_id", _ACCESS_KEY_RE, required=True)
    secret = _field(body, "secret_access_key", _SECRET_RE, required=True)
    token = _field(body, "session_token", _TOKEN_RE, required=False)
    region = _field(body, "region", _REGION_RE, required=False)
    expiration = _expiration(body.get("expiration"))
    assert access_key_id is not None and secret is not None
    return AwsCredentials(access_key_id, secret, token, expiration, region)


def _field(body: Mapping, name: str, pattern: re.Pattern, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise CredentialsError("bad-credentials", f"{name} is missing")
        return None
    if not isinstance(value, str):
        raise CredentialsError("bad-credentials", f"{name} must be a string")
    if not pattern.fullmatch(value):  # the value itself is never echoed
        raise CredentialsError("bad-credentials", f"{name} is malformed")
    return value


def _expiration(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        if len(value) > 64:
            raise CredentialsError("bad-credentials", "expiration is malformed")
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise CredentialsError(
                "bad-credentials", "expiration must be ISO 8601 with a time zone"
            ) from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            value = datetime.fromtimestamp(value, UTC)
        except (ValueError, OverflowError, OSError):
            raise CredentialsError("bad-credentials", "expiration is out of range") from None
    if not isinstance(value, datetime):
        raise CredentialsError("bad-credentials", "expiration must be an ISO 8601 string")
    if value.tzinfo is None or value.utcoffset() is None:
        raise CredentialsError("bad-credentials", "expiration must carry a time zone")
    return value.astimezone(UTC)


class CredentialStore:
    """The latest credentials from the parent; thread-safe; waits are bounded."""

    def __init__(
        self,
        limits: CredentialLimits | None = None,
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.limits = limits or CredentialLimits()
        self._clock = clock
        self._cond = threading.Condition()
        self._current: AwsCredentials | None = None
        self.updates = 0

    # -- filling -------------------------------------------------------------------------------

    def set(self, credentials: AwsCredentials) -> None:
        """Hold `credentials` from now on (wakes waiting requests)."""
        if credentials.remaining(self._clock()) <= self.limits.min_validity_s:
            raise CredentialsError(
                "credentials-expired",
                f"credentials expire in less than {self.limits.min_validity_s:g} s",
            )
        with self._cond:
            self._current = credentials
            self.updates += 1
            self._cond.notify_all()

    async def handle_set_credentials(self, body: Any) -> dict[str, Any]:
        """Handler of the protocol op ``set-credentials`` (body: the five fields).

        Returns ``{"expiration": ISO or None, "region": ...}``; errors carry a `code`.
        """
        credentials = parse_credentials(body)
        self.set(credentials)
        exp = credentials.expiration.isoformat() if credentials.expiration else None
        return {"expiration": exp, "region": credentials.region}

    # -- reading -------------------------------------------------------------------------------

    def get(self) -> AwsCredentials | None:
        """The held credentials, usable or not (None before the first push)."""
        with self._cond:
            return self._current

    @property
    def region(self) -> str | None:
        """The region named by the last push, if any."""
        current = self.get()
        return current.region if current else None

    def _usable(self) -> AwsCredentials | None:
        c = self._current
        if c is not None and c.remaining(self._clock()) > self.limits.min_validity_s:
            return c
        return None

    def wait_usable(self, timeout: float | None = None) -> AwsCredentials:
        """Credentials valid for more than `min_validity_s`, waiting up to `timeout`
        (default `limits.wait_s`) for the parent to push them."""
        timeout = self.limits.wait_s if timeout is None else timeout
        with self._cond:
            found = self._cond.wait_for(self._usable, timeout=timeout)
        if found is None:
            state = "expired" if self._current is not None else "never received"
            raise CredentialsError(
                "credentials-unavailable",
                f"no valid AWS credentials from the parent within {timeout:g} s "
                f"(credentials {state}; is `python -m parent credentials` running?)",
            )
        return found

    def refresh_metadata(self) -> dict[str, str | None]:
        """botocore refresh callback: the credential metadata dict it expects."""
        c = self.wait_usable()
        expiry = c.expiration or self._clock() + timedelta(seconds=self.limits.static_lifetime_s)
        return {
            "access_key": c.access_key_id,
            "secret_key": c.secret_access_key,
            "token": c.session_token,
            "expiry_time": expiry.isoformat(),
        }

    # -- boto3 ---------------------------------------------------------------------------------

    def botocore_provider(self) -> ParentCredentialProvider:
        return ParentCredentialProvider(self)

    def boto3_session(self, region: str | None = None) -> boto3.Session:
        """A boto3 Session whose only credential source is this store (and botocore's
        DEBUG logs, which would print the session token, switched off)."""
        limit_sdk_debug_logs()
        core = botocore.session.Session()
        core.register_component(
            "credential_provider", CredentialResolver([self.botocore_provider()])
        )
        return boto3.Session(botocore_session=core, region_name=region)


class ParentCredentialProvider(CredentialProvider):
    """botocore credential provider reading a `CredentialStore` (refresh waits, bounded)."""

    METHOD = "nitro-parent"
    CANONICAL_NAME = "NitroParent"

    def __init__(self, store: CredentialStore) -> None:
        super().__init__()
        self._store = store

    def load(self) -> DeferredRefreshableCredentials:
        return DeferredRefreshableCredentials(
            refresh_using=self._store.refresh_metadata, method=self.METHOD
        )
