"""Who may call the local KMS: access keys mapped to principals.

A credential is an access key id, its secret, the principal ARN it authenticates as, an optional
session token (when set, requests must carry exactly it) and the principal's *IAM allow list*:
action patterns its identity policy grants. The allow list is consulted only where a key policy
delegates to IAM with the account-root principal (``arn:aws:iam::ACCOUNT:root``), and for the
operations that have no key (CreateKey, ListKeys, ListAliases, GenerateRandom).

Stored in ``<state>/kms/credentials.json``; written with the defaults below on first start and
re-read when the file changes, so a stack launcher can add or rotate keys while the server runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.kms.store import atomic_write

__all__ = [
    "DEFAULT_ACCOUNT",
    "DEFAULT_CREDENTIALS",
    "MAX_CREDENTIALS_FILE_BYTES",
    "Credential",
    "CredentialError",
    "CredentialStore",
    "normalize_principal",
    "parse_credential_flag",
]

DEFAULT_ACCOUNT = "111122223333"
MAX_CREDENTIALS_FILE_BYTES = 1 << 20
"""credentials.json larger than this is refused."""

_ACCESS_KEY_RE = re.compile(r"^[A-Z0-9]{16,128}$")
_ARN_RE = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::(\d{12}):(\S+)$")
_ASSUMED_ROLE_RE = re.compile(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/.+$")


class CredentialError(Exception):
    """A credentials file or flag is unusable; ``code`` is ``bad-credentials``."""

    code = "bad-credentials"


@dataclass(frozen=True)
class Credential:
    """One access key and the principal it authenticates."""

    access_key_id: str
    secret_access_key: str
    principal: str
    session_token: str | None = None
    iam_actions: tuple[str, ...] = field(default=())

    @property
    def account(self) -> str:
        """The 12-digit account of the principal."""
        match = _ARN_RE.match(self.principal)
        assert match is not None  # checked on construction by _credential_from
        return match.group(2)

    @property
    def principal_arn(self) -> str:
        """The principal as key policies name it (assumed-role sessions → their role ARN)."""
        return normalize_principal(self.principal)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "principal": self.principal,
            "iam_actions": list(self.iam_actions),
        }
        if self.session_token is not None:
            out["session_token"] = self.session_token
        return out


def normalize_principal(arn: str) -> str:
    """``arn:aws:sts::A:assumed-role/R/S`` → ``arn:aws:iam::A:role/R``; other ARNs unchanged."""
    match = _ASSUMED_ROLE_RE.match(arn)
    if match:
        partition, account, role = match.groups()
        return f"arn:{partition}:iam::{account}:role/{role}"
    return arn


DEFAULT_CREDENTIALS: tuple[Credential, ...] = (
    Credential(
        access_key_id="AKIASIMOPERATOR00001",
        secret_access_key="sim-operator-secret-key",
        principal=f"arn:aws:iam::{DEFAULT_ACCOUNT}:user/operator",
        iam_actions=("kms:*",),
    ),
    Credential(
        access_key_id="AKIASIMPARENTROLE001",
        secret_access_key="sim-parent-role-secret-key",
        principal=f"arn:aws:iam::{DEFAULT_ACCOUNT}:role/parent-instance-role",
        iam_actions=("kms:GenerateRandom",),
    ),
)
"""Local defaults: an operator (administers keys, encrypts) and the parent instance role (which
the enclave also uses). The role's IAM list grants no key use: only key policies can."""


def _credential_from(obj: Any) -> Credential:
    if not isinstance(obj, Mapping):
        raise CredentialError("each credential must be a JSON object")
    try:
        access = obj["access_key_id"]
        secret = obj["secret_access_key"]
        principal = obj["principal"]
    except KeyError as exc:
        raise CredentialError(f"credential lacks {exc.args[0]!r}") from None
    token = obj.get("session_token")
    actions = obj.get("iam_actions", [])
    if not isinstance(access, str) or not _ACCESS_KEY_RE.match(access):
        raise CredentialError("access_key_id must be 16-128 upper-case letters or digits")
    if not isinstance(secret, str) or not secret:
        raise CredentialError("secret_access_key must be a non-empty string")
    if not isinstance(principal, str) or not _ARN_RE.match(principal):
        raise CredentialError(f"principal is not an IAM/STS ARN: {principal!r}")
    if token is not None and (not isinstance(token, str) or not token):
        raise CredentialError("session_token must be a non-empty string when present")
    if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
        raise CredentialError("iam_actions must be a list of strings")
    return Credential(access, secret, principal, token, tuple(actions))


def parse_credential_flag(text: str) -> Credential:
    """``ACCESS:SECRET:ARN`` (the ARN may contain colons) → Credential with IAM ``kms:*``."""
    parts = text.split(":", 2)
    if len(parts) != 3:
        raise CredentialError("expected ACCESS_KEY_ID:SECRET:PRINCIPAL_ARN")
    access, secret, principal = parts
    return _credential_from(
        {
            "access_key_id": access,
            "secret_access_key": secret,
            "principal": principal,
            "iam_actions": ["kms:*"],
        }
    )


class CredentialStore:
    """Access keys by id, backed by a JSON file that is re-read when it changes."""

    def __init__(self, path: Path, extra: Iterable[Credential] = ()) -> None:
        self._path = path
        self._extra = {c.access_key_id: c for c in extra}
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._by_id: dict[str, Credential] = {}
        if not path.exists():
            self.save(DEFAULT_CREDENTIALS)
        self._reload()

    @property
    def path(self) -> Path:
        return self._path

    def save(self, credentials: Iterable[Credential]) -> None:
        """Replace the file's contents (atomically; mode 0600)."""
        text = json.dumps([c.to_json() for c in credentials], indent=2) + "\n"
        atomic_write(self._path, text.encode(), mode=0o600)

    def _reload(self) -> None:
        st = os.stat(self._path)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        if st.st_size > MAX_CREDENTIALS_FILE_BYTES:
            raise CredentialError(f"{self._path} is larger than {MAX_CREDENTIALS_FILE_BYTES} B")
        try:
            data = json.loads(self._path.read_bytes())
        except (OSError, ValueError) as exc:
            raise CredentialError(f"cannot read {self._path}: {exc}") from None
        if not isinstance(data, list):
            raise CredentialError(f"{self._path} must hold a JSON list")
        by_id = {c.access_key_id: c for c in map(_credential_from, data)}
        by_id.update(self._extra)
        self._by_id = by_id
        self._stamp = stamp

    def lookup(self, access_key_id: str) -> Credential | None:
        """The credential for ``access_key_id``; a broken file keeps the last good set."""
        with self._lock:
            with contextlib.suppress(OSError, CredentialError):
                self._reload()
            return self._by_id.get(access_key_id)

    def all(self) -> list[Credential]:
        with self._lock:
            return list(self._by_id.values())
