"""httpx clients that attest the server on their first connection and pin its certificate.

    from attestation.https import attested_client
    from attestation.connect import Expectations

    with attested_client("https://enclave.example", Expectations(pcrs={0: "..."})) as client:
        client.post("/v1/score", content=payload)     # only after the binding is verified

How it works: the client's connection pool uses a network backend that, right after each TLS
handshake and before the connection carries any request, (1) on the first connection fetches
the document over that connection with a fresh nonce, verifies it and its binding to the
presented certificate (``attestation.connect.Expectations``), and pins that certificate;
(2) on every later connection compares the presented certificate with the pinned one. A
mismatch raises ``PublicKeyMismatchError`` (an ``AttestationError``) and the connection is
closed; the request is never sent. ``client.attested`` holds the verified document.

Needs the optional extra ``connect`` (httpx); imported only when this module is.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from .connect import Expectations, client_tls_context, exchange
from .document import AttestationDocument
from .errors import PublicKeyMismatchError

__all__ = [
    "AsyncAttestedTransport",
    "AttestedTransport",
    "Pin",
    "attested_async_client",
    "attested_client",
]

MAX_CONNECTIONS = 100
"""Connections a client keeps open at once (httpx's default)."""


@dataclass
class Pin:
    """The verified certificate and document, once the first connection has attested."""

    cert_der: bytes | None = None
    document: AttestationDocument | None = None
    attestations: int = 0

    def compare(self, cert_der: bytes) -> None:
        assert self.cert_der is not None
        if not hmac.compare_digest(cert_der, self.cert_der):
            raise PublicKeyMismatchError(
                "this connection presents another certificate than the attested one",
                expected=self.cert_der[:64],
                found=cert_der[:64],
            )


def _peer_cert(stream: Any) -> bytes:
    ssl_object = stream.get_extra_info("ssl_object")
    cert = ssl_object.getpeercert(True) if ssl_object is not None else None
    if not cert:
        raise PublicKeyMismatchError("the server presented no certificate")
    return bytes(cert)


def _host_header(origin_host: str | None, sni: str | None) -> str:
    return origin_host or sni or "enclave"


# -- sync ------------------------------------------------------------------------------------


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, guard: _Guard) -> None:
        self._inner, self._guard = inner, guard

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, timeout)
        try:
            self._guard.check(tls, server_hostname, timeout)
        except BaseException:
            tls.close()
            raise
        return tls


class _Guard:
    def __init__(self, expect: Expectations, host: str | None) -> None:
        self.expect, self.host = expect, host
        self.pin = Pin()
        self._lock = threading.Lock()

    def check(self, tls: httpcore.NetworkStream, sni: str | None, timeout: float | None) -> None:
        cert = _peer_cert(tls)
        with self._lock:
            if self.pin.cert_der is not None:
                self.pin.compare(cert)
                return
            nonce = self.expect.new_nonce()
            body = exchange(
                lambda data: tls.write(data, timeout),
                lambda: tls.read(65536, timeout),
                _host_header(self.host, sni),
                self.expect.target(nonce),
            )
            self.pin.document = self.expect.check(body, cert, nonce)
            self.pin.cert_der = cert
            self.pin.attestations += 1


class _Backend(httpcore.NetworkBackend):
    def __init__(self, guard: _Guard) -> None:
        self._inner = httpcore.SyncBackend()
        self._guard = guard

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Stream(stream, self._guard)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class AttestedTransport(httpx.HTTPTransport):
    """An httpx transport whose connections are attested (first) or pinned (later)."""

    def __init__(
        self,
        expect: Expectations | None = None,
        *,
        host: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(verify=client_tls_context())
        self.guard = _Guard(expect or Expectations(), host)
        self._pool = httpcore.ConnectionPool(
            ssl_context=client_tls_context(),
            max_connections=max_connections,
            http1=True,
            http2=False,
            network_backend=_Backend(self.guard),
        )

    @property
    def pin(self) -> Pin:
        return self.guard.pin


def attested_client(
    base_url: str, expect: Expectations | None = None, **kwargs: Any
) -> httpx.Client:
    """An ``httpx.Client`` for ``base_url`` over an :class:`AttestedTransport`."""
    transport = AttestedTransport(expect, host=httpx.URL(base_url).netloc.decode())
    client = httpx.Client(base_url=base_url, transport=transport, **kwargs)
    client.attested = transport.pin  # type: ignore[attr-defined]
    return client


# -- async -----------------------------------------------------------------------------------


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream, guard: _AsyncGuard) -> None:
        self._inner, self._guard = inner, guard

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        try:
            await self._guard.check(tls, server_hostname, timeout)
        except BaseException:
            await tls.aclose()
            raise
        return tls


class _AsyncGuard:
    def __init__(self, expect: Expectations, host: str | None) -> None:
        self.expect, self.host = expect, host
        self.pin = Pin()
        self._lock: asyncio.Lock | None = None

    async def check(
        self, tls: httpcore.AsyncNetworkStream, sni: str | None, timeout: float | None
    ) -> None:
        cert = _peer_cert(tls)
        if self.pin.cert_der is not None:
            self.pin.compare(cert)
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.pin.cert_der is not None:
                self.pin.compare(cert)
                return
            nonce = self.expect.new_nonce()
            from ._http_exchange import ResponseParser, get_request

            await tls.write(
                get_request(_host_header(self.host, sni), self.expect.target(nonce)), timeout
            )
            parser = ResponseParser()
            while not parser.done:
                parser.feed(await tls.read(65536, timeout))
            response = parser.response()
            if response.status != 200:
                from .errors import MalformedError

                raise MalformedError(
                    f"the server answered {response.status} to the attestation request"
                )
            self.pin.document = self.expect.check(response.body, cert, nonce)
            self.pin.cert_der = cert
            self.pin.attestations += 1


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, guard: _AsyncGuard) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._guard = guard

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _AsyncStream(stream, self._guard)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class AsyncAttestedTransport(httpx.AsyncHTTPTransport):
    """The asyncio twin of :class:`AttestedTransport`."""

    def __init__(
        self,
        expect: Expectations | None = None,
        *,
        host: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(verify=client_tls_context())
        self.guard = _AsyncGuard(expect or Expectations(), host)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=client_tls_context(),
            max_connections=max_connections,
            http1=True,
            http2=False,
            network_backend=_AsyncBackend(self.guard),
        )

    @property
    def pin(self) -> Pin:
        return self.guard.pin


def attested_async_client(
    base_url: str, expect: Expectations | None = None, **kwargs: Any
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for ``base_url`` over an :class:`AsyncAttestedTransport`."""
    transport = AsyncAttestedTransport(expect, host=httpx.URL(base_url).netloc.decode())
    client = httpx.AsyncClient(base_url=base_url, transport=transport, **kwargs)
    client.attested = transport.pin  # type: ignore[attr-defined]
    return client
