"""The proxy's HTTP side: routes, JSON <-> CBOR bodies, limits, errors and access logs."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from attestation.errors import CodedError, Kind
from enclave.config import ConfigError, check_nested, check_positive, derive
from enclave.protocol import RemoteError
from enclave.wire import HEALTH_OP, is_op_name

from ._proxy_pool import EnclavePool, EnclaveUnavailable

log = logging.getLogger("parent.proxy")

REQUEST_ID_HEADER = "X-Request-Id"
RID_KEY = web.RequestKey("request_id", str)
OP_KEY = web.RequestKey("op", str)
START_KEY = web.RequestKey("start", float)  # event-loop time the request arrived
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_JSON_DEPTH = 32
READ_CHUNK = 64 * 1024

STATUS_FOR_KIND: Mapping[str, int] = {
    Kind.BAD_REQUEST: 400,
    Kind.FORBIDDEN: 403,
    Kind.NOT_FOUND: 404,
    Kind.CONFLICT: 409,
    Kind.UNAVAILABLE: 503,
    Kind.INTERNAL: 500,
}
"""The one error kind -> HTTP status table (DESIGN §3): no code has a status of its own."""
_DROP_CONNECTION = frozenset({"payload-too-large", "body-timeout"})  # body not read to its end


REQUEST_TIMEOUT_S = 15.0
"""The proxy's outer deadline per forwarded request, from its arrival."""
BODY_TIMEOUT_S = 10.0
"""Receiving a whole body (capped by the request deadline when derived)."""
QUEUE_TIMEOUT_S = 5.0
"""Waiting for a forwarding slot (capped by the request deadline when derived)."""


@dataclass(frozen=True)
class HttpLimits:
    """The proxy's HTTP bounds; checked when made (``enclave.config.ConfigError``).

    ``request_timeout_s`` is the one outer deadline of a forwarded request, from its arrival:
    reading the body, the wait for a slot and the enclave round trip share it, and the enclave
    is told what remains (``timeout_ms``), so its handler's deadline derives from this one
    (minus the enclave's reply margin). ``body_timeout_s`` and ``queue_timeout_s`` end before
    it; :meth:`derived` makes them from it.
    """

    max_body_bytes: int = 2 * 1024 * 1024  # JSON body (base64 makes bytes 4/3 larger)
    body_timeout_s: float = BODY_TIMEOUT_S  # to receive a whole body once headers arrived
    header_timeout_s: float = 10.0  # a connection must send a full request head within this
    lingering_s: float = 1.0  # after an early error, unread body is drained this long, then close
    request_timeout_s: float = REQUEST_TIMEOUT_S
    health_timeout_s: float = 1.0  # the enclave's answer to GET /health (its own deadline)
    max_in_flight: int = 1024  # requests being forwarded at once
    max_waiting: int = 2048  # more requests wait for a slot; beyond: 503 at once
    queue_timeout_s: float = QUEUE_TIMEOUT_S  # how long one waits for a slot
    max_json_depth: int = MAX_JSON_DEPTH  # nesting of a request body (the enclave allows 64)
    max_json_items: int = 65_536  # values in a request body (the enclave's frame allows 2**17)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_in_flight", "max_json_depth", "max_json_items"):
            check_positive("HttpLimits", name, getattr(self, name), integer=True)
        if isinstance(self.max_waiting, bool) or not isinstance(self.max_waiting, int) or (
            self.max_waiting < 0
        ):
            raise ConfigError(f"HttpLimits.max_waiting must be an integer >= 0, "
                              f"got {self.max_waiting!r}")
        for name in ("body_timeout_s", "header_timeout_s", "lingering_s", "request_timeout_s",
                     "health_timeout_s", "queue_timeout_s"):
            check_positive("HttpLimits", name, getattr(self, name))
        for inner in ("body_timeout_s", "queue_timeout_s"):
            check_nested("HttpLimits", inner, getattr(self, inner),
                         "request_timeout_s", self.request_timeout_s)

    @classmethod
    def derived(
        cls,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        *,
        body_timeout_s: float | None = None,
        queue_timeout_s: float | None = None,
        **fields: Any,
    ) -> HttpLimits:
        """Limits whose inner deadlines derive from ``request_timeout_s`` (``None``: the
        default, capped below it); explicit ones must end before it (ConfigError)."""
        check_positive("HttpLimits", "request_timeout_s", request_timeout_s)
        return cls(
            request_timeout_s=request_timeout_s,
            body_timeout_s=derive(body_timeout_s, BODY_TIMEOUT_S, request_timeout_s),
            queue_timeout_s=derive(queue_timeout_s, QUEUE_TIMEOUT_S, request_timeout_s),
            **fields,
        )


