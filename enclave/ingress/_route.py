"""``GET /.well-known/nitro-attestation?nonce=HEX``: the attestation route, ahead of the app.

An ASGI 3 wrapper: requests for :data:`ATTESTATION_PATH` (with or without a trailing slash)
are answered here and never reach the app, whatever routes the app declares; everything
else goes to the app unchanged. The answer is the raw document (``application/cbor``) whose
``nonce`` is the request's and whose ``public_key`` is the SPKI of the certificate this
listener presents. NSM calls are bounded: documents are cached per nonce, concurrent asks
for one nonce share one call, and new calls are rate limited (token bucket) and capped in
number at once. Errors are JSON ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from attestation.binding import ATTESTATION_PATH

__all__ = ["ATTESTATION_PATH", "AttestationRoute", "RouteLimits"]

CBOR_TYPE = b"application/cbor"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Attest = Callable[[bytes], Awaitable[bytes]]
"""nonce -> document (the caller binds the listener's public key)."""


@dataclass(frozen=True)
class RouteLimits:
    """Bounds of the attestation route (counts, bytes, seconds)."""

    max_nonce_bytes: int = 512
    """Longest nonce (the NSM documents 512 bytes per field as the safe size)."""
    max_query_bytes: int = 2048
    """Longest query string read."""
    rate_per_s: float = 20.0
    """New NSM calls per second (cache hits are free)."""
    burst: int = 40
    """NSM calls allowed at once after a quiet period."""
    max_concurrent: int = 4
    """NSM calls in progress at once; more wait for a slot up to ``timeout_s``."""
    cache_entries: int = 1024
    """Documents kept (one per nonce, least recently used dropped first)."""
    cache_ttl_s: float = 60.0
    """How long one nonce's document is served from the cache."""
    timeout_s: float = 10.0
    """Longest wait for one document, slot included."""


class _RouteError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: tuple = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class _TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = float(burst)
        self.last = time.monotonic()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class AttestationRoute:
    """Wraps an ASGI app; answers the attestation route itself (see the module docstring)."""

    def __init__(self, app: ASGIApp, attest: Attest, limits: RouteLimits | None = None) -> None:
        self.app = app
        self._attest = attest
        self.limits = limits or RouteLimits()
        self._cache: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[bytes]] = {}
        self._bucket = _TokenBucket(self.limits.rate_per_s, self.limits.burst)
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self.nsm_calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "http" and _is_route(scope.get("path", "")):
            await self._answer(scope, send)
            return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, send: Send) -> None:
        try:
            if scope.get("method") not in ("GET", "HEAD"):
                raise _RouteError(405, "method-not-allowed", "use GET", ((b"allow", b"GET"),))
            nonce = self._nonce(scope.get("query_string", b""))
            document = await self._document(nonce)
        except _RouteError as exc:
            body = json.dumps({"error": {"code": exc.code, "message": exc.message}}).encode()
            await _respond(send, exc.status, b"application/json", body, exc.headers)
            return
        await _respond(send, 200, CBOR_TYPE, document, ((b"cache-control", b"no-store"),),
                       head=scope.get("method") == "HEAD")

    def _nonce(self, query: bytes) -> bytes:
        limits = self.limits
        if len(query) > limits.max_query_bytes:
            raise _RouteError(400, "bad-nonce", f"query longer than {limits.max_query_bytes} bytes")
        try:
            values = parse_qs(query.decode("ascii"), strict_parsing=False).get("nonce", [])
        except UnicodeDecodeError:
            raise _RouteError(400, "bad-nonce", "query is not ASCII") from None
        if len(values) != 1:
            raise _RouteError(400, "bad-nonce", "give exactly one nonce=HEX")
        text = values[0]
        if not text or len(text) % 2 or len(text) > 2 * limits.max_nonce_bytes:
            raise _RouteError(
                400, "bad-nonce", f"nonce must be 1..{limits.max_nonce_bytes} bytes as hex"
            )
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise _RouteError(400, "bad-nonce", "nonce is not hex") from None

    async def _document(self, nonce: bytes) -> bytes:
        now = time.monotonic()
        hit = self._cache.get(nonce)
        if hit is not None and now - hit[0] < self.limits.cache_ttl_s:
            self._cache.move_to_end(nonce)
            return hit[1]
        pending = self._pending.get(nonce)
        if pending is None:
            wait = self._bucket.take()
            if wait:
                retry = str(max(1, round(wait + 0.5))).encode()
                raise _RouteError(429, "rate-limited", "too many attestation requests; retry",
                                  ((b"retry-after", retry),))
            pending = asyncio.get_running_loop().create_future()
            self._pending[nonce] = pending
            task = asyncio.ensure_future(self._fetch(nonce, pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            async with asyncio.timeout(self.limits.timeout_s):
                return await asyncio.shield(pending)
        except TimeoutError:
            raise _RouteError(503, "unavailable", "no attestation document in time") from None
        except _RouteError:
            raise
        except Exception as exc:
            code = getattr(exc, "code", None) or type(exc).__name__
            raise _RouteError(503, "unavailable", f"the NSM refused: {code}") from None

    async def _fetch(self, nonce: bytes, future: asyncio.Future[bytes]) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limits.max_concurrent)
        try:
            async with asyncio.timeout(self.limits.timeout_s):
                async with self._slots:
                    self.nsm_calls += 1
                    document = await self._attest(nonce)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning
        else:
            self._cache[nonce] = (time.monotonic(), document)
            while len(self._cache) > self.limits.cache_entries:
                self._cache.popitem(last=False)
            if not future.done():
                future.set_result(document)
        finally:
            self._pending.pop(nonce, None)


def _is_route(path: str) -> bool:
    return path == ATTESTATION_PATH or path == ATTESTATION_PATH + "/"


async def _respond(
    send: Send, status: int, content_type: bytes, body: bytes, headers: tuple = (),
    *, head: bool = False,
) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
    })
    await send({"type": "http.response.body", "body": b"" if head else body})
