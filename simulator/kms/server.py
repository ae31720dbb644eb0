"""The local KMS over HTTP: the AWS JSON 1.1 protocol boto3 speaks, unmodified.

One request: ``POST /`` with ``X-Amz-Target: TrentService.<Operation>``, a SigV4
``Authorization`` header and a JSON body (blobs base64). Steps:
1. bound the body (size and read time) and the number of requests in flight;
2. verify SigV4 → the caller's credential and principal;
3. map the target to a supported operation;
4. parse the JSON and check it against the KMS model (SerializationException /
   ValidationException);
5. run the operation in a worker thread at one reference time (``now``, read once);
6. answer JSON, or ``{"__type", "message"}`` with KMS's exception name and HTTP status.
Nothing a client sends can crash the server: unexpected failures become KMSInternalException
(500) and are logged by type only. Logs never carry bodies, keys, plaintexts or secrets.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509

from attestation import Verifier
from simulator.kms import _model
from simulator.kms._sigv4 import SignedRequest, verify_sigv4
from simulator.kms.credentials import Credential, CredentialStore
from simulator.kms.errors import KmsError
from simulator.kms.operations import CallContext, KmsService, ServiceConfig
from simulator.kms.policy import Caller
from simulator.kms.store import KeyStore

__all__ = ["KmsLimits", "KmsServer", "create_app"]

log = logging.getLogger("simulator.kms")

TARGET_PREFIX = "TrentService."
JSON_CONTENT_TYPES = frozenset({"application/x-amz-json-1.1", "application/x-amz-json-1.0"})
RESPONSE_CONTENT_TYPE = "application/x-amz-json-1.1"


@dataclass(frozen=True)
class KmsLimits:
    """Every bound of the HTTP endpoint."""

    max_request_bytes: int = 1 << 20  # an AttestationDocument may be 256 KiB (base64 ≈ 350 KiB)
    body_read_timeout: float = 10.0  # seconds to receive a whole body
    header_timeout: float = 10.0  # seconds for a request head (and keep-alive idle)
    lingering_time: float = 1.0  # seconds to drain a refused body before closing
    operation_timeout: float = 30.0  # seconds for one operation (RSA-4096 pairs included)
    max_in_flight: int = 64  # concurrent requests; more get ThrottlingException
    worker_threads: int = 4  # threads running operations
    max_json_depth: int = 32  # nesting of the JSON body


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _json_response(
    status: int, body: Any, request_id: str, *, error_type: str | None = None
) -> web.Response:
    headers = {"Content-Type": RESPONSE_CONTENT_TYPE, "x-amzn-RequestId": request_id}
    if error_type is not None:
        headers["x-amzn-ErrorType"] = error_type
    return web.Response(status=status, body=json.dumps(body).encode(), headers=headers)


def _raw_headers(request: web.Request) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]


def _depth(value: Any, limit: int) -> bool:
    """True when ``value`` nests no deeper than ``limit`` (iterative, no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return True


class KmsServer:
    """Holds the service, the credentials and the bounds; ``handle`` is the aiohttp handler."""

    def __init__(
        self,
        *,
        state_dir: Path,
        roots: Sequence[x509.Certificate],
        region: str = "us-east-1",
        account: str = "111122223333",
        extra_credentials: Iterable[Credential] = (),
        attestation_max_age: timedelta | None = timedelta(minutes=5),
        limits: KmsLimits | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.limits = limits or KmsLimits()
        self.region = region
        self.store = KeyStore(state_dir)
        self.credentials = CredentialStore(self.store.root / "credentials.json", extra_credentials)
        config = ServiceConfig(
            region=region,
            account=account,
            verifier=Verifier(list(roots)),
            attestation_max_age=attestation_max_age,
        )
        self.service = KmsService(self.store, config)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._executor = ThreadPoolExecutor(
            max_workers=self.limits.worker_threads, thread_name_prefix="kms-op"
        )
        self._in_flight = 0

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def handle(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        operation = "-"
        caller = "-"
        if self._in_flight >= self.limits.max_in_flight:
            return self._error(KmsError("ThrottlingException", "Rate exceeded"), request_id)
        self._in_flight += 1
        try:
            now = self._clock()  # the one reference time of this request
            body = await self._read_body(request)
            credential = verify_sigv4(
                SignedRequest(request.method, request.raw_path, _raw_headers(request), body),
                lookup=self.credentials.lookup,
                region=self.region,
                now=now,
            )
            caller = credential.principal
            operation = self._operation(request)
            params = self._params(request, operation, body)
            ctx = CallContext(
                Caller(credential.principal, credential.account, credential.iam_actions), now
            )
            loop = asyncio.get_running_loop()
            result = await asyncio.wait_for(
                loop.run_in_executor(self._executor, self.service.handle, operation, params, ctx),
                self.limits.operation_timeout,
            )
            log.info("%s %s by %s: ok", request_id, operation, caller)
            return _json_response(200, _jsonable(result), request_id)
        except KmsError as exc:
            log.info("%s %s by %s: %s", request_id, operation, caller, exc.code)
            return self._error(exc, request_id)
        except TimeoutError:
            log.warning("%s %s by %s: timed out", request_id, operation, caller)
            return self._error(
                KmsError("KMSInternalException", "The operation did not finish in time"),
                request_id,
            )
        except Exception as exc:  # never let a request take the server down
            log.error(
                "%s %s by %s: internal error %s", request_id, operation, caller, type(exc).__name__
            )
            return self._error(KmsError("KMSInternalException", "Internal error"), request_id)
        finally:
            self._in_flight -= 1

    @staticmethod
    def _error(exc: KmsError, request_id: str) -> web.Response:
        return _json_response(exc.status, exc.body(), request_id, error_type=exc.code)

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.limits.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise KmsError("RequestEntityTooLargeException", f"Request body exceeds {limit} bytes")
        chunks: list[bytes] = []
        size = 0

        async def read_all() -> None:
            nonlocal size
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise KmsError(
                        "RequestEntityTooLargeException", f"Request body exceeds {limit} bytes"
                    )
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read_all(), self.limits.body_read_timeout)
        except TimeoutError:
            raise KmsError("RequestTimeoutException", "Request body not received in time") from None
        return b"".join(chunks)

    def _operation(self, request: web.Request) -> str:
        if request.method != "POST":
            raise KmsError("UnknownOperationException", "Only POST is supported")
        target = request.headers.get("X-Amz-Target", "")
        operation = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else ""
        if operation not in self.service.operations:
            raise KmsError("UnknownOperationException", f"Unknown operation {target[:100]!r}")
        return operation

    def _params(self, request: web.Request, operation: str, body: bytes) -> dict[str, Any]:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in JSON_CONTENT_TYPES:
            raise KmsError(
                "SerializationException", "Content-Type must be application/x-amz-json-1.1"
            )
        if not body.strip():
            data: Any = {}
        else:
            try:
                data = json.loads(body)
            except (ValueError, RecursionError):
                raise KmsError(
                    "SerializationException", "The request body is not valid JSON"
                ) from None
        if not isinstance(data, dict):
            raise KmsError("SerializationException", "The request body must be a JSON object")
        if not _depth(data, self.limits.max_json_depth):
            raise KmsError("SerializationException", "The request body nests too deeply")
        return _model.validate_input(operation, data)


def create_app(server: KmsServer) -> web.Application:
    """The aiohttp application answering every path with ``server.handle``."""
    app = web.Application(client_max_size=server.limits.max_request_bytes)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    app.on_cleanup.append(lambda _app: _close(server))
    return app


async def _close(server: KmsServer) -> None:
    server.close()
