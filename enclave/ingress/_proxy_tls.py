"""Per connection: [read a PROXY v2 header,] start TLS, hand over to uvicorn's protocol.

Every connection of the listener goes through here, so the TLS handshake has the toolkit's
own bound (``handshake_timeout``; asyncio's server default would be 60 s). When the parent
sends PROXY v2 headers (``--proxy-protocol`` on both sides) the header is read first, with a
buffered protocol that never asks the socket for more bytes than the header still needs, so
no TLS byte is consumed early; uvicorn's HTTP protocol then gets the TLS transport, with
``client`` set from the header. A connection without a valid header within
``header_timeout`` is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

from .proxy_v2 import HEADER_FIXED, MAX_HEADER, ProxyHeaderError, parse_header, parse_length

__all__ = ["proxy_then_tls"]


class _Deferred(asyncio.Protocol):
    """Stands in for the HTTP protocol until it has its TLS transport: data that arrives
    between the handshake and ``start_tls`` returning is kept, then handed over in order."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pending: list[bytes] = []
        self.eof = False
        self.lost: tuple[Exception | None] | None = None

    def data_received(self, data: bytes) -> None:
        self.pending.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = (exc,)

    def hand_over(self, tls: asyncio.Transport, source: tuple[str, int] | None) -> None:
        self.inner.connection_made(tls)
        if source is not None:
            self.inner.client = source
        tls.set_protocol(self.inner)
        for data in self.pending:
            self.inner.data_received(data)
        self.pending.clear()
        if self.eof:
            self.inner.eof_received()
        if self.lost is not None:
            self.inner.connection_lost(self.lost[0])


def proxy_then_tls(
    inner_class: Any, context: ssl.SSLContext, *, header_timeout: float,
    handshake_timeout: float, expect_header: bool = True,
) -> type:
    """A protocol class with uvicorn's HTTP protocol signature (keyword arguments)."""

    class ProxyThenTls(asyncio.BufferedProtocol):
        def __init__(self, **kwargs: Any) -> None:
            self._inner = inner_class(**kwargs)
            self._buffer = memoryview(bytearray(MAX_HEADER))
            self._got, self._need, self._fixed = 0, HEADER_FIXED, False
            self._transport: asyncio.Transport | None = None
            self._timer: asyncio.TimerHandle | None = None
            self._task: asyncio.Task[None] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self._transport = transport
            if not expect_header:
                self._task = asyncio.ensure_future(self._upgrade(None))
                return
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(header_timeout, self._abort)

        def _abort(self) -> None:
            if self._transport is not None:
                self._transport.abort()

        def get_buffer(self, sizehint: int) -> memoryview:
            return self._buffer[self._got : self._need]

        def buffer_updated(self, nbytes: int) -> None:
            self._got += nbytes
            if self._got < self._need:
                return
            try:
                if not self._fixed:
                    self._fixed = True
                    self._need += parse_length(bytes(self._buffer[:HEADER_FIXED]))
                    if self._got < self._need:
                        return
                info = parse_header(bytes(self._buffer[: self._need]))
            except ProxyHeaderError:
                self._abort()
                return
            assert self._transport is not None
            self._transport.pause_reading()
            if self._timer is not None:
                self._timer.cancel()
            self._task = asyncio.ensure_future(self._upgrade(info.source))

        async def _upgrade(self, source: tuple[str, int] | None) -> None:
            loop = asyncio.get_running_loop()
            transport = self._transport
            assert transport is not None
            deferred = _Deferred(self._inner)
            try:
                tls = await loop.start_tls(
                    transport, deferred, context, server_side=True,
                    ssl_handshake_timeout=handshake_timeout,
                )
            except (OSError, ssl.SSLError, ConnectionError, TimeoutError):
                transport.abort()
                return
            if tls is None:
                transport.abort()
                return
            deferred.hand_over(tls, source)

        def eof_received(self) -> bool:
            return False

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
            if self._task is not None and not self._task.done():
                with contextlib.suppress(Exception):
                    self._task.cancel()

    return ProxyThenTls
