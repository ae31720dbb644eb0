"""What an ASGI app running under ``python -m enclave --asgi`` can use of the toolkit.

    from enclave.ingress import runtime

    async def handler(request):
        plaintext = await runtime.kms_decrypt(ciphertext, {"app": "demo"})   # attested KMS
        signed = await runtime.call("sign", {"name": "signing-key", "message": b"..."})
        app = runtime.enclave_app()          # the enclave App: .kms, .secrets, .nsm, ...

``call`` runs any registered operation (``health``, ``seal-load``, ``sign``, ``hmac``,
``envelope-decrypt``, ...; docs/app.md) with its limits and deadline; its errors raise
``enclave.app.HandlerError`` (``code``, ``message``). Blocking clients (KMS, NSM) run on the
app's bounded thread pool through ``run_blocking``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ..app import App

__all__ = ["call", "enclave_app", "install", "kms_decrypt", "run_blocking"]

_T = TypeVar("_T")
_current: App | None = None


def install(app: App | None) -> None:
    """Make ``app`` the one this process serves (done by ``python -m enclave --asgi``)."""
    global _current
    _current = app


def enclave_app() -> App:
    """The enclave app of this process; RuntimeError outside ``python -m enclave --asgi``."""
    if _current is None:
        raise RuntimeError(
            "no enclave app in this process: run the ASGI app with python -m enclave --asgi"
        )
    return _current


async def run_blocking(fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """Run a blocking call (NSM, boto3) on the enclave app's bounded thread pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        enclave_app().executor, functools.partial(fn, *args, **kwargs)
    )


async def call(operation: str, body: Any) -> Any:
    """Run a registered operation of the enclave app (HandlerError on failure)."""
    return await enclave_app().dispatch(operation, body)


async def kms_decrypt(
    ciphertext: bytes, encryption_context: Mapping[str, str] | None = None
) -> bytes:
    """KMS Decrypt with this enclave's attestation (the plaintext never leaves the enclave)."""
    kms = enclave_app().kms
    return await run_blocking(kms.decrypt, ciphertext, encryption_context=encryption_context)
