"""Bidirectional byte relay between two asyncio stream connections (public asyncio API only).

Each direction is ``read(chunk)`` / ``write`` / ``drain``: the destination's write buffer
(``high_water``) bounds what is queued, and ``drain`` pauses the direction until the peer
reads. A private-transport fast path (swapping the protocol of asyncio's
``_SelectorSocketTransport``) was measured against this and removed: it did not pay on the
KMS relay or the HTTPS ingress path (docs/benchmarks.md §12).

EOF on one side is passed on as a half-close (``write_eof``); the relay ends when both
directions have ended, when one connection fails, after ``idle_timeout`` without traffic,
or ``half_close_timeout`` after the first direction ended. Both connections are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

RELAY_IDLE_TIMEOUT = 300.0  # seconds without a byte in either direction
RELAY_HALF_CLOSE_TIMEOUT = 30.0  # seconds one direction may go on after the other ended
RELAY_HIGH_WATER = 1024 * 1024  # bytes queued for the destination before the source pauses
RELAY_CHUNK = 256 * 1024  # bytes per read
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


async def _pump(
    reader: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    chunk: int,
    activity: _Activity,
    moved: list[int],
) -> None:
    """Copy ``reader`` to ``dst`` until EOF, then half-close ``dst``."""
    loop = asyncio.get_running_loop()
    while data := await reader.read(chunk):
        dst.write(data)
        moved[0] += len(data)
        activity.last = loop.time()
        await dst.drain()
    if dst.can_write_eof():
        with contextlib.suppress(OSError, RuntimeError):
            dst.write_eof()


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
    a_to_b, b_to_a = [0], [0]  # bytes moved each way
    pending = {
        loop.create_task(_pump(reader_a, writer_b, chunk_size, activity, a_to_b)),
        loop.create_task(_pump(reader_b, writer_a, chunk_size, activity, b_to_a)),
    }
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
    return RelayStats(a_to_b[0], b_to_a[0], outcome)


async def _close_both(*writers: asyncio.StreamWriter) -> None:
    for writer in writers:
        writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(RELAY_CLOSE_TIMEOUT):
            await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
