"""The local KMS's symmetric ciphertext blob: self-describing, AES-256-GCM, context-bound.

Layout: ``0x01 | key id (36 ASCII bytes, UUID) | nonce (12) | AES-GCM ciphertext ‖ tag (16)``.
The additional data binds the format label, the key id and the canonical encryption context
(sorted keys, compact JSON, UTF-8), so Decrypt finds the key without a KeyId, as real KMS does,
and any change to blob, key id or context fails authentication. (Real KMS blobs have another,
undocumented layout; callers treat both as opaque.)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["BLOB_OVERHEAD", "blob_key_id", "open_blob", "seal_blob"]

_VERSION = 1
_KEY_ID_LEN = 36
_NONCE_LEN = 12
_TAG_LEN = 16
_LABEL = b"nitro-toolkit-sim-kms/v1\x00"
_KEY_ID_RE = re.compile(rb"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

BLOB_OVERHEAD = 1 + _KEY_ID_LEN + _NONCE_LEN + _TAG_LEN
"""Bytes a blob adds to its plaintext (65)."""


class BlobError(Exception):
    """Not a blob of this KMS, or it does not authenticate (→ InvalidCiphertextException)."""


def _aad(key_id: str, context: Mapping[str, str] | None) -> bytes:
    canonical = json.dumps(
        dict(context or {}), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return _LABEL + key_id.encode() + b"\x00" + canonical.encode()


def seal_blob(
    key_id: str, key: bytes, plaintext: bytes, context: Mapping[str, str] | None
) -> bytes:
    """Encrypt ``plaintext`` under the 32-byte ``key`` of ``key_id``."""
    nonce = os.urandom(_NONCE_LEN)
    sealed = AESGCM(key).encrypt(nonce, plaintext, _aad(key_id, context))
    return bytes([_VERSION]) + key_id.encode() + nonce + sealed


def blob_key_id(blob: bytes) -> str:
    """The key id a blob names; raises :class:`BlobError` if it is not one of ours."""
    if len(blob) < BLOB_OVERHEAD or blob[0] != _VERSION:
        raise BlobError("not a ciphertext of this KMS")
    raw = blob[1 : 1 + _KEY_ID_LEN]
    if not _KEY_ID_RE.match(raw):
        raise BlobError("not a ciphertext of this KMS")
    return raw.decode()


def open_blob(key: bytes, blob: bytes, context: Mapping[str, str] | None) -> bytes:
    """Decrypt and authenticate ``blob``; raises :class:`BlobError`."""
    key_id = blob_key_id(blob)
    start = 1 + _KEY_ID_LEN
    nonce = blob[start : start + _NONCE_LEN]
    try:
        return AESGCM(key).decrypt(nonce, blob[start + _NONCE_LEN :], _aad(key_id, context))
    except InvalidTag:
        raise BlobError("ciphertext or encryption context does not authenticate") from None
