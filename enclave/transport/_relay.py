"""Bidirectional byte relay between two asyncio stream connections.

Two ways to move bytes, chosen per direction:

* tap, for plain (non-TLS) socket connections: the source transport's protocol is swapped
  with the documented ``transport.set_protocol`` for a ``BufferedProtocol`` tap: the kernel
  copies into a preallocated buffer (``recv_into``) and that memory goes straight to the
  destination's ``send``. No StreamReader, no allocation or copy in Python per chunk. Flow
  control pauses the source while the destination has more than ``high_water`` bytes queued.
* copy path, for anything else (TLS): ``read(chunk)`` / ``write`` / ``drain``.

Measured (docs/benchmarks.md §12, bench/transport.py, same minutes, 2 shared vCPUs): the tap
spends 0.30-0.50 CPU-s per GB relayed against 0.80-1.06 for the copy path (64 KiB and 1 MiB
messages), and a 16-byte round trip through the relay takes p50 47-78 µs against 148-156 µs.
So it stays, on public API only (no check of asyncio's private transport class).

EOF on one side is passed on as a half-close (``write_eof``); the relay ends when both
directions have ended, when one connection fails, after ``idle_timeout`` without traffic,
or ``half_close_timeout`` after the first direction ended. Both connections are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import cast

RELAY_IDLE_TIMEOUT = 300.0  # seconds without a byte in either direction
RELAY_HALF_CLOSE_TIMEOUT = 30.0  # seconds one direction may go on after the other ended
RELAY_HIGH_WATER = 1024 * 1024  # bytes queued for the destination before the source pauses
RELAY_CHUNK = 256 * 1024  # bytes per read (receive buffer of the fast path)
RELAY_CLOSE_TIMEOUT = 5.0  # seconds to wait for both connections to close


@dataclass(frozen=True, slots=True)
class RelayStats:
    """What a relay moved and why it ended.

    ``outcome``: "eof" (both sides finished), "reset" (a connection failed), "idle-timeout"
    or "half-close-timeout".
    """

    a_to_b: int
    b_to_a: int
    outcome: str


class _Activity:
    __slots__ = ("last",)

    def __init__(self, now: float) -> None:
        self.last = now


def _tappable(writer: asyncio.StreamWriter) -> bool:
    """A plain socket connection whose transport can take the tap: public asyncio API only
    (``BaseTransport.set_protocol`` with a ``BufferedProtocol``), no transport class check."""
    transport = writer.transport
    return (
        isinstance(transport, asyncio.Transport)
        and not transport.is_closing()
        and isinstance(transport.get_protocol(), asyncio.StreamReaderProtocol)
        and transport.get_extra_info("socket") is not None
        and transport.get_extra_info("sslcontext") is None
    )


class _Tap(asyncio.BufferedProtocol):
    """Stands in for a connection's StreamReaderProtocol while relaying.

    The transport receives straight into the direction's buffer (``recv_into``, no
    allocation per read); inbound data and EOF go to the direction. Flow control of the
    outbound side and the final connection_lost still reach the original protocol, so the
    connection's StreamWriter (drain, wait_closed) keeps working.
    """

    def __init__(self, inner: asyncio.StreamReaderProtocol, direction: _Direction) -> None:
        self._inner = inner
        self._direction = direction

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._direction.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._direction.on_filled(nbytes)

    def eof_received(self) -> bool:
        self._direction.on_eof()
        return True  # keep the transport open: the other direction may still write

    def connection_lost(self, exc: Exception | None) -> None:
        self._direction.on_lost(exc)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Direction:
    """Moves bytes from one connection (reader, src writer) to another (dst writer)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        src: asyncio.StreamWriter,
        dst: asyncio.StreamWriter,
        *,
        high_water: int,
        chunk: int,
        activity: _Activity,
    ) -> None:
        self.count = 0
        self._reader = reader
        self._src = src
        self._dst = dst
        self._high_water = high_water
        self._chunk = chunk
        self._activity = activity
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.buffer = memoryview(bytearray(0))  # the fast path's receive buffer (set there)
        self._lent: list[memoryview] = []  # buffers the destination may still reference
        self._spare: list[memoryview] = []  # buffers free for reuse
        self._eof = False
        self._error: BaseException | None = None
        self._blocked = False

    # --- fast path: callbacks from the source transport -------------------------------
    def on_filled(self, nbytes: int) -> None:
        dst = self._dst.transport
        if dst.is_closing():
            self._fail(ConnectionResetError("relay destination closed"))
            return
        dst.write(self.buffer[:nbytes])  # sent at once unless the destination is full
        self.count += nbytes
        self._activity.last = self._loop.time()
        queued = dst.get_write_buffer_size()
        if queued:
            # The transport keeps the unsent rest, possibly as a view of this buffer (it does
            # from Python 3.12): never refill it until the destination's queue is empty.
            self._lent.append(self.buffer)
            self.buffer = self._spare.pop() if self._spare else memoryview(bytearray(self._chunk))
        elif self._lent:
            self._spare.extend(self._lent)
            self._lent.clear()
        if not self._blocked and queued > self._high_water:
            self._blocked = True
            self._reading().pause_reading()
            self._wake.set()

    def on_eof(self) -> None:
        self._eof = True
        self._wake.set()

    def on_lost(self, exc: Exception | None) -> None:
        if not self._eof:
            self._fail(exc or ConnectionResetError("relay source closed"))

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        with contextlib.suppress(Exception):
            self._reading().pause_reading()
        self._wake.set()

    # --- the pump ------------------------------------------------------------------------
    def _reading(self) -> asyncio.Transport:
        """The source's transport, which reads as well as writes."""
        return cast(asyncio.Transport, self._src.transport)

    async def run(self) -> None:
        if _tappable(self._src):
            await self._run_fast()
        else:
            await self._run_copy()
        self._finish()

    def _finish(self) -> None:
        if self._dst.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self._dst.write_eof()

    def _forward(self, data: bytes) -> None:
        self._dst.write(data)
        self.count += len(data)
        self._activity.last = self._loop.time()

    async def _run_copy(self) -> None:
        reader, chunk = self._reader, self._chunk
        while True:
            data = await reader.read(chunk)
            if not data:
                return
            self._forward(data)
            await self._dst.drain()

    async def _run_fast(self) -> None:
        transport = self._reading()
        inner = transport.get_protocol()
        assert isinstance(inner, asyncio.StreamReaderProtocol)
        self.buffer = memoryview(bytearray(self._chunk))
        transport.set_protocol(_Tap(inner, self))
        # From here on no byte reaches the StreamReader: hand on what it already holds.
        self._reader.feed_eof()
        leftover = await self._reader.read()
        if leftover:
            self._forward(leftover)
            await self._dst.drain()
        if transport.is_closing():
            return
        # An EOF seen before the swap is reported again once reading is re-armed.
        transport.pause_reading()
        transport.resume_reading()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._blocked:
                await self._dst.drain()
                self._blocked = False
                if self._error is None and not self._eof:
                    transport.resume_reading()
            if self._error is not None:
                raise self._error
            if self._eof:
                return


