"""The enclave app framework: operations registered by name, run with a context and limits.

An app is a name, a version and a table of operations. Each operation is an ``async`` function
``handler(ctx, body) -> result`` (bodies and results are CBOR values; bytes stay bytes). The
framework gives it a :class:`Context` (NSM client, attested KMS, sealed-secret store, limits,
deadline), bounds concurrency, enforces a deadline per request, and turns every failure into a
typed error ``(code, message)`` that the caller receives as ``RemoteError`` — never a
traceback. The framed protocol (``enclave.protocol``) carries it over vsock::

    from enclave.app import App, HandlerError

    def build() -> App:
        app = App("greeter", "1.0")

        @app.operation("greet", bytes_fields=("name",))
        async def greet(ctx, body):
            if not isinstance(body, dict) or not isinstance(body.get("name"), bytes):
                raise HandlerError("bad-request", "body must be {'name': bytes}")
            return {"greeting": b"hello " + body["name"]}

        return app

    # python -m enclave --app mypkg.app:build

Built-in operations (``enclave/handlers``): ``health``, ``describe``, ``attestation``, ``e2e``
and ``set-credentials``; the default app adds the sealed-secret operations (docs/app.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from attestation.e2e import E2EError
from attestation.errors import CodedError, Kind, is_code
from enclave.clock import ClockError, EnclaveClock
from enclave.config import (
    AppLimits as AppLimits,  # defined with the process config (enclave.config)
)
from enclave.config import handler_deadline
from enclave.context import Context, Handler, Operation
from enclave.e2e import EnclaveE2EKey
from enclave.logs import JsonLineFormatter as JsonLineFormatter  # re-exported (old import path)
from enclave.logs import configure_json_logging as configure_json_logging
from enclave.protocol import HandlerError
from enclave.protocol._base import REQUEST_DEADLINE
from enclave.sealed import SealedStore
from enclave.wire import is_op_name

if TYPE_CHECKING:
    from enclave.nsm import NsmClient

__all__ = [
    "App",
    "AppLimits",
    "Context",
    "Handler",
    "HandlerError",
    "Operation",
    "app_user_data",
    "default_app",
    "load_app",
]

APP_IDENTITY_LABEL = b"nitro-toolkit/app/v1"
MAX_OPERATION_NAME = 64

log = logging.getLogger("enclave.app")


def app_user_data(name: str, version: str) -> bytes:
    """The ``user_data`` an app puts in its attestation documents: SHA-256 of its identity.

    A verifier pins it with ``Policy(user_data=app_user_data(name, version))``.
    """
    return hashlib.sha256(
        APP_IDENTITY_LABEL + b"\x00" + name.encode() + b"\x00" + version.encode()
    ).digest()


class App:
    """A named, versioned table of operations plus the resources they share."""

    def __init__(
        self,
        name: str,
        version: str,
        *,
        limits: AppLimits | None = None,
        nsm: NsmClient | None = None,
        kms: Any = None,
        credentials: Any = None,
        secrets: SealedStore | None = None,
        e2e_key: EnclaveE2EKey | None = None,
        user_data: bytes | None = None,
        builtins: bool = True,
        clock: EnclaveClock | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.limits = limits or AppLimits()
        self.user_data = app_user_data(name, version) if user_data is None else user_data
        self.secrets = secrets or SealedStore()
        self.clock = clock or EnclaveClock()  # corrected by the parent's time, within bounds
        self.e2e_key = e2e_key or EnclaveE2EKey(clock=self.clock.now)
        self._nsm = nsm
        self._kms = kms
        self._credentials = credentials
        self._ops: dict[str, Operation] = {}
        self._ids = itertools.count(1)
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.in_flight = 0
        self.started = time.monotonic()
        if builtins:
            from enclave.handlers import install_builtins

            install_builtins(self)

    # ------------------------------------------------------------ resources (lazy)

    @property
    def nsm(self) -> NsmClient:
        if self._nsm is None:
            from enclave.nsm import NsmClient

            self._nsm = NsmClient()
        return self._nsm

    @property
    def credentials(self) -> Any:
        """The credential store filled by ``set-credentials`` (``enclave.kms.credentials``)."""
        if self._credentials is None:
            from enclave.handlers.credentials import new_credential_store

            self._credentials = new_credential_store()
        return self._credentials

    @property
    def kms(self) -> Any:
        if self._kms is None:
            from enclave.handlers.credentials import new_attested_kms

            self._kms = new_attested_kms(self.nsm, self.credentials)
        return self._kms

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.limits.blocking_workers, thread_name_prefix=f"{self.name}-blocking"
            )
        return self._executor

    # ------------------------------------------------------------ registry

    def add_operation(self, op: Operation) -> None:
        if not is_op_name(op.name):
            raise ValueError(
                f"bad operation name {op.name!r}: lowercase letters, digits and dashes, 1..64"
            )
        if op.name in self._ops:
            raise ValueError(f"operation {op.name!r} is already registered")
        self._ops[op.name] = op

    def operation(
        self,
        name: str,
        *,
        deadline_s: float | None = None,
        http: bool = True,
        e2e: bool = True,
        limited: bool = True,
        bytes_fields: tuple[str, ...] = (),
        doc: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator registering ``handler(ctx, body)`` under ``name``."""

        def register(handler: Handler) -> Handler:
            text = doc if doc is not None else (handler.__doc__ or "").strip().split("\n")[0]
            self.add_operation(
                Operation(name, handler, deadline_s, http, e2e, limited, bytes_fields, text)
            )
            return handler

        return register

    @property
    def operations(self) -> Mapping[str, Operation]:
        return dict(self._ops)

    def describe(self) -> dict:
        return {
            "app": self.name,
            "version": self.version,
            "operations": [op.describe() for op in self._ops.values()],
        }

    # ------------------------------------------------------------ dispatch

    async def dispatch(self, name: str, body: Any, *, end_to_end: bool = False) -> Any:
        """Run operation ``name``; every failure leaves as ``HandlerError(code, message)``."""
        op = self._ops.get(name) if isinstance(name, str) else None
        if op is None or (end_to_end and not op.e2e):
            raise HandlerError("unknown-op", f"no operation {str(name)[:MAX_OPERATION_NAME]!r}")
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline_s = op.deadline_s or self.limits.default_deadline_s
        outer = REQUEST_DEADLINE.get()  # the caller's deadline, carried on the wire
        # give up first, so the typed answer reaches a caller that still waits
        left = None if outer is None else outer - start
        deadline_s = handler_deadline(deadline_s, left, self.limits.reply_margin_s)
        ctx = Context(self, op.name, f"{next(self._ids):x}", start + deadline_s, end_to_end)
        code = "ok"
        deadline = asyncio.timeout(deadline_s)
        try:
            async with deadline:
                if op.limited:
                    self._check_clock()
                    await self._acquire_slot()
                self.in_flight += 1
                try:
                    return await op.handler(ctx, body)
                finally:
                    self.in_flight -= 1
                    if op.limited:
                        self._slot_semaphore().release()
        except HandlerError as exc:
            code = exc.code
            if not is_code(code):  # what the protocol would refuse to send
                code = "internal"
                raise HandlerError(code, "internal error in the enclave app") from None
            raise
        except TimeoutError:
            if not deadline.expired():  # a TimeoutError of the handler's own making
                code = "internal"
                raise HandlerError(code, "internal error in the enclave app") from None
            code = "deadline-exceeded"
            raise HandlerError(
                code, f"{op.name} did not finish within {deadline_s:g} s", kind=Kind.UNAVAILABLE
            ) from None
        except asyncio.CancelledError:
            code = "cancelled"
            raise
        except Exception as exc:
            code, message, kind = _typed(exc)
            raise HandlerError(code, message, kind=kind) from None
        finally:
            log_event(
                "request",
                level=logging.DEBUG if code == "ok" else logging.INFO,
                rid=ctx.request_id,
                op=op.name,
                e2e=end_to_end,
                code=code,
                ms=round((loop.time() - start) * 1000, 2),
            )

    def _check_clock(self) -> None:
        try:
            self.clock.check()
        except ClockError as exc:
            raise HandlerError(exc.code, exc.message) from None

    def _slot_semaphore(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limits.max_concurrent)
        return self._slots

    async def _acquire_slot(self) -> None:
        try:
            async with asyncio.timeout(self.limits.queue_timeout_s):
                await self._slot_semaphore().acquire()
        except TimeoutError:
            raise HandlerError(
                "busy", f"more than {self.limits.max_concurrent} requests in progress",
                kind=Kind.UNAVAILABLE,
            ) from None

    async def dispatch_sealed(self, sealed: bytes) -> bytes:
        """Open an end-to-end request, run it, seal the answer (errors sealed too)."""
        loop = asyncio.get_running_loop()
        try:  # decode + HPKE of up to 1 MiB of untrusted bytes: off the event loop
            request = await loop.run_in_executor(self.executor, self.e2e_key.open_request, sealed)
        except E2EError as exc:  # nothing to seal to: answer in the clear, no detail leaks
            raise HandlerError(exc.code, exc.message, kind=exc.kind) from None
        try:
            result = await self.dispatch(request.op, request.body, end_to_end=True)
        except HandlerError as exc:
            return request.seal_error(exc.code, exc.message, exc.kind)
        return request.seal_result(result)

    def protocol_handlers(self) -> dict[str, Callable[[Any], Awaitable[Any]]]:
        """The ``{op: handler(body)}`` table ``enclave.protocol.serve`` expects."""
        return {name: functools.partial(self.dispatch, name) for name in self._ops}

    # ------------------------------------------------------------ serving

    async def serve(self, address: Any, *, protocol_limits: Any = None, **transport: Any) -> Any:
        """Start serving on ``address`` (a ``VsockAddress``); returns the server.

        ``transport`` goes to ``enclave.protocol.serve`` (``sim_dir``, ``sim_cid``, ...).
        """
        from enclave import protocol

        return await protocol.serve(
            address, self.protocol_handlers(), limits=protocol_limits, **transport
        )

    def close(self) -> None:
        """Release the thread pool, the KMS tunnel and the NSM (after serving stopped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        close_kms = getattr(self._kms, "close", None)
        if callable(close_kms):
            with contextlib.suppress(Exception):
                close_kms()
        if self._nsm is not None:
            with contextlib.suppress(Exception):
                self._nsm.close()


def _typed(exc: Exception) -> tuple[str, str, str]:
    """(code, message, kind) of an exception: a CodedError keeps its own (its family declares
    the kind); anything else is 'internal'."""
    if isinstance(exc, CodedError) and is_code(exc.code):
        message = exc.message if isinstance(exc.message, str) else exc.code
        return exc.code, message, exc.kind
    log_event("handler-crash", level=logging.WARNING, error=type(exc).__name__)
    return "internal", "internal error in the enclave app", Kind.INTERNAL


def default_app(**kwargs: Any) -> App:
    """The sealed-secrets app ``python -m enclave`` runs (``kwargs`` go to ``App``)."""
    from enclave.handlers import DEFAULT_APP_NAME, DEFAULT_APP_VERSION, sealed

    app = App(DEFAULT_APP_NAME, DEFAULT_APP_VERSION, **kwargs)
    sealed.install(app)
    return app


def load_app(spec: str) -> App:
    """``"pkg.module:attr"`` -> App; ``attr`` is an App or a callable returning one."""
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--app must look like module:attr, got {spec!r}")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    app = target() if callable(target) and not isinstance(target, App) else target
    if not isinstance(app, App):
        raise TypeError(f"{spec} is not an enclave.app.App (got {type(app).__name__})")
    return app


# ---------------------------------------------------------------- structured logs


def log_event(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event; callers pass ids, codes and sizes only — never payloads."""
    if log.isEnabledFor(level):
        log.log(level, event, extra={"fields": fields})
