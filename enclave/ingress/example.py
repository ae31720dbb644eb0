"""A minimal ASGI app (no framework) for ``make demo`` and docs/ingress.md.

    python -m enclave --asgi enclave.ingress.example:app

``GET /`` greets; ``GET /whoami`` names the enclave app whose operations and attested KMS the
ASGI app can use (``enclave.ingress.runtime``); anything else is 404.
"""

from __future__ import annotations

import json
from typing import Any

from . import runtime

GREETING = b"hello from inside the enclave\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/":
        status, body, kind = 200, GREETING, b"text/plain"
    elif scope["path"] == "/whoami":
        health = await runtime.call("health", {})
        status, kind = 200, b"application/json"
        body = json.dumps({"app": runtime.enclave_app().name, "status": health.get("status"),
                           "credentials": bool(health.get("credentials"))}).encode()
    else:
        status, body, kind = 404, b"not found\n", b"text/plain"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