class ProxyError(CodedError):
    """An answer the proxy gives itself, or an enclave error passed on with its kind."""

    codes = {
        "bad-request": Kind.BAD_REQUEST,
        "forbidden-field": Kind.BAD_REQUEST,
        "bad-base64": Kind.BAD_REQUEST,
        "bad-json": Kind.BAD_REQUEST,
        "payload-too-large": Kind.BAD_REQUEST,
        "body-timeout": Kind.BAD_REQUEST,
        "method-not-allowed": Kind.BAD_REQUEST,
        "http-error": Kind.BAD_REQUEST,
        "not-found": Kind.NOT_FOUND,
        "unknown-op": Kind.NOT_FOUND,
        "proxy-busy": Kind.UNAVAILABLE,
        "enclave-timeout": Kind.UNAVAILABLE,
        "enclave-unavailable": Kind.UNAVAILABLE,
        "bad-response": Kind.INTERNAL,
        "internal": Kind.INTERNAL,
    }
    show_code = True

    @property
    def status(self) -> int:
        return status_for(self.kind)


def status_for(kind: str) -> int:
    """HTTP status of an error kind (500 for anything that is not a kind)."""
    return STATUS_FOR_KIND.get(kind, 500)


def error_response(code: str, kind: str, message: str, rid: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "kind": kind, "message": message}, "request_id": rid},
        status=status_for(kind),
        headers={REQUEST_ID_HEADER: rid},
    )


def to_json(value: Any, depth: int = 0) -> Any:
    """A CBOR result as JSON: bytes -> base64 text; keys -> text; other leaves as text."""
    if depth > MAX_JSON_DEPTH:
        raise ProxyError("bad-response", "the enclave's answer nests too deeply")
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, Mapping):
        return {str(k): to_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v, depth + 1) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def json_shape_problem(value: Any, max_depth: int, max_items: int) -> str | None:
    """Why a decoded JSON body is over the depth or item limits, or None (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    items = 0
    while stack:
        item, depth = stack.pop()
        items += 1
        if items > max_items:
            return f"the body has more than {max_items} values (max_json_items)"
        if isinstance(item, dict | list):
            if depth > max_depth:
                return f"the body nests deeper than {max_depth} (max_json_depth)"
            children = item.values() if isinstance(item, dict) else item
            if len(children) + items > max_items:
                return f"the body has more than {max_items} values (max_json_items)"
            stack.extend((child, depth + 1) for child in children)
    return None


def b64_field(body: Mapping[str, Any], name: str) -> bytes:
    value = body.get(name)
    if not isinstance(value, str):
        raise ProxyError("bad-request", f"{name!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProxyError("bad-base64", f"{name!r} is not valid base64") from None


class Backpressure:
    """At most ``max_in_flight`` forwarded requests; ``max_waiting`` more may queue."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.max_in_flight)
        self.in_flight = 0
        self.waiting = 0
        self.refused = 0

    async def acquire(self, budget_s: float | None = None) -> None:
        if self.waiting >= self.limits.max_waiting and self._slots.locked():
            self.refused += 1
            raise ProxyError("proxy-busy", "too many requests in progress; retry later")
        self.waiting += 1
        wait = self.limits.queue_timeout_s if budget_s is None else min(
            self.limits.queue_timeout_s, budget_s
        )
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            self.refused += 1
            raise ProxyError("proxy-busy", "no capacity within the queue timeout") from None
        finally:
            self.waiting -= 1
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._slots.release()


