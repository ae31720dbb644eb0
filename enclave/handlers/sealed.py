"""The sealed-secrets operations of the default app.

``seal-load`` opens a KMS ciphertext with attested KMS and keeps the secret in the enclave's
:class:`~enclave.sealed.SealedStore`; ``sign``, ``hmac`` and ``public-key`` use it without ever
returning it; ``envelope-decrypt`` opens data encrypted under a KMS data key and never returns
the plaintext. By default it returns only that the data authenticated (and its length, which the
ciphertext shows anyway); anything computed from the plaintext — ``hmac-sha256`` under a key the
caller sends, or an app's own *result function* — is returned only inside an end-to-end request,
so the parent never sees a value it could test guesses of a short plaintext (a PIN) against.
Operations and their bodies are listed in docs/app.md.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave.handlers._body import fields, get_bytes, get_str, get_str_map
from enclave.protocol import HandlerError
from enclave.sealed import KINDS

if TYPE_CHECKING:
    from enclave.context import AppView, Context

MAX_KMS_CIPHERTEXT = 6144  # KMS CiphertextBlob limit
MAX_ENVELOPE_DATA = 1 << 20  # AES-GCM ciphertext accepted by envelope-decrypt
GCM_IV_LEN = 12
DATA_KEY_LENGTHS = (16, 32)  # AES-128 / AES-256 data keys (GenerateDataKey KeySpec)

MAC_KEY_LENGTHS = (16, 64)  # bytes of the caller's HMAC key for result "hmac-sha256"
VERIFY_RESULT = "verify"
HMAC_RESULT = "hmac-sha256"

ResultFunction = Callable[[bytes], Any]


def verify_result(plaintext: bytes) -> dict:
    """Default envelope result: the data authenticated; its length (public: the ciphertext's
    length minus the 16-byte tag). Nothing the parent could test a guess against."""
    return {"verified": True, "length": len(plaintext)}


DEFAULT_RESULTS: Mapping[str, ResultFunction] = {VERIFY_RESULT: verify_result}
"""Results any caller may ask for; every other result is computed only for sealed requests."""


def hmac_result(plaintext: bytes, mac_key: bytes) -> dict:
    """HMAC-SHA256 of the plaintext under the caller's key (sent sealed, unknown to the parent)."""
    return {"mac": hmac.new(mac_key, plaintext, hashlib.sha256).digest(), "length": len(plaintext)}


async def _kms_decrypt(ctx: Context, ciphertext: bytes, context: dict) -> bytes:
    """Attested KMS Decrypt -> plaintext (only this enclave can open the answer)."""
    return await ctx.run_blocking(ctx.kms.decrypt, ciphertext, encryption_context=context or None)


