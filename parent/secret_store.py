"""Where the parent keeps what ``POST /v1/seal-load`` registered, so a restarted enclave gets it.

A :class:`SecretRecord` is the KMS ciphertext, the secret's name and kind and the encryption
context: what the enclave needs to open the secret again with attested KMS. It never holds
plaintext (the parent never sees any). Two stores share one small interface:

* :class:`DirectoryStore` (default) — one JSON file per secret in the parent's state
  directory, written atomically (temporary file, ``fsync``, ``rename``, ``fsync`` of the
  directory): a crash leaves the old record or the new one, never half of one;
* :class:`S3Store` — one object per secret under an S3 prefix, shared by a fleet of parents.

``open_store("DIR")`` or ``open_store("s3://bucket/prefix", endpoint_url=...)`` picks one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from attestation.errors import CodedError, Kind
from enclave.sealed import KINDS, NAME_PATTERN

__all__ = [
    "DirectoryStore",
    "S3Store",
    "SecretRecord",
    "SecretStore",
    "StoreError",
    "StoreLimits",
    "open_store",
]

RECORD_SUFFIX = ".json"
RECORD_VERSION = 1


class StoreError(CodedError):
    """The store could not be read or written, or a record is malformed (``code`` says which)."""

    codes = {
        "bad-record": Kind.INTERNAL,
        "bad-store": Kind.BAD_REQUEST,
        "store-failed": Kind.UNAVAILABLE,
        "store-full": Kind.CONFLICT,
    }

    show_code = True


@dataclass(frozen=True)
class StoreLimits:
    max_records: int = 256  # the enclave's own SealedLimits.max_secrets
    max_ciphertext: int = 6144  # KMS CiphertextBlob limit
    max_context_pairs: int = 16
    max_context_chars: int = 2048  # all keys and values of one encryption context
    max_record_bytes: int = 16 * 1024  # one stored record, as read back


@dataclass(frozen=True)
class SecretRecord:
    """One registered secret: enough to open it again, nothing that reveals it."""

    name: str
    kind: str
    ciphertext: bytes
    encryption_context: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"SecretRecord({self.name!r}, {self.kind!r}, {len(self.ciphertext)} B)"

    def seal_load_body(self) -> dict[str, Any]:
        """The enclave ``seal-load`` request that opens this secret."""
        body: dict[str, Any] = {"name": self.name, "kind": self.kind,
                                "ciphertext": self.ciphertext}
        if self.encryption_context:
            body["encryption_context"] = dict(self.encryption_context)
        return body

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "version": RECORD_VERSION,
                "name": self.name,
                "kind": self.kind,
                "ciphertext": base64.b64encode(self.ciphertext).decode(),
                "encryption_context": dict(self.encryption_context),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_body(cls, body: Mapping[str, Any], limits: StoreLimits | None = None) -> SecretRecord:
        """A record from a ``seal-load`` request body (ciphertext already bytes)."""
        record = cls(
            name=body.get("name"),  # type: ignore[arg-type]
            kind=body.get("kind"),  # type: ignore[arg-type]
            ciphertext=body.get("ciphertext"),  # type: ignore[arg-type]
            encryption_context=body.get("encryption_context") or {},
        )
        record.check(limits or StoreLimits())
        return record

    @classmethod
    def from_bytes(cls, raw: bytes, limits: StoreLimits | None = None) -> SecretRecord:
        limits = limits or StoreLimits()
        if len(raw) > limits.max_record_bytes:
            raise StoreError("bad-record", f"a stored record is over {limits.max_record_bytes} B")
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise StoreError("bad-record", "a stored record is not JSON") from None
        if not isinstance(obj, dict) or obj.get("version") != RECORD_VERSION:
            raise StoreError("bad-record", f"a stored record is not version {RECORD_VERSION}")
        try:
            ciphertext = base64.b64decode(str(obj.get("ciphertext")), validate=True)
        except (binascii.Error, ValueError):
            raise StoreError("bad-record", "a stored ciphertext is not base64") from None
        record = cls(obj.get("name"), obj.get("kind"), ciphertext,  # type: ignore[arg-type]
                     obj.get("encryption_context") or {})
        record.check(limits)
        return record

    def check(self, limits: StoreLimits) -> None:
        """Raise StoreError('bad-record') unless every field is well formed and bounded."""
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise StoreError("bad-record", "a secret name must match " + NAME_PATTERN.pattern)
        if self.kind not in KINDS:
            raise StoreError("bad-record", f"kind must be one of {', '.join(KINDS)}")
        if not isinstance(self.ciphertext, bytes) or not (
            0 < len(self.ciphertext) <= limits.max_ciphertext
        ):
            raise StoreError("bad-record", f"ciphertext must be 1..{limits.max_ciphertext} B")
        ctx = self.encryption_context
        if not isinstance(ctx, Mapping) or len(ctx) > limits.max_context_pairs:
            raise StoreError("bad-record", "encryption_context must be a small string map")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in ctx.items()):
            raise StoreError("bad-record", "encryption_context keys and values must be strings")
        if sum(len(k) + len(v) for k, v in ctx.items()) > limits.max_context_chars:
            raise StoreError("bad-record", "encryption_context is too long")


class SecretStore(Protocol):
    """Durable records of registered secrets (blocking calls: run them off the event loop)."""

    def put(self, record: SecretRecord) -> None: ...

    def delete(self, name: str) -> bool: ...

    def list(self) -> list[SecretRecord]: ...

    def describe(self) -> str: ...


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise StoreError("bad-record", "a secret name must match " + NAME_PATTERN.pattern)
    return name


class DirectoryStore:
    """One file per secret in ``directory`` (mode 0700), each written atomically."""

    def __init__(self, directory: Path | str, limits: StoreLimits | None = None) -> None:
        self.directory = Path(directory)
        self.limits = limits or StoreLimits()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def describe(self) -> str:
        return str(self.directory)

    def _path(self, name: str) -> Path:
        return self.directory / (_check_name(name) + RECORD_SUFFIX)

    def put(self, record: SecretRecord) -> None:
        record.check(self.limits)
        target = self._path(record.name)
        if not target.exists() and len(self._names()) >= self.limits.max_records:
            raise StoreError("store-full", f"the store holds {self.limits.max_records} secrets")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(record.to_bytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StoreError("store-failed", f"cannot write {target}: {exc.strerror}") from None
        self._fsync_dir()

    def delete(self, name: str) -> bool:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError("store-failed", f"cannot delete {name!r}: {exc.strerror}") from None
        self._fsync_dir()
        return True

    def _names(self) -> list[str]:
        return sorted(
            p.name[: -len(RECORD_SUFFIX)]
            for p in self.directory.iterdir()
            if p.name.endswith(RECORD_SUFFIX) and not p.name.startswith(".")
        )

    def list(self) -> list[SecretRecord]:
        out = []
        for name in self._names()[: self.limits.max_records]:
            path = self._path(name)
            try:
                with open(path, "rb") as f:
                    raw = f.read(self.limits.max_record_bytes + 1)
            except FileNotFoundError:
                continue  # deleted meanwhile
            except OSError as exc:
                raise StoreError("store-failed", f"cannot read {path}: {exc.strerror}") from None
            record = SecretRecord.from_bytes(raw, self.limits)
            if record.name != name:
                raise StoreError("bad-record", f"{path} holds a record named {record.name!r}")
            out.append(record)
        return out

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class S3Store:
    """One object per secret at ``s3://bucket/prefix<name>.json`` (boto3; any S3 endpoint)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        limits: StoreLimits | None = None,
    ) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.limits = limits or StoreLimits()
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, name: str) -> str:
        return self.prefix + _check_name(name) + RECORD_SUFFIX

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise StoreError(
                "store-failed", f"S3 {what}: {err.get('Code', '?')}: {err.get('Message', '')}"
            ) from None
        except BotoCoreError as exc:
            raise StoreError("store-failed", f"S3 {what}: {type(exc).__name__}") from None

    def _keys(self) -> list[str]:
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self._call("list", self.client.list_objects_v2, Prefix=self.prefix,
                              MaxKeys=1000, **token)
            for obj in page.get("Contents", []):
                key = obj["Key"]
                rest = key[len(self.prefix):]
                if "/" not in rest and rest.endswith(RECORD_SUFFIX):
                    keys.append(key)
                if len(keys) > self.limits.max_records:
                    return keys
            if not page.get("IsTruncated"):
                return keys
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def put(self, record: SecretRecord) -> None:
        record.check(self.limits)
        key = self._key(record.name)
        keys = self._keys()
        if key not in keys and len(keys) >= self.limits.max_records:
            raise StoreError("store-full", f"the store holds {self.limits.max_records} secrets")
        self._call("put", self.client.put_object, Key=key, Body=record.to_bytes(),
                   ContentType="application/json")

    def delete(self, name: str) -> bool:
        key = self._key(name)
        if key not in self._keys():
            return False
        self._call("delete", self.client.delete_object, Key=key)
        return True

    def list(self) -> list[SecretRecord]:
        out = []
        for key in sorted(self._keys())[: self.limits.max_records]:
            obj = self._call("get", self.client.get_object, Key=key,
                             Range=f"bytes=0-{self.limits.max_record_bytes}")
            record = SecretRecord.from_bytes(obj["Body"].read(), self.limits)
            if self._key(record.name) != key:
                raise StoreError("bad-record", f"{key} holds a record named {record.name!r}")
            out.append(record)
        return out


def open_store(location: str, *, endpoint_url: str | None = None) -> SecretStore:
    """``s3://bucket/prefix`` -> S3Store; anything else is a directory -> DirectoryStore."""
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://"):].partition("/")
        if not bucket:
            raise StoreError("bad-store", f"no bucket in {location!r}")
        return S3Store(bucket, prefix, endpoint_url=endpoint_url)
    return DirectoryStore(location)