class ProxyHandlers:
    """The routes (docs/proxy.md); one instance per proxy."""

    def __init__(self, pool: EnclavePool, limits: HttpLimits) -> None:
        self.pool = pool
        self.limits = limits
        self.backpressure = Backpressure(limits)
        self.routes: dict[str, tuple[str, ...]] = {}  # op -> bytes fields, from `describe`
        self.app_info: dict[str, Any] = {}
        self.started = time.monotonic()

    # ------------------------------------------------------------ plumbing

    async def refresh_routes(self) -> None:
        """Learn the app's HTTP operations from its ``describe`` answer."""
        answer = await self.pool.request(
            "describe", {}, timeout=self.limits.health_timeout_s * 2, wait=False, control=True
        )
        routes: dict[str, tuple[str, ...]] = {}
        for op in answer.get("operations", []) if isinstance(answer, dict) else []:
            if (
                isinstance(op, dict)
                and op.get("http") is True
                and isinstance(op.get("name"), str)
                and is_op_name(op["name"])
            ):
                fields = op.get("bytes_fields") or []
                routes[op["name"]] = tuple(f for f in fields if isinstance(f, str))
        self.routes = routes
        self.app_info = {
            "app": answer.get("app") if isinstance(answer, dict) else None,
            "version": answer.get("version") if isinstance(answer, dict) else None,
        }

    async def read_json(self, request: web.Request) -> dict:
        length = request.content_length
        if length is not None and length > self.limits.max_body_bytes:
            raise ProxyError("payload-too-large", f"body over {self.limits.max_body_bytes} B")
        chunks: list[bytes] = []
        total = 0
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                while chunk := await request.content.read(READ_CHUNK):
                    total += len(chunk)
                    if total > self.limits.max_body_bytes:
                        raise ProxyError(
                            "payload-too-large", f"body over {self.limits.max_body_bytes} B"
                        )
                    chunks.append(chunk)
        except TimeoutError:
            raise ProxyError("body-timeout", "the body did not arrive in time") from None
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ProxyError("bad-json", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ProxyError("bad-json", "the body must be a JSON object")
        problem = json_shape_problem(body, self.limits.max_json_depth, self.limits.max_json_items)
        if problem:  # refused here, not by the enclave, so no shared connection is involved
            raise ProxyError("bad-json", problem)
        return body

    def deadline(self, request: web.Request) -> float:
        """Event-loop time by which ``request`` must be answered (its one outer deadline)."""
        return request[START_KEY] + self.limits.request_timeout_s

    async def forward(self, op: str, body: Any, deadline: float | None = None) -> Any:
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.limits.request_timeout_s
        await self.backpressure.acquire(max(0.0, deadline - loop.time()))
        try:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout_at(deadline):  # the pool's own waits count too
                return await self.pool.request(op, body, timeout=remaining)
        except RemoteError as exc:
            raise ProxyError(exc.code, exc.message, kind=exc.kind) from None
        except TimeoutError:
            raise ProxyError(
                "enclave-timeout",
                f"no answer from the enclave within {self.limits.request_timeout_s:g} s",
            ) from None
        except EnclaveUnavailable as exc:
            raise ProxyError(exc.code, exc.message, kind=exc.kind) from None
        finally:
            self.backpressure.release()

    # ------------------------------------------------------------ routes

    async def health(self, request: web.Request) -> web.Response:
        rid = request[RID_KEY]
        out: dict[str, Any] = {"proxy": "ok", "enclave": "down", "request_id": rid}
        out["connections"] = self.pool.connected
        out["in_flight"] = self.backpressure.in_flight
        try:
            answer = await self.pool.request(
                HEALTH_OP, {}, timeout=self.limits.health_timeout_s, wait=False, control=True
            )
        except (EnclaveUnavailable, TimeoutError, RemoteError) as exc:
            out["error"] = {
                "code": getattr(exc, "code", "enclave-timeout"),
                "kind": getattr(exc, "kind", Kind.UNAVAILABLE),
                "message": getattr(exc, "message", "health probe timed out"),
            }
            return web.json_response(
                out, status=status_for(Kind.UNAVAILABLE), headers={REQUEST_ID_HEADER: rid}
            )
        out["enclave"] = "ok"
        if isinstance(answer, dict):
            for key in ("app", "version", "uptime_s", "credentials", "clock"):
                if key in answer:
                    out[key] = answer[key]
        return web.json_response(out, headers={REQUEST_ID_HEADER: rid})

    async def attestation(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        chosen = [k for k in ("public_key", "user_data") if k in body]
        if chosen:
            raise ProxyError(
                "forbidden-field",
                f"callers may not choose {', '.join(chosen)}; the enclave sets them",
            )
        extra = sorted(k for k in body if k != "nonce")
        if extra:
            raise ProxyError("bad-request", f"unexpected field(s): {', '.join(extra)[:200]}")
        nonce = b64_field(body, "nonce")
        answer = await self.forward("attestation", {"nonce": nonce}, self.deadline(request))
        return self._ok(request, {"document": _bytes_field(answer, "document")})

    async def e2e(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        extra = sorted(k for k in body if k != "sealed")
        if extra:
            raise ProxyError("bad-request", f"unexpected field(s): {', '.join(extra)[:200]}")
        sealed = b64_field(body, "sealed")
        answer = await self.forward("e2e", {"sealed": sealed}, self.deadline(request))
        return self._ok(request, {"sealed": _bytes_field(answer, "sealed")})

    async def op(self, request: web.Request) -> web.Response:
        name = request.match_info["op"]
        if not is_op_name(name):
            raise ProxyError("not-found", "no such route")
        request[OP_KEY] = name
        if not self.routes:
            try:
                await self.refresh_routes()
            except (EnclaveUnavailable, TimeoutError, RemoteError):
                raise ProxyError(
                    "enclave-unavailable", "the enclave's operations are not known yet"
                ) from None
        if name not in self.routes:
            raise ProxyError("unknown-op", f"operation {name!r} is not exposed over HTTP")
        body = await self.read_json(request)
        for field_name in self.routes[name]:
            if field_name in body:
                body[field_name] = b64_field(body, field_name)
        answer = await self.forward(name, body, self.deadline(request))
        return self._ok(request, to_json(answer))

    async def list_routes(self, request: web.Request) -> web.Response:
        if not self.routes:
            try:
                await self.refresh_routes()
            except (EnclaveUnavailable, TimeoutError, RemoteError):
                raise ProxyError(
                    "enclave-unavailable", "the enclave's operations are not known yet"
                ) from None
        return self._ok(
            request,
            {
                **self.app_info,
                "operations": [
                    {"route": f"/v1/{name}", "bytes_fields": list(fields)}
                    for name, fields in sorted(self.routes.items())
                ],
            },
        )

    @staticmethod
    def _ok(request: web.Request, payload: Any) -> web.Response:
        rid = request[RID_KEY]
        return web.json_response(payload, headers={REQUEST_ID_HEADER: rid})


def _bytes_field(answer: Any, name: str) -> str:
    value = answer.get(name) if isinstance(answer, dict) else None
    if not isinstance(value, bytes):
        raise ProxyError("bad-response", f"the enclave's answer lacks {name!r}")
    return base64.b64encode(value).decode()


@web.middleware
async def request_context(request: web.Request, handler: Any) -> web.StreamResponse:
    """Request id, typed JSON errors and one JSON access-log line (no payloads)."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    rid = given if _REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex[:16]
    request[RID_KEY] = rid
    request[START_KEY] = asyncio.get_running_loop().time()
    start = time.perf_counter()
    code = "ok"
    try:
        response = await handler(request)
    except ProxyError as exc:
        code = exc.code
        response = error_response(exc.code, exc.kind, exc.message, rid)
        if exc.code in _DROP_CONNECTION:
            response.force_close()
    except web.HTTPException as exc:
        code = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}.get(
            exc.status, "http-error"
        )
        kind = ProxyError.kind_of(code) if exc.status < 500 else Kind.INTERNAL
        response = error_response(code, kind, exc.reason, rid)
    except asyncio.CancelledError:
        code = "client-gone"
        raise
    except Exception as exc:
        code = "internal"
        log.error("proxy-error", extra={"fields": {"rid": rid, "error": type(exc).__name__}})
        response = error_response("internal", Kind.INTERNAL, "internal proxy error", rid)
    finally:
        resource = request.match_info.route.resource
        fields = {
            "rid": rid,
            "method": request.method,
            "route": resource.canonical if resource is not None else "?",
            "op": request.get(OP_KEY),
            "code": code,
            "ms": round((time.perf_counter() - start) * 1000, 2),
            "in_bytes": request.content_length,
        }
        if code != "client-gone":
            fields["status"] = response.status
        log.info("http", extra={"fields": fields})
    return response
