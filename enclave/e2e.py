"""End-to-end encrypted requests to the enclave (HPKE, RFC 9180): the enclave half.

The format and the client half are ``attestation.e2e`` (imported here).

The enclave holds an X25519 key pair created at start-up; its public key (DER
SubjectPublicKeyInfo) is the ``public_key`` of the attestation documents the enclave hands out.
The wire format (sealed request and reply) is written down once, in ``attestation.e2e``.

The enclave refuses a request id it has seen, or a timestamp outside the replay window, so the
parent cannot replay a sealed request. Nothing here touches the network.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attestation.e2e import (
    _SUITE,
    ENVELOPE_CBOR,
    MAX_NONCE_LEN,
    MAX_SEALED_LEN,
    PLAINTEXT_CBOR,
    REPLY_IV_LEN,
    REPLY_LABEL,
    REQUEST_ID_LEN,
    REQUEST_LABEL,
    RESPONSE_KEY_LEN,
    SUITE_NAME,
    VERSION,
    E2EError,
    ReplyOpener,
    _field,
    _loads_map,
    key_id,
    load_public_key,
    reply_aad,
    request_info,
    seal_request,
)
from attestation.errors import Kind

__all__ = [
    "ENVELOPE_CBOR",
    "MAX_FUTURE_SKEW_S",
    "MAX_NONCE_LEN",
    "MAX_SEALED_LEN",
    "PLAINTEXT_CBOR",
    "REPLY_IV_LEN",
    "REPLY_LABEL",
    "REQUEST_ID_LEN",
    "REQUEST_LABEL",
    "RESPONSE_KEY_LEN",
    "SUITE_NAME",
    "VERSION",
    "E2EError",
    "E2ELimits",
    "EnclaveE2EKey",
    "OpenedRequest",
    "ReplyOpener",
    "key_id",
    "load_public_key",
    "reply_aad",
    "request_info",
    "seal_request",
]

MAX_FUTURE_SKEW_S = 5.0
"""A request may be dated at most this far after the enclave clock (client clocks run ahead)."""


@dataclass(frozen=True)
class E2ELimits:
    """Bounds of the enclave side of the end-to-end channel."""

    replay_window_s: float = 300.0  # a request may be dated this far before the enclave clock
    max_future_skew_s: float = MAX_FUTURE_SKEW_S  # ... and this far after it
    replay_cache_entries: int = 131_072  # request ids remembered (bounded memory)
    max_sealed_len: int = MAX_SEALED_LEN
    max_nonce_len: int = MAX_NONCE_LEN


# ---------------------------------------------------------------- enclave side


@dataclass(frozen=True)
class OpenedRequest:
    """A request the enclave decrypted; ``seal_reply`` answers it."""

    op: str
    body: Any
    request_id: bytes
    response_key: bytes
    nonce: bytes

    def seal_result(self, result: Any) -> bytes:
        return self._seal({"ok": True, "result": result})

    def seal_error(self, code: str, message: str, kind: str = Kind.INTERNAL) -> bytes:
        """A sealed error reply; the kind travels with the code, as on the protocol."""
        error = {"code": code, "kind": str(kind), "message": message}
        return self._seal({"ok": False, "error": error})

    def _seal(self, reply: dict) -> bytes:
        try:
            plain = cbor2.dumps(reply)
        except Exception:
            plain = cbor2.dumps(
                {
                    "ok": False,
                    "error": {
                        "code": "internal", "kind": "internal", "message": "unencodable result"
                    },
                }
            )
        iv = os.urandom(REPLY_IV_LEN)
        ct = AESGCM(self.response_key).encrypt(iv, plain, reply_aad(self.request_id))
        return cbor2.dumps({"v": VERSION, "iv": iv, "ct": ct})


class _ReplayGuard:
    """Remembers recent request ids; refuses repeats and timestamps outside the window.

    A request is accepted when ``now - window <= ts <= now + future_skew`` and its id is new.
    Memory is bounded: when full, the entry that *arrived* first is forgotten and every request
    dated at or before it is refused from then on (so eviction never re-opens a replay). As an
    accepted ts is at most its arrival time plus ``future_skew``, this floor never passes the
    clock by more than the skew: a burst of forged requests, however dated, cannot lock out
    honest clients once it stops; while it runs, refusing one needs ``capacity`` openings
    within ``future_skew`` plus its latency (docs/security.md). Thread-safe (opens run on
    worker threads).
    """

    def __init__(self, window_ms: int, capacity: int, future_skew_ms: int) -> None:
        self._window_ms = window_ms
        self._future_ms = future_skew_ms
        self._capacity = capacity
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # id -> ts, in arrival order
        self._floor_ts = -1
        self._lock = threading.Lock()

    def check_and_add(self, request_id: bytes, ts: int, now_ms: int) -> None:
        if ts < now_ms - self._window_ms:
            raise E2EError("e2e-stale", "request timestamp is older than the replay window")
        if ts > now_ms + self._future_ms:
            raise E2EError(
                "e2e-stale",
                f"request timestamp is more than {self._future_ms} ms ahead of the enclave clock",
            )
        with self._lock:
            self._expire(now_ms)
            if ts <= self._floor_ts:
                raise E2EError("e2e-stale", "request older than the replay guard remembers")
            if request_id in self._seen:
                raise E2EError("e2e-replay", "request id already used")
            self._seen[request_id] = ts
            while len(self._seen) > self._capacity:
                _, old_ts = self._seen.popitem(last=False)
                self._floor_ts = max(self._floor_ts, old_ts)

    def _expire(self, now_ms: int) -> None:
        """Forget ids that arrived long enough ago that their ts is out of the window."""
        limit = now_ms - self._window_ms
        while self._seen:
            rid, ts = next(iter(self._seen.items()))
            if ts >= limit:
                break
            self._seen.pop(rid)

    def __len__(self) -> int:
        return len(self._seen)


class EnclaveE2EKey:
    """The enclave's HPKE key pair and replay guard; opens sealed requests."""

    def __init__(
        self,
        private_key: x25519.X25519PrivateKey | None = None,
        *,
        limits: E2ELimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._private = private_key or x25519.X25519PrivateKey.generate()
        self.limits = limits or E2ELimits()
        self._clock = clock
        self.public_key_der: bytes = self._private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._guard = _ReplayGuard(
            int(self.limits.replay_window_s * 1000),
            self.limits.replay_cache_entries,
            int(self.limits.max_future_skew_s * 1000),
        )

    def open_request(self, sealed: bytes) -> OpenedRequest:
        """Decrypt and check a sealed request; raises ``E2EError`` with a stable code."""
        if not isinstance(sealed, bytes | bytearray):
            raise E2EError("e2e-malformed", "sealed request must be bytes")
        if len(sealed) > self.limits.max_sealed_len:
            raise E2EError("e2e-too-large", "sealed request exceeds the size limit")
        m = _loads_map(bytes(sealed), "sealed request", ENVELOPE_CBOR)
        if m.get("v") != VERSION:
            raise E2EError("e2e-version", f"sealed request version {m.get('v')!r} not supported")
        nonce = _field(m, "nonce", bytes, "sealed request")
        ct = _field(m, "ct", bytes, "sealed request")
        if not 1 <= len(nonce) <= self.limits.max_nonce_len:
            raise E2EError("e2e-malformed", "sealed request nonce length out of range")
        try:
            plain = _SUITE.decrypt(ct, self._private, info=request_info(self.public_key_der, nonce))
        except Exception as exc:  # InvalidTag, or ValueError for a short/garbled enc
            raise E2EError(
                "e2e-decrypt-failed",
                "sealed request could not be opened (sealed to another enclave key?)",
            ) from exc
        inner = _loads_map(plain, "request", PLAINTEXT_CBOR)
        op = _field(inner, "op", str, "request")
        rk = _field(inner, "rk", bytes, "request")
        rid = _field(inner, "id", bytes, "request")
        ts = _field(inner, "ts", int, "request")
        if len(rk) != RESPONSE_KEY_LEN or len(rid) != REQUEST_ID_LEN:
            raise E2EError("e2e-malformed", "response key must be 32 bytes and id 16 bytes")
        self._guard.check_and_add(rid, ts, int(self._clock() * 1000))
        return OpenedRequest(op, inner.get("body"), rid, rk, nonce)
