"""The ``attestation`` operation: a document binding the caller's nonce to the enclave's key.

The document's ``public_key`` is always the enclave's own HPKE key and its ``user_data`` the
app's identity digest. A caller chooses the nonce and nothing else: a body carrying
``public_key`` or ``user_data`` is refused (``forbidden-field``) — otherwise the parent could
obtain a document for a key it holds and have KMS encrypt to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from enclave.handlers._body import get_bytes
from enclave.protocol import HandlerError

if TYPE_CHECKING:
    from enclave.context import AppView, Context

MAX_NONCE_LEN = 512  # NSM accepts up to 1024 per field; 512 is the documented floor
FORBIDDEN_FIELDS = ("public_key", "user_data")


def install(app: AppView) -> None:
    @app.operation("attestation", http=False, e2e=False, deadline_s=10.0, bytes_fields=("nonce",))
    async def attestation(ctx: Context, body: Any) -> dict:
        """Attestation document with the caller's nonce, the enclave's HPKE public key."""
        if not isinstance(body, dict):
            raise HandlerError("bad-request", "body must be a map {'nonce': bytes}")
        chosen = [k for k in FORBIDDEN_FIELDS if k in body]
        if chosen:
            raise HandlerError(
                "forbidden-field",
                f"callers may not choose {', '.join(chosen)}; the enclave sets them",
            )
        unknown = sorted(str(k)[:40] for k in body if k != "nonce")
        if unknown:
            raise HandlerError("bad-request", f"unexpected field(s): {', '.join(unknown)}")
        nonce = get_bytes(body, "nonce", max_len=MAX_NONCE_LEN, min_len=1)
        document = await ctx.run_blocking(
            ctx.nsm.attestation,
            nonce=nonce,
            public_key=ctx.e2e_key.public_key_der,
            user_data=ctx.app.user_data,
        )
        return {"document": document}
