"""Framed CBOR request/response protocol over the vsock transport (docs/protocol.md).

Server::

    async def echo(body):
        return body

    server = await serve(VsockAddress(VMADDR_CID_ANY, 5000), {"echo": echo})

Client (many concurrent requests on one connection; replies may come in any order)::

    async with await ProtocolClient.connect(VsockAddress(16, 5000)) as client:
        body = await client.request("echo", {"x": 1}, timeout=5)

Handlers raise ``HandlerError(code, message)`` for typed errors; the client raises
``RemoteError`` (code, message) for error replies, ``RequestTimeoutError`` (code timeout)
and ``ConnectionLostError`` (code connection-lost) when the connection drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
from collections.abc import Mapping
from typing import Any

from enclave import transport
from enclave._malloc import keep_reads_off_mmap
from enclave.protocol._base import (
    ERROR_CODES,
    PROTOCOL_VERSION,
    ConnectionLostError,
    FrameError,
    HandlerError,
    ProtocolError,
    ProtocolLimits,
    RemoteError,
    RequestTimeoutError,
)
from enclave.protocol._framing import (
    FrameClock,
    Reply,
    decode_cbor,
    encode_request,
    frame,
    parse_reply,
    read_frame,
)
from enclave.protocol._server import Handler, ServerConnection, reject_connection

__all__ = [
    "ERROR_CODES",
    "PROTOCOL_VERSION",
    "ConnectionLostError",
    "FrameError",
    "Handler",
    "HandlerError",
    "ProtocolClient",
    "ProtocolError",
    "ProtocolLimits",
    "RemoteError",
    "RequestTimeoutError",
    "serve",
]

CLIENT_CLOSE_TIMEOUT = 5.0  # seconds close() waits for the connection to shut


async def serve(
    address: transport.VsockAddress,
    handlers: Mapping[str, Handler],
    *,
    limits: ProtocolLimits | None = None,
    transport_limits: transport.TransportLimits | None = None,
    sim_dir: str | os.PathLike[str] | None = None,
    sim_cid: int | None = None,
) -> transport.VsockServer:
    """Serve ``handlers`` (op name -> ``async def handler(body) -> body``) on ``address``.

    Returns the listening server; ``close()`` + ``wait_closed()`` stop it.
    """
    limits = limits or ProtocolLimits()
    keep_reads_off_mmap()
    table = dict(handlers)
    for op, handler in table.items():
        if not isinstance(op, str) or not callable(handler):
            raise ProtocolError("bad-handlers", f"handlers maps op names to callables: {op!r}")
    active = 0

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        if active >= limits.max_connections:
            await reject_connection(
                reader, writer, "too-many-connections",
                f"server holds {limits.max_connections} connections (max_connections)",
            )
            return
        active += 1
        try:
            await ServerConnection(reader, writer, table, limits).run()
        finally:
            active -= 1

    return await transport.start_server(
        on_connection, address, limits=transport_limits, sim_dir=sim_dir, sim_cid=sim_cid
    )


class ProtocolClient:
    """One connection to a protocol server; requests may run concurrently on it.

    Build with ``await ProtocolClient.connect(address)`` or from existing streams. When the
    connection drops, every pending and later request fails with ConnectionLostError.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        limits: ProtocolLimits | None = None,
    ) -> None:
        self.limits = limits or ProtocolLimits()
        keep_reads_off_mmap()
        self._reader = reader
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._slots = asyncio.Semaphore(self.limits.max_in_flight)
        self._write_lock = asyncio.Lock()  # one request drains at a time: the buffer stays small
        self._lost: ConnectionLostError | None = None
        self._server_error: str | None = None
        self._read_task = self._loop.create_task(self._read_loop())

    @classmethod
    async def connect(
        cls,
        address: transport.VsockAddress,
        *,
        limits: ProtocolLimits | None = None,
        transport_limits: transport.TransportLimits | None = None,
        deadline: float | None = None,
        sim_dir: str | os.PathLike[str] | None = None,
    ) -> ProtocolClient:
        """Connect (with the transport's retries, bounded by ``deadline`` seconds)."""
        reader, writer = await transport.open_connection(
            address, deadline=deadline, limits=transport_limits, sim_dir=sim_dir
        )
        return cls(reader, writer, limits=limits)

    @property
    def closed(self) -> bool:
        """True once the connection is gone (requests fail with ConnectionLostError)."""
        return self._lost is not None

    async def wait_closed(self) -> None:
        """Return once the connection is gone (dropped, broken or closed)."""
        await asyncio.wait({self._read_task})  # cancelling the caller leaves the reader be

    async def request(self, op: str, body: Any = None, *, timeout: float | None = None) -> Any:
        """Send ``op`` with ``body``; return the reply body.

        ``timeout`` (seconds, default ``limits.request_timeout``) covers waiting for a free
        slot, sending and the reply; the server is told the same deadline. Raises
        RemoteError, RequestTimeoutError, ConnectionLostError, or ProtocolError
        (bad-request, frame-too-large) for a request that cannot be sent.
        """
        if timeout is None:
            timeout = self.limits.request_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ProtocolError("bad-request", f"timeout must be a positive number, not {timeout}")
        if self._lost is not None:
            raise ConnectionLostError(self._lost.message)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await self._exchange(op, body, self._loop.time() + timeout)
        except TimeoutError:
            if deadline.expired():
                raise RequestTimeoutError(
                    f"no reply to {op!r} within {timeout:g} s"
                ) from None
            raise

    async def _exchange(self, op: str, body: Any, end: float) -> Any:
        async with self._slots:
            if self._lost is not None:
                raise ConnectionLostError(self._lost.message)
            rid = next(self._ids)
            remaining_ms = max(1, math.ceil((end - self._loop.time()) * 1000))
            payload = encode_request(
                rid, op, body, remaining_ms, strict_keys=self.limits.strict_map_keys
            )
            if len(payload) > self.limits.max_frame:
                raise ProtocolError(
                    "frame-too-large",
                    f"request of {len(payload)} bytes is over max_frame {self.limits.max_frame}",
                )
            future: asyncio.Future[Any] = self._loop.create_future()
            self._pending[rid] = future
            try:
                async with self._write_lock:
                    for buffer in frame(payload):
                        self._writer.write(memoryview(buffer))
                    with contextlib.suppress(ConnectionError, OSError):
                        # a broken connection ends the read loop, which then fails the
                        # future with the reason (e.g. the server's last error frame)
                        await self._writer.drain()
                outcome = await future
            finally:
                self._pending.pop(rid, None)
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, Reply)
        if outcome.error is not None:
            code, message, kind = outcome.error
            raise RemoteError(code, message, kind=kind)
        return outcome.body

    async def _read_loop(self) -> None:
        limits = self.limits
        clock = FrameClock(limits.read_timeout)
        clock.start()
        reason = "the server closed the connection"
        try:
            while (payload := await read_frame(self._reader, limits.max_frame, clock)) is not None:
                self._deliver(parse_reply(decode_cbor(payload, strict_keys=limits.strict_map_keys)))
        except FrameError as exc:
            reason = f"the server sent a bad frame: {exc}"
        except asyncio.CancelledError:
            reason = "the client was closed"
        except (ConnectionError, OSError) as exc:
            reason = f"the connection failed: {type(exc).__name__}"
        finally:
            clock.stop()
            if self._server_error is not None:
                reason = f"the server closed the connection: {self._server_error}"
            self._fail_all(reason)

    def _deliver(self, reply: Reply) -> None:
        if reply.id is None:  # connection-level error; the server closes next
            code, message, _kind = reply.error or ("bad-message", "", "bad-request")
            self._server_error = f"{code}: {message}"
            return
        future = self._pending.get(reply.id)
        if future is not None and not future.done():
            future.set_result(reply)  # late replies (after a timeout) find no future

    def _fail_all(self, reason: str) -> None:
        if self._lost is None:
            self._lost = ConnectionLostError(reason)
        for future in self._pending.values():
            if not future.done():
                future.set_result(ConnectionLostError(reason))
        self._writer.close()

    async def close(self) -> None:
        """Close the connection; pending requests fail with ConnectionLostError."""
        if not self._read_task.done():
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._read_task
        self._fail_all("the client was closed")
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLIENT_CLOSE_TIMEOUT):
                await self._writer.wait_closed()

    async def __aenter__(self) -> ProtocolClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
