"""Checks on request bodies shared by the built-in handlers (typed errors, no tracebacks)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from enclave.protocol import HandlerError


def fields(
    body: Any, *, required: Iterable[str] = (), optional: Iterable[str] = ()
) -> dict[str, Any]:
    """``body`` as a map with only the named keys; refuses anything else by name."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise HandlerError("bad-request", "body must be a map")
    required = tuple(required)
    allowed = set(required) | set(optional)
    unknown = sorted(str(k)[:40] for k in body if k not in allowed)
    if unknown:
        raise HandlerError("bad-request", f"unexpected field(s): {', '.join(unknown)}")
    missing = [k for k in required if k not in body]
    if missing:
        raise HandlerError("bad-request", f"missing field(s): {', '.join(missing)}")
    return body


def get_bytes(body: dict, name: str, *, max_len: int, min_len: int = 0) -> bytes:
    value = body.get(name)
    if not isinstance(value, bytes) or not min_len <= len(value) <= max_len:
        raise HandlerError("bad-request", f"{name!r} must be {min_len}..{max_len} bytes")
    return value


def get_str(body: dict, name: str, *, max_len: int = 256) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise HandlerError("bad-request", f"{name!r} must be a string of 1..{max_len} chars")
    return value


def get_str_map(body: dict, name: str, *, max_entries: int = 16, max_len: int = 256) -> dict:
    """An optional {str: str} map such as a KMS encryption context (None -> {})."""
    value = body.get(name)
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > max_entries
        or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= max_len and len(v) <= max_len
            for k, v in value.items()
        )
    ):
        raise HandlerError(
            "bad-request", f"{name!r} must map strings to strings (at most {max_entries})"
        )
    return value
