"""End-to-end encrypted requests to an enclave (HPKE, RFC 9180): the format and the client half.

The enclave holds an X25519 key pair; its public key (DER SubjectPublicKeyInfo) is the
``public_key`` of the attestation documents it hands out. A service that verified such a
document seals a request to that key with :func:`seal_request` and opens the answer with the
returned :class:`ReplyOpener`; the parent relays bytes it cannot read. The enclave half
(opening requests, the replay guard) is ``enclave.e2e``. Wire format (all CBOR maps,
docs/app.md "End-to-end requests"):

* sealed request ``{"v": 1, "nonce": bstr, "ct": bstr}`` where ``ct`` is HPKE base mode
  (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) single-shot ``enc || ciphertext`` with
  ``info = REQUEST_LABEL || 0x00 || SHA-256(enclave SPKI) || nonce``; ``nonce`` is the nonce of
  the attestation document the client verified. The plaintext is
  ``{"op": tstr, "body": any, "rk": bstr(32), "id": bstr(16), "ts": uint (ms)}``.
* sealed reply ``{"v": 1, "iv": bstr(12), "ct": bstr}``: AES-256-GCM under the response key
  ``rk`` chosen by the client, ``aad = REPLY_LABEL || 0x00 || id``; the plaintext is
  ``{"ok": true, "result": any}`` or ``{"ok": false, "error": {"code", "kind", "message"}}``.

Nothing here touches the network, or imports ``enclave`` or ``parent``.
"""

from __future__ import annotations

import hashlib
import os
import time
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


def key_id(spki_der: bytes) -> bytes:
    """SHA-256 of the enclave's public key (DER SPKI) — what the request info binds."""
    return hashlib.sha256(spki_der).digest()


def request_info(spki_der: bytes, nonce: bytes) -> bytes:
    """The HPKE ``info`` of a request: label, the recipient key's hash and the session nonce."""
    return REQUEST_LABEL + b"\x00" + key_id(spki_der) + nonce


def reply_aad(request_id: bytes) -> bytes:
    return REPLY_LABEL + b"\x00" + request_id


def _loads_map(data: bytes, what: str, limits: CborLimits) -> dict[str, Any]:
    try:
        value = decode_strict(data, what, limits)
    except MalformedError as exc:
        raise E2EError("e2e-malformed", exc.message) from None
    if not isinstance(value, dict):
        raise E2EError("e2e-malformed", f"{what} must be a CBOR map")
    return value


def _field(m: dict[str, Any], name: str, kind: type[Any], what: str) -> Any:
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


@dataclass(frozen=True)
class ReplyOpener:
    """Opens the sealed reply to one request (holds that request's response key)."""

    response_key: bytes
    request_id: bytes

    def open(self, sealed_reply: bytes) -> dict[str, Any]:
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
