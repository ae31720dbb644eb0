"""Serve an ASGI 3 app over TLS on a vsock port, with uvicorn, the attestation route first.

The toolkit creates the listening socket (AF_VSOCK, or the simulator's AF_UNIX socket) and the
TLS identity (``_tls``); uvicorn serves HTTP/1.1 on it. Access logs are off (paths and
headers are the app's data) and forwarded-for headers are not trusted (the parent is not).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from attestation.binding import nitriding_user_data
from enclave.ingress._route import AttestationRoute, RouteLimits
from enclave.ingress._tls import TlsIdentity
from enclave.transport import _vsock_real, _vsock_sim
from enclave.transport._vsock_address import VMADDR_CID_ANY, TransportLimits, VsockAddress
from enclave.wire import INGRESS_PORT

if TYPE_CHECKING:
    from enclave.app import App

__all__ = ["DEFAULT_INGRESS_PORT", "Ingress", "IngressLimits", "start_ingress"]

DEFAULT_INGRESS_PORT = INGRESS_PORT
"""vsock port of the TLS listener (the parent's ``ingress --enclave-port``)."""


@dataclass(frozen=True)
class IngressLimits:
    """Bounds of the TLS listener (counts, bytes, seconds)."""

    max_connections: int = 4096
    """Connections and requests in progress (uvicorn ``limit_concurrency``; above: 503)."""
    backlog: int = 2048
    """listen() backlog."""
    keep_alive_s: float = 5.0
    """An idle keep-alive connection is closed after this long."""
    max_header_bytes: int = 64 * 1024
    """Largest request head (h11 incomplete event)."""
    shutdown_s: float = 5.0
    """Requests in progress get this long to finish on stop."""
    proxy_header_timeout_s: float = 10.0
    """With a PROXY v2 parent: time for the header to arrive."""
    handshake_timeout_s: float = 10.0
    """Time for a client's TLS handshake (a stalled one is cut)."""
    route: RouteLimits = field(default_factory=RouteLimits)


def _uvicorn_server_class() -> Any:
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # the caller owns the signals
            yield

    return _Server


@dataclass
class Ingress:
    """A running TLS listener; ``stop()`` ends it."""

    address: VsockAddress
    path: str | None
    identity: TlsIdentity
    route: AttestationRoute
    _server: Any
    _task: asyncio.Task[None]

    async def stop(self) -> None:
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, self._server.config.timeout_graceful_shutdown + 5)
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _listen(port: int, limits: IngressLimits, sim_dir: Any, sim_cid: int | None) -> tuple:
    address = VsockAddress(VMADDR_CID_ANY, port)
    transport_limits = TransportLimits(backlog=limits.backlog)
    config = _vsock_sim.resolve(sim_dir, sim_cid)
    if config is not None:
        return _vsock_sim.listen(config, address, transport_limits)
    sock, effective = _vsock_real.listen(address, transport_limits)
    return sock, effective, None


async def start_ingress(
    asgi_app: Any,
    app: App,
    identity: TlsIdentity,
    *,
    port: int = DEFAULT_INGRESS_PORT,
    limits: IngressLimits | None = None,
    sim_dir: Any = None,
    sim_cid: int | None = None,
    proxy_protocol: bool = False,
) -> Ingress:
    """Listen on vsock ``port`` and serve ``asgi_app`` over TLS behind the attestation route.

    ``proxy_protocol``: every connection starts with a PROXY v2 header (the parent's
    ``--proxy-protocol``); the app then sees the client's address in ``scope["client"]``.
    """
    import uvicorn

    limits = limits or IngressLimits()
    user_data = nitriding_user_data(identity.cert_der)

    async def attest(nonce: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            app.executor,
            lambda: app.nsm.attestation(
                nonce=nonce, public_key=identity.spki_der, user_data=user_data
            ),
        )

    route = AttestationRoute(asgi_app, attest, limits.route)
    config = uvicorn.Config(
        route,
        http="h11",
        ws="none",
        lifespan="auto",
        loop="asyncio",
        log_config=None,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        limit_concurrency=limits.max_connections,
        backlog=limits.backlog,
        timeout_keep_alive=int(limits.keep_alive_s),
        timeout_graceful_shutdown=int(limits.shutdown_s),
        h11_max_incomplete_event_size=limits.max_header_bytes,
    )
    config.load()
    from enclave.ingress._proxy_tls import proxy_then_tls

    # TLS per connection (after the PROXY v2 header, if any), with our handshake bound
    config.http_protocol_class = proxy_then_tls(
        config.http_protocol_class, identity.context,
        header_timeout=limits.proxy_header_timeout_s,
        handshake_timeout=limits.handshake_timeout_s, expect_header=proxy_protocol,
    )
    config.ssl = None  # the in-enclave key lives in identity.context, never in a file
    sock, effective, path = _listen(port, limits, sim_dir, sim_cid)
    server = _uvicorn_server_class()(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # raises the startup failure
            raise RuntimeError("the ASGI server stopped while starting (lifespan failed?)")
        await asyncio.sleep(0.01)
    return Ingress(effective, path, identity, route, server, task)