async def relay(
    reader_a: asyncio.StreamReader,
    writer_a: asyncio.StreamWriter,
    reader_b: asyncio.StreamReader,
    writer_b: asyncio.StreamWriter,
    *,
    idle_timeout: float = RELAY_IDLE_TIMEOUT,
    half_close_timeout: float = RELAY_HALF_CLOSE_TIMEOUT,
    high_water: int = RELAY_HIGH_WATER,
    chunk_size: int = RELAY_CHUNK,
) -> RelayStats:
    """Pump bytes both ways between connection A and connection B until both are done.

    Takes ownership of both connections and closes them before returning. Never raises for
    connection failures (see ``RelayStats.outcome``); cancelling the relay closes both.
    """
    loop = asyncio.get_running_loop()
    activity = _Activity(loop.time())
    for writer in (writer_a, writer_b):
        with contextlib.suppress(Exception):
            writer.transport.set_write_buffer_limits(high=high_water)
    a_to_b = _Direction(
        reader_a, writer_a, writer_b, high_water=high_water, chunk=chunk_size, activity=activity
    )
    b_to_a = _Direction(
        reader_b, writer_b, writer_a, high_water=high_water, chunk=chunk_size, activity=activity
    )
    pending = {loop.create_task(a_to_b.run()), loop.create_task(b_to_a.run())}
    outcome = "eof"
    first_done: float | None = None
    try:
        while pending:
            now = loop.time()
            deadline = activity.last + idle_timeout
            if first_done is not None:
                deadline = min(deadline, first_done + half_close_timeout)
            done, pending = await asyncio.wait(
                pending, timeout=max(0.0, deadline - now), return_when=asyncio.FIRST_COMPLETED
            )
            if any(not t.cancelled() and t.exception() is not None for t in done):
                outcome = "reset"
                break
            if done:
                if first_done is None:
                    first_done = loop.time()
                continue
            now = loop.time()
            if now >= activity.last + idle_timeout:
                outcome = "idle-timeout"
                break
            if first_done is not None and now >= first_done + half_close_timeout:
                outcome = "half-close-timeout"
                break
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await _close_both(writer_a, writer_b)
    return RelayStats(a_to_b.count, b_to_a.count, outcome)


async def _close_both(*writers: asyncio.StreamWriter) -> None:
    for writer in writers:
        writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(RELAY_CLOSE_TIMEOUT):
            await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
