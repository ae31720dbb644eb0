"""One server-side protocol connection: read frames, run handlers, write replies.

Requests run concurrently (up to ``max_in_flight``; beyond it nothing more is read, so the
peer's sends block) and are answered in completion order. A connection-level error gets one
error frame with ``"id": null`` and closes this connection only; a payload that is not valid
CBOR but whose head still names its request id is answered on that id (``bad-cbor``) and the
connection, which other requests may share, stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from attestation.errors import is_code
from enclave.protocol._base import REQUEST_DEADLINE, HandlerError, ProtocolLimits
from enclave.protocol._framing import (
    FrameClock,
    FrameError,
    Request,
    decode_cbor,
    encode_error,
    encode_response,
    frame,
    parse_request,
    peek_request_id,
    read_frame,
)

logger = logging.getLogger("enclave.protocol")

Handler = Callable[[Any], Awaitable[Any]]
READ_CHUNK = 1024 * 1024  # bytes asked from the stream per read
CLOSE_TIMEOUT = 5.0  # seconds to flush the last frame and close
LINGER_TIMEOUT = 1.0  # after a connection-level error: seconds spent discarding the peer's bytes
LINGER_BYTES = 4 * 1024 * 1024  # ... and at most this many, so its writes do not fail first


class ServerConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handlers: Mapping[str, Handler],
        limits: ProtocolLimits,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handlers = handlers
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids: set[int] = set()
        self._slot_free = asyncio.Event()
        self._write_lock = asyncio.Lock()  # one reply drains at a time: the buffer stays small
        self._last_activity = self._loop.time()
        self._broken = False
        self._linger = False
        self._reading = False  # the read loop waits in read_frame
        self._clock: FrameClock | None = None

    # --- reading -------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._read_loop()
            await self._finish_in_flight()
        except FrameError as exc:
            self._abandon(exc.code, exc.message)
        except asyncio.CancelledError:
            self._abandon("shutting-down", "the server is stopping")
        except (ConnectionError, OSError):
            self._broken = True
        finally:
            for task in self._tasks:
                task.cancel()
            await self._close()

    async def _read_loop(self) -> None:
        limits = self._limits
        clock = self._clock = FrameClock(limits.read_timeout, limits.idle_timeout)
        clock.start()
        try:
            while True:
                if len(self._tasks) >= limits.max_in_flight:
                    self._slot_free.clear()
                    await self._slot_free.wait()  # backpressure: no reads meanwhile
                    continue
                await self._drain()  # error replies sent by _dispatch count too
                if self._broken:
                    return
                self._reading = True
                if not self._tasks:  # not idle while requests run (see _done)
                    clock.idle_deadline = self._last_activity + limits.idle_timeout
                try:
                    payload = await read_frame(self._reader, limits.max_frame, clock)
                finally:
                    self._reading = False
                    clock.idle_deadline = None
                if payload is None:
                    return
                self._last_activity = self._loop.time()
                self._dispatch(payload)
        finally:
            clock.stop()

    async def _finish_in_flight(self) -> None:
        """The peer finished sending: answer what is in flight, then close."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    # --- requests ------------------------------------------------------------------------
    def _dispatch(self, payload: bytes) -> None:
        strict = self._limits.strict_map_keys
        try:
            request = parse_request(decode_cbor(payload, strict_keys=strict))
        except FrameError as exc:
            rid = exc.request_id
            if rid is None and exc.code == "bad-cbor":
                rid = peek_request_id(payload)  # the frame is delimited: answer just this one
                if rid is not None and rid in self._ids:
                    rid = None
            if rid is None:
                raise
            self._send(encode_error(rid, exc.code, exc.message))
            return
        if request.id in self._ids:
            self._send(
                encode_error(request.id, "bad-request", f"id {request.id} is already in flight")
            )
            return
        self._ids.add(request.id)
        task = self._loop.create_task(self._serve(request))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._last_activity = self._loop.time()
        self._slot_free.set()
        if not self._tasks and self._reading and self._clock is not None:
            self._clock.idle_deadline = self._last_activity + self._limits.idle_timeout
        if not task.cancelled() and task.exception() is not None:
            logger.error("reply task failed: %s", type(task.exception()).__name__)

    async def _serve(self, request: Request) -> None:
        try:
            payload = await self._answer(request)
        finally:
            self._ids.discard(request.id)
        async with self._write_lock:
            self._send(payload)
            await self._drain()

    async def _answer(self, request: Request) -> bytes:
        rid, op = request.id, request.op
        handler = self._handlers.get(op)
        if handler is None:
            return encode_error(rid, "unknown-op", f"no handler for op {op!r}")
        timeout = self._limits.request_timeout
        if request.timeout_ms is not None:
            timeout = min(timeout, request.timeout_ms / 1000)
        deadline = asyncio.timeout(timeout)
        REQUEST_DEADLINE.set(self._loop.time() + timeout)  # this request's task only
        try:
            async with deadline:
                body = await handler(request.body)
        except HandlerError as exc:
            if not is_code(exc.code):
                logger.warning("op %r raised HandlerError with an invalid code", op)
                return encode_error(rid, "internal", "internal error")
            return encode_error(rid, exc.code, exc.message, exc.kind)
        except TimeoutError:
            if deadline.expired():
                return encode_error(
                    rid, "timeout", f"op {op!r} did not finish within {timeout:g} s"
                )
            logger.warning("op %r failed: TimeoutError", op)
            return encode_error(rid, "internal", "internal error")
        except Exception as exc:  # the text may hold secrets: it stays here, unlogged
            logger.warning("op %r failed: %s", op, type(exc).__name__)
            return encode_error(rid, "internal", "internal error")
        try:
            payload = encode_response(rid, body, strict_keys=self._limits.strict_map_keys)
        except FrameError as exc:
            logger.warning("op %r returned a body that cannot be sent", op)
            return encode_error(rid, exc.code, exc.message)
        if len(payload) > self._limits.max_frame:
            return encode_error(
                rid,
                "response-too-large",
                f"response of {len(payload)} bytes is over max_frame {self._limits.max_frame}",
            )
        return payload

    # --- writing -------------------------------------------------------------------------
    def _send(self, payload: bytes) -> None:
        if self._broken or self._writer.is_closing():
            return
        for buffer in frame(payload):
            self._writer.write(memoryview(buffer))  # a partial send then slices without copying

    async def _drain(self) -> None:
        transport = self._writer.transport
        if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
            return  # below the high-water mark drain() would not wait: skip its timer
        try:
            async with asyncio.timeout(self._limits.write_timeout):
                await self._writer.drain()
        except TimeoutError:
            logger.warning(
                "peer did not read replies for %g s; aborting", self._limits.write_timeout
            )
            self._broken = True
            self._writer.transport.abort()
        except (ConnectionError, OSError):
            self._broken = True

    def _abandon(self, code: str, message: str) -> None:
        """Connection-level error: tell the peer (best effort); the caller closes."""
        self._send(encode_error(None, code, message))
        self._linger = True

    async def _close(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=CLOSE_TIMEOUT)
        await close_connection(self._reader, self._writer, linger=self._linger and not self._broken)


async def close_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, linger: bool
) -> None:
    """Half-close, optionally discard what the peer still sends for a moment (so that it
    reads our last frame instead of failing on a write), then close; all bounded."""
    with contextlib.suppress(Exception):
        if not writer.is_closing() and writer.can_write_eof():
            writer.write_eof()
    if linger and not writer.is_closing():
        with contextlib.suppress(Exception):
            async with asyncio.timeout(LINGER_TIMEOUT):
                discarded = 0
                while discarded < LINGER_BYTES and (data := await reader.read(READ_CHUNK)):
                    discarded += len(data)
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()


async def reject_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, code: str, message: str
) -> None:
    """Send one connection-level error frame and close."""
    for buffer in frame(encode_error(None, code, message)):
        writer.write(buffer)
    await close_connection(reader, writer, linger=True)