def install(app: AppView, *, results: Mapping[str, ResultFunction] | None = None) -> None:
    """Add the sealed-secret operations to ``app``; ``results`` extends envelope results."""
    result_functions = {**(results or {}), **DEFAULT_RESULTS}  # the defaults stay as they are

    @app.operation("seal-load", e2e=True, deadline_s=30.0, bytes_fields=("ciphertext",))
    async def seal_load(ctx: Context, body: Any) -> dict:
        """Open a KMS ciphertext with attested KMS and keep it as a named secret."""
        req = fields(
            body, required=("name", "kind", "ciphertext"), optional=("encryption_context",)
        )
        name = get_str(req, "name", max_len=64)
        kind = get_str(req, "kind", max_len=16)
        if kind not in KINDS:
            raise HandlerError("bad-kind", f"kind must be one of {', '.join(KINDS)}")
        ciphertext = get_bytes(req, "ciphertext", max_len=MAX_KMS_CIPHERTEXT, min_len=1)
        context = get_str_map(req, "encryption_context")
        plaintext = await _kms_decrypt(ctx, ciphertext, context)
        try:  # a SealedError leaves through App.dispatch with its code and kind
            info = ctx.secrets.put(name, kind, plaintext)
        finally:
            del plaintext
        return info.to_dict()

    @app.operation("seal-list", deadline_s=2.0)
    async def seal_list(ctx: Context, body: Any) -> dict:
        """Names, kinds and public keys of the sealed secrets."""
        fields(body)
        return {"secrets": [info.to_dict() for info in ctx.secrets.list()]}

    @app.operation("seal-delete", deadline_s=2.0)
    async def seal_delete(ctx: Context, body: Any) -> dict:
        """Forget a sealed secret."""
        req = fields(body, required=("name",))
        return {"deleted": ctx.secrets.delete(get_str(req, "name", max_len=64))}

    @app.operation("public-key", deadline_s=2.0)
    async def public_key(ctx: Context, body: Any) -> dict:
        """Public key (DER SPKI) of a sealed signing key."""
        req = fields(body, required=("name",))
        info = ctx.secrets.info(get_str(req, "name", max_len=64))
        if info.public_key is None:
            raise HandlerError("wrong-kind", f"secret {info.name!r} is not a signing key")
        return {"name": info.name, "kind": info.kind, "public_key": info.public_key}

    @app.operation("sign", deadline_s=5.0, bytes_fields=("message",))
    async def sign(ctx: Context, body: Any) -> dict:
        """Sign a message with a sealed key (ECDSA P-256 SHA-256 or Ed25519)."""
        req = fields(body, required=("name", "message"), optional=("format",))
        fmt = req.get("format", "der")
        if fmt not in ("der", "raw"):
            raise HandlerError("bad-request", "'format' must be 'der' or 'raw'")
        message = get_bytes(req, "message", max_len=ctx.secrets.limits.max_message_len)
        signature = ctx.secrets.sign(
            get_str(req, "name", max_len=64), message, signature_format=fmt
        )
        return {"signature": signature}

    @app.operation("hmac", deadline_s=5.0, bytes_fields=("message",))
    async def hmac_op(ctx: Context, body: Any) -> dict:
        """HMAC-SHA256 of a message under a sealed key."""
        req = fields(body, required=("name", "message"))
        message = get_bytes(req, "message", max_len=ctx.secrets.limits.max_message_len)
        mac = ctx.secrets.hmac_sha256(get_str(req, "name", max_len=64), message)
        return {"mac": mac}

    @app.operation(
        "envelope-decrypt",
        deadline_s=30.0,
        bytes_fields=("encrypted_key", "iv", "ciphertext", "aad", "mac_key"),
    )
    async def envelope_decrypt(ctx: Context, body: Any) -> Any:
        """Open AES-GCM data under a KMS data key; the plaintext never leaves the enclave."""
        req = fields(
            body,
            required=("encrypted_key", "iv", "ciphertext"),
            optional=("aad", "encryption_context", "result", "mac_key"),
        )
        result_name = req.get("result", VERIFY_RESULT)
        known = result_name == HMAC_RESULT or result_name in result_functions
        if not isinstance(result_name, str) or not known:
            names = sorted({*result_functions, HMAC_RESULT})
            raise HandlerError("bad-request", f"'result' must be one of {', '.join(names)}")
        if result_name not in DEFAULT_RESULTS and not ctx.end_to_end:
            raise HandlerError(
                "bad-request",
                f"result {result_name!r} is derived from the plaintext: ask for it inside an "
                "end-to-end request (the parent must not see it)",
            )
        mac_key = req.get("mac_key")
        if (result_name == HMAC_RESULT) != (mac_key is not None):
            raise HandlerError("bad-request", "'mac_key' goes with result 'hmac-sha256' only")
        if mac_key is not None:
            mac_key = get_bytes(req, "mac_key", min_len=MAC_KEY_LENGTHS[0],
                                max_len=MAC_KEY_LENGTHS[1])
        encrypted_key = get_bytes(req, "encrypted_key", max_len=MAX_KMS_CIPHERTEXT, min_len=1)
        iv = get_bytes(req, "iv", max_len=GCM_IV_LEN, min_len=GCM_IV_LEN)
        ciphertext = get_bytes(req, "ciphertext", max_len=MAX_ENVELOPE_DATA, min_len=16)
        aad = req.get("aad")
        if aad is not None and (not isinstance(aad, bytes) or len(aad) > 4096):
            raise HandlerError("bad-request", "'aad' must be at most 4096 bytes")
        context = get_str_map(req, "encryption_context")
        data_key = await _kms_decrypt(ctx, encrypted_key, context)
        if len(data_key) not in DATA_KEY_LENGTHS:
            raise HandlerError("bad-data-key", "the data key must be 16 or 32 bytes (AES)")
        try:
            plaintext = AESGCM(data_key).decrypt(iv, ciphertext, aad)
        except InvalidTag:
            raise HandlerError(
                "envelope-auth-failed", "the data failed AES-GCM authentication"
            ) from None
        finally:
            del data_key
        if mac_key is not None:
            return hmac_result(plaintext, mac_key)
        return result_functions[result_name](plaintext)
