"""A small Starlette app for the ingress tests (served inside the simulated enclave)."""

from __future__ import annotations

import hashlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from enclave.ingress import runtime

MAX_DOWNLOAD = 64 * 1024 * 1024
CHUNK = 64 * 1024
MARKER = "ingress-plaintext-marker-7f3a"


async def hello(request: Request) -> Response:
    return PlainTextResponse(f"hello from the enclave {MARKER}")


async def echo(scope, receive, send) -> None:
    """Raw ASGI: each body chunk goes back as it arrives (streaming both ways at once)."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")]})
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        await send({"type": "http.response.body", "body": message.get("body", b""),
                    "more_body": True})
        if not message.get("more_body"):
            break
    await send({"type": "http.response.body", "body": b""})


async def upload(request: Request) -> Response:
    digest, size = hashlib.sha256(), 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return JSONResponse({"size": size, "sha256": digest.hexdigest()})


async def download(request: Request) -> Response:
    n = min(int(request.query_params.get("n", "0")), MAX_DOWNLOAD)

    async def body():  # deterministic bytes: the client can check them
        sent = 0
        block = bytes(range(256)) * (CHUNK // 256)
        while sent < n:
            part = block[: min(CHUNK, n - sent)]
            sent += len(part)
            yield part

    return StreamingResponse(body(), media_type="application/octet-stream",
                             headers={"content-length": str(n)})


async def fake_attestation(request: Request) -> Response:
    return PlainTextResponse("the app's own attestation route")


async def client(request: Request) -> Response:
    return JSONResponse({"client": list(request.client) if request.client else None})


async def kms_digest(request: Request) -> Response:
    """Decrypt the body with attested KMS inside the enclave; only a digest leaves."""
    plaintext = await runtime.kms_decrypt(await request.body(), {"app": "ingress-test"})
    return JSONResponse({"sha256": hashlib.sha256(plaintext).hexdigest()})


async def toolkit(request: Request) -> Response:
    health = await runtime.call("health", {})
    return JSONResponse({"app": runtime.enclave_app().name, "health": sorted(health)})


starlette_app = Starlette(routes=[
    Route("/", hello),
    Route("/upload", upload, methods=["POST"]),
    Route("/download", download),
    Route("/.well-known/nitro-attestation", fake_attestation),
    Route("/client", client),
    Route("/toolkit", toolkit),
    Route("/kms-digest", kms_digest, methods=["POST"]),
])


async def app(scope, receive, send) -> None:
    if scope["type"] == "http" and scope["path"] == "/echo":
        await echo(scope, receive, send)
    else:
        await starlette_app(scope, receive, send)
