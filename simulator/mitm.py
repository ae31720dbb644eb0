"""A TLS man-in-the-middle for demos and tests: it ends TLS with its own certificate and
re-encrypts towards the real server, seeing the plaintext in between (``seen``).

This is what an attested client must refuse: the enclave's document is genuine and fresh
(the MITM forwards the request for it), but its ``public_key`` is not the certificate the
client was shown, so ``attestation connect`` answers ``public-key-mismatch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Coroutine
from typing import Any

from attestation.connect import client_tls_context
from enclave.ingress import make_identity
from enclave.transport import relay

__all__ = ["MAX_SEEN", "TlsMitm"]

MAX_SEEN = 1024 * 1024
"""Plaintext bytes kept from each direction (for inspection)."""


class TlsMitm:
    """Listens on 127.0.0.1 (its own loop, in a thread); ``url`` once started."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.identity = make_identity()
        self.seen = bytearray()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def start(self) -> TlsMitm:
        self._thread.start()
        self._server = self._run(self._listen())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._on_client, "127.0.0.1", 0,
                                          ssl=self.identity.context)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                *self.upstream, ssl=client_tls_context(), server_hostname=None
            )
        except (OSError, ssl.SSLError):
            writer.close()
            return
        spy = _Spy(reader, self.seen)
        try:
            await relay(spy, writer, up_reader, up_writer)  # type: ignore[arg-type]
        except asyncio.CancelledError:  # stopping: the relay closed both connections
            return

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._run(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> TlsMitm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Spy:
    """A StreamReader stand-in that keeps a copy of what the client sent (bounded)."""

    def __init__(self, reader: asyncio.StreamReader, seen: bytearray) -> None:
        self._reader, self._seen = reader, seen

    async def read(self, n: int = -1) -> bytes:
        data = await self._reader.read(n)
        if len(self._seen) < MAX_SEEN:
            self._seen += data[: MAX_SEEN - len(self._seen)]
        return data

    def feed_eof(self) -> None:
        self._reader.feed_eof()
