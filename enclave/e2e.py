"""End-to-end encrypted requests to the enclave (HPKE, RFC 9180), both sides of the codec.

The enclave holds an X25519 key pair created at start-up; its public key (DER
SubjectPublicKeyInfo) is the ``public_key`` of the attestation documents the enclave hands out.
A client that verified such a document seals a request to that key; the parent relays bytes it
cannot read. Wire format (all CBOR maps, docs/app.md "End-to-end requests"):

* sealed request ``{"v": 1, "nonce": bstr, "ct": bstr}`` where ``ct`` is HPKE base mode
  (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) single-shot ``enc || ciphertext`` with
  ``info = REQUEST_LABEL || 0x00 || SHA-256(enclave SPKI) || nonce``; ``nonce`` is the nonce of
  the attestation document the client verified. The plaintext is
  ``{"op": tstr, "body": any, "rk": bstr(32), "id": bstr(16), "ts": uint (ms)}``.
* sealed reply ``{"v": 1, "iv": bstr(12), "ct": bstr}``: AES-256-GCM under the response key
  ``rk`` chosen by the client, ``aad = REPLY_LABEL || 0x00 || id``; the plaintext is
  ``{"ok": true, "result": any}`` or ``{"ok": false, "error": {"code", "kind", "message"}}``.

The enclave refuses a request id it has seen, or a timestamp outside the replay window, so the
parent cannot replay a sealed request. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attestation._cbor import KEY_BYTES, KEY_INT, KEY_TEXT, CborLimits, decode_strict
from attestation.errors import CodedError, Kind, MalformedError

VERSION = 1
SUITE_NAME = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM"
REQUEST_LABEL = b"nitro-toolkit/e2e/v1/request"
REPLY_LABEL = b"nitro-toolkit/e2e/v1/reply"
RESPONSE_KEY_LEN = 32
REQUEST_ID_LEN = 16
REPLY_IV_LEN = 12
MAX_NONCE_LEN = 512
MAX_SEALED_LEN = 1 << 20
MAX_FUTURE_SKEW_S = 5.0
"""A request may be dated at most this far after the enclave clock (client clocks run ahead)."""

ENVELOPE_CBOR = CborLimits(
    max_bytes=MAX_SEALED_LEN, max_depth=1, max_items=16, key_types=frozenset({KEY_TEXT})
)
"""A sealed request or reply: one flat map of text keys (decoded before any authentication)."""
PLAINTEXT_CBOR = CborLimits(
    max_bytes=MAX_SEALED_LEN,
    max_depth=32,
    max_items=65_536,
    key_types=frozenset({KEY_TEXT, KEY_BYTES, KEY_INT}),
)
"""A request or reply plaintext (the app's body inside): text, byte-string or small-int keys."""

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


class E2EError(CodedError):
    """A sealed request or reply could not be built or opened; ``code`` is stable."""

    codes = {
        "e2e-malformed": Kind.BAD_REQUEST,
        "e2e-version": Kind.BAD_REQUEST,
        "e2e-decrypt-failed": Kind.BAD_REQUEST,
        "e2e-stale": Kind.BAD_REQUEST,
        "e2e-replay": Kind.CONFLICT,
        "e2e-too-large": Kind.BAD_REQUEST,
        "e2e-bad-key": Kind.BAD_REQUEST,
    }
    kind = Kind.BAD_REQUEST
    show_code = True


@dataclass(frozen=True)
class E2ELimits:
    """Bounds of the enclave side of the end-to-end channel."""

    replay_window_s: float = 300.0  # a request may be dated this far before the enclave clock
    max_future_skew_s: float = MAX_FUTURE_SKEW_S  # ... and this far after it
    replay_cache_entries: int = 131_072  # request ids remembered (bounded memory)
    max_sealed_len: int = MAX_SEALED_LEN
    max_nonce_len: int = MAX_NONCE_LEN


def key_id(spki_der: bytes) -> bytes:
    """SHA-256 of the enclave's public key (DER SPKI) — what the request info binds."""
    return hashlib.sha256(spki_der).digest()


def request_info(spki_der: bytes, nonce: bytes) -> bytes:
    """The HPKE ``info`` of a request: label, the recipient key's hash and the session nonce."""
    return REQUEST_LABEL + b"\x00" + key_id(spki_der) + nonce


def reply_aad(request_id: bytes) -> bytes:
    return REPLY_LABEL + b"\x00" + request_id


def _loads_map(data: bytes, what: str, limits: CborLimits) -> dict:
    try:
        value = decode_strict(data, what, limits)
    except MalformedError as exc:
        raise E2EError("e2e-malformed", exc.message) from None
    if not isinstance(value, dict):
        raise E2EError("e2e-malformed", f"{what} must be a CBOR map")
    return value


def _field(m: dict, name: str, kind: type, what: str) -> Any:
    value = m.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise E2EError("e2e-malformed", f"{what}: field {name!r} must be {kind.__name__}")
    return value


def load_public_key(spki_der: bytes) -> x25519.X25519PublicKey:
    """The enclave's HPKE public key from the attestation document's ``public_key``."""
    try:
        key = serialization.load_der_public_key(spki_der)
    except Exception as exc:
        raise E2EError("e2e-bad-key", "public_key is not a DER SubjectPublicKeyInfo") from exc
    if not isinstance(key, x25519.X25519PublicKey):
        raise E2EError("e2e-bad-key", "public_key is not an X25519 key (HPKE suite " + SUITE_NAME)
    return key


# ---------------------------------------------------------------- client side


@dataclass(frozen=True)
class ReplyOpener:
    """Opens the sealed reply to one request (holds that request's response key)."""

    response_key: bytes
    request_id: bytes

    def open(self, sealed_reply: bytes) -> dict:
        """Decrypt a sealed reply -> ``{"ok": True, "result"}`` or ``{"ok": False, "error"}``."""
        if not isinstance(sealed_reply, bytes | bytearray) or len(sealed_reply) > MAX_SEALED_LEN:
            raise E2EError("e2e-malformed", "sealed reply must be bytes within MAX_SEALED_LEN")
        m = _loads_map(bytes(sealed_reply), "sealed reply", ENVELOPE_CBOR)
        if m.get("v") != VERSION:
            raise E2EError("e2e-version", f"sealed reply version {m.get('v')!r} not supported")
        iv = _field(m, "iv", bytes, "sealed reply")
        ct = _field(m, "ct", bytes, "sealed reply")
        if len(iv) != REPLY_IV_LEN:
            raise E2EError("e2e-malformed", "sealed reply iv must be 12 bytes")
        try:
            plain = AESGCM(self.response_key).decrypt(iv, ct, reply_aad(self.request_id))
        except InvalidTag as exc:
            raise E2EError("e2e-decrypt-failed", "sealed reply failed authentication") from exc
        reply = _loads_map(plain, "reply", PLAINTEXT_CBOR)
        if not isinstance(reply.get("ok"), bool):
            raise E2EError("e2e-malformed", "reply lacks a boolean 'ok'")
        return reply


def seal_request(
    spki_der: bytes,
    nonce: bytes,
    op: str,
    body: Any = None,
    *,
    now_ms: int | None = None,
) -> tuple[bytes, ReplyOpener]:
    """Seal ``(op, body)`` to the enclave key ``spki_der`` for the attested session ``nonce``.

    Returns the sealed request (bytes to send through the parent) and the opener of its reply.
    """
    if not isinstance(nonce, bytes) or not 1 <= len(nonce) <= MAX_NONCE_LEN:
        raise E2EError("e2e-malformed", f"nonce must be 1..{MAX_NONCE_LEN} bytes")
    if not isinstance(op, str) or not op:
        raise E2EError("e2e-malformed", "op must be a non-empty string")
    public_key = load_public_key(spki_der)
    opener = ReplyOpener(os.urandom(RESPONSE_KEY_LEN), os.urandom(REQUEST_ID_LEN))
    ts = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        plain = cbor2.dumps(
            {"op": op, "body": body, "rk": opener.response_key, "id": opener.request_id, "ts": ts}
        )
    except Exception as exc:
        raise E2EError("e2e-malformed", "body cannot be encoded as CBOR") from exc
    ct = _SUITE.encrypt(plain, public_key, info=request_info(spki_der, nonce))
    sealed = cbor2.dumps({"v": VERSION, "nonce": nonce, "ct": ct})
    if len(sealed) > MAX_SEALED_LEN:
        raise E2EError("e2e-too-large", f"sealed request exceeds {MAX_SEALED_LEN} bytes")
    return sealed, opener


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
