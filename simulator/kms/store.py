"""Keys, policies and aliases of the local KMS, persisted in the state directory.

Layout under ``<state>/kms/``: ``keys/<key-id>.json`` (one file per key: metadata, policy and the
key material, base64) and ``aliases.json``. Every write goes to a temporary file in the same
folder, is fsynced and renamed over the old one, so a crash or restart never loses or tears a
key. Key material is stored unwrapped: this is a simulator; the folder is created mode 0700 and
the files 0600.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import tempfile
import threading
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from attestation.errors import CodedError, Kind

__all__ = [
    "MAX_ALIASES",
    "MAX_KEYS",
    "Alias",
    "KeyRecord",
    "KeyStore",
    "StoreError",
    "atomic_write",
]

MAX_KEYS = 10_000
"""Keys one state directory may hold (LimitExceededException beyond)."""

MAX_ALIASES = 10_000
"""Aliases one state directory may hold."""

MAX_STATE_FILE_BYTES = 1 << 20
"""A key or alias file larger than this is refused when loading."""

_KEY_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class StoreError(CodedError):
    """The state directory is unusable or a limit is reached; ``code`` says which."""

    codes = {"corrupt-state": Kind.INTERNAL, "limit": Kind.CONFLICT}


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class KeyRecord:
    """One KMS key: metadata, its key policy (JSON text) and the key material."""

    key_id: str
    arn: str
    account: str
    creation_date: float
    description: str
    key_spec: str  # SYMMETRIC_DEFAULT or ECC_NIST_P256/P384/P521 (KEY_AGREEMENT)
    key_usage: str  # ENCRYPT_DECRYPT, KEY_AGREEMENT or SIGN_VERIFY
    key_state: str  # Enabled | Disabled | PendingDeletion
    policy: str
    material: bytes  # AES-256 key, or PKCS#8 DER of the private key
    deletion_date: float | None = None
    pending_window_days: int | None = None

    @property
    def enabled(self) -> bool:
        return self.key_state == "Enabled"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["material"] = base64.b64encode(self.material).decode()
        return out

    @classmethod
    def from_json(cls, obj: Any) -> KeyRecord:
        if not isinstance(obj, dict):
            raise StoreError("corrupt-state", "key file is not a JSON object")
        try:
            fields = dict(obj)
            fields["material"] = base64.b64decode(fields["material"], validate=True)
            record = cls(**fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError("corrupt-state", f"key file is invalid: {exc}") from None
        if not _KEY_ID_RE.match(record.key_id):
            raise StoreError("corrupt-state", "key file has an invalid key id")
        return record

    def with_changes(self, **changes: Any) -> KeyRecord:
        return replace(self, **changes)


@dataclass(frozen=True)
class Alias:
    """``alias/name`` → key id."""

    name: str
    arn: str
    target_key_id: str
    creation_date: float
    last_updated_date: float


def new_key_id() -> str:
    """A fresh key id, shaped like KMS's (UUID4)."""
    return str(uuid.uuid4())


class KeyStore:
    """Thread-safe, persisted keys and aliases of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self._root = Path(state_dir) / "kms"
        self._keys_dir = self._root / "keys"
        self._aliases_path = self._root / "aliases.json"
        self._lock = threading.RLock()
        for directory in (self._root, self._keys_dir):  # 0700 whatever the umask
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(directory, 0o700)
        self._keys: dict[str, KeyRecord] = {}
        self._aliases: dict[str, Alias] = {}
        self._load()

    @property
    def root(self) -> Path:
        """``<state>/kms``."""
        return self._root

    def _load(self) -> None:
        for path in sorted(self._keys_dir.glob("*.json")):
            if path.stat().st_size > MAX_STATE_FILE_BYTES:
                raise StoreError("corrupt-state", f"{path} is too large")
            try:
                record = KeyRecord.from_json(json.loads(path.read_bytes()))
            except ValueError as exc:
                raise StoreError("corrupt-state", f"{path}: {exc}") from None
            self._keys[record.key_id] = record
        if self._aliases_path.exists():
            if self._aliases_path.stat().st_size > MAX_STATE_FILE_BYTES:
                raise StoreError("corrupt-state", f"{self._aliases_path} is too large")
            try:
                raw = json.loads(self._aliases_path.read_bytes())
                self._aliases = {a["name"]: Alias(**a) for a in raw}
            except (ValueError, TypeError, KeyError) as exc:
                raise StoreError("corrupt-state", f"{self._aliases_path}: {exc}") from None

    # keys -------------------------------------------------------------------------------
    def put_key(self, record: KeyRecord) -> None:
        """Create or replace a key, persisting it before it becomes visible."""
        with self._lock:
            if record.key_id not in self._keys and len(self._keys) >= MAX_KEYS:
                raise StoreError("limit", f"at most {MAX_KEYS} keys")
            data = json.dumps(record.to_json(), indent=1).encode()
            atomic_write(self._keys_dir / f"{record.key_id}.json", data)
            self._keys[record.key_id] = record

    def get_key(self, key_id: str) -> KeyRecord | None:
        with self._lock:
            return self._keys.get(key_id)

    def keys(self) -> list[KeyRecord]:
        """All keys, oldest first (stable order for ListKeys paging)."""
        with self._lock:
            return sorted(self._keys.values(), key=lambda r: (r.creation_date, r.key_id))

    # aliases ----------------------------------------------------------------------------
    def aliases(self) -> list[Alias]:
        with self._lock:
            return sorted(self._aliases.values(), key=lambda a: a.name)

    def get_alias(self, name: str) -> Alias | None:
        with self._lock:
            return self._aliases.get(name)

    def put_alias(self, alias: Alias) -> None:
        with self._lock:
            if alias.name not in self._aliases and len(self._aliases) >= MAX_ALIASES:
                raise StoreError("limit", f"at most {MAX_ALIASES} aliases")
            updated = dict(self._aliases)
            updated[alias.name] = alias
            self._save_aliases(updated)

    def delete_alias(self, name: str) -> None:
        with self._lock:
            updated = {k: v for k, v in self._aliases.items() if k != name}
            self._save_aliases(updated)

    def _save_aliases(self, aliases: dict[str, Alias]) -> None:
        data = json.dumps([asdict(a) for a in aliases.values()], indent=1).encode()
        atomic_write(self._aliases_path, data)
        self._aliases = aliases
