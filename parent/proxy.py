"""The parent proxy: an HTTP API for other services, forwarding to the enclave over vsock.

    python -m parent proxy --enclave-cid CID [--enclave-port 5000] [--port 8080] [--host 127.0.0.1]

Routes (JSON; bytes as base64; docs/proxy.md):

* ``GET /health`` — ``200 {"proxy": "ok", "enclave": "ok", ...}``, or ``503`` with
  ``"enclave": "down"`` when the enclave does not answer (the proxy itself is fine);
* ``POST /attestation {"nonce"}`` → ``{"document"}``: public_key and user_data are set by the
  enclave (a body naming them is refused with ``forbidden-field``);
* ``POST /e2e {"sealed"}`` → ``{"sealed"}``: an end-to-end encrypted request, opaque here;
* ``POST /v1/<op>`` — the app's operations that it marks ``http`` (learned from its
  ``describe``); ``GET /v1`` lists them.

Forwarding uses a pool of protocol connections that reconnects with backoff when the enclave
restarts; in-flight requests are bounded (503 ``proxy-busy`` beyond), bodies are bounded (413),
every enclave round trip has a deadline (504). Logs are JSON lines with request ids, codes and
timings — never bodies. Errors are ``{"error": {"code", "message"}, "request_id"}``.
In simulation the same code runs with ``NITRO_VSOCK_SIM_DIR`` set.

With ``--secret-store DIR|s3://BUCKET/PREFIX`` registered secrets survive enclave restarts
(``parent._secret_keeper``); ``GET /metrics`` serves Prometheus metrics (``parent.metrics``);
SIGTERM drains (``parent._drain``): health fails first, in-flight requests finish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

from enclave.config import ConfigError
from enclave.logs import configure_json_logging
from enclave.service import (
    EXIT_LISTEN,
    EXIT_USAGE,
    Started,
    config_failure,
    run_service,
    serve_until_signal,
)
from enclave.wire import APP_PORT

from ._drain import Drainer, DrainLimits
from ._node_health import node_health
from ._proxy_conns import ConnectionGate, ConnectionLimits
from ._proxy_http import BODY_TIMEOUT_S, QUEUE_TIMEOUT_S, HttpLimits, ProxyHandlers, request_context
from ._proxy_pool import EnclavePool, EnclaveUnavailable, PoolLimits
from ._secret_keeper import KeptPool, SecretKeeper
from .metrics import METRICS_PATH, ProxyMetrics
from .proxy_config import DEFAULT_PORT, ProxyConfig
from .secret_store import StoreError, open_store

__all__ = [
    "DEFAULT_ENCLAVE_PORT",
    "DEFAULT_PORT",
    "ConnectionLimits",
    "EnclavePool",
    "EnclaveUnavailable",
    "HttpLimits",
    "PoolLimits",
    "ProxyConfig",
    "build_app",
    "main",
    "run_proxy",
]

DEFAULT_ENCLAVE_PORT = APP_PORT
SHUTDOWN_TIMEOUT_S = 5.0
LISTEN_BACKLOG = 128  # connections the kernel queues before accept (asyncio default)

log = logging.getLogger("parent.proxy")


POOL_KEY = web.AppKey("pool", EnclavePool)
HANDLERS_KEY = web.AppKey("handlers", ProxyHandlers)
DRAINER_KEY = web.AppKey("drainer", Drainer)


def build_app(config: ProxyConfig) -> web.Application:
    """The aiohttp application (the pool starts and stops with it)."""
    drainer = Drainer(config.drain)
    keeper = None
    if config.secret_store:
        keeper = SecretKeeper(
            open_store(config.secret_store, endpoint_url=config.s3_endpoint_url), config.keeper
        )
    handlers_box: dict[str, ProxyHandlers] = {}
    metrics = ProxyMetrics(lambda: _node_state(pool, keeper, drainer),
                           lambda: handlers_box["h"].routes)
    app = web.Application(
        middlewares=[metrics.middleware, drainer.middleware, request_context],
        client_max_size=config.http.max_body_bytes,
    )

    async def on_connect(_pool: EnclavePool) -> None:
        with contextlib.suppress(Exception):
            await handlers_box["h"].refresh_routes()

    pool = KeptPool(config.enclave, limits=config.pool, on_connect=on_connect)
    pool.keeper = keeper
    handlers = ProxyHandlers(pool, config.http)
    handlers_box["h"] = handlers
    app[POOL_KEY] = pool
    app[HANDLERS_KEY] = handlers
    app[DRAINER_KEY] = drainer
    app.router.add_get("/health", node_health(handlers.health, keeper, drainer))
    app.router.add_get(METRICS_PATH, metrics.handler)
    app.router.add_post("/attestation", handlers.attestation)
    app.router.add_post("/e2e", handlers.e2e)
    app.router.add_get("/v1", handlers.list_routes)
    app.router.add_post("/v1/{op}", handlers.op)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await pool.start()
        if keeper is not None:
            await keeper.start(pool)
        yield
        if keeper is not None:
            await keeper.close()
        await pool.close()

    app.cleanup_ctx.append(lifecycle)
    return app


class CappedTCPSite(web.TCPSite):
    """A TCP site whose connections pass a :class:`ConnectionGate` (global and per-peer caps)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, gate: ConnectionGate,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.gate = gate

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.gate.wrap(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )


def _node_state(pool: EnclavePool, keeper: SecretKeeper | None, drainer: Drainer) -> dict:
    return {
        "enclave_up": keeper.enclave_up if keeper is not None else pool.up,
        "enclave_restarts": keeper.enclave_restarts if keeper is not None else 0,
        "enclave_connections": pool.connected,
        "enclave_connects": pool.connects,
        "secrets_registered": keeper.total if keeper is not None else 0,
        "secrets_loaded": keeper.loaded if keeper is not None else 0,
        "draining": drainer.draining,
    }


async def run_proxy(config: ProxyConfig, stop: asyncio.Event) -> int:
    """Serve until ``stop`` (or SIGTERM/SIGINT), then drain; prints one JSON ``ready`` line."""
    return await serve_until_signal(lambda: start_proxy(config), stop=stop)


async def start_proxy(config: ProxyConfig) -> Started | int:
    """Listen; the started service (ready line: url, enclave), or EXIT_LISTEN / EXIT_USAGE."""
    try:
        app = build_app(config)
    except StoreError as exc:
        print(f"proxy: secret store: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=config.http.header_timeout_s,  # also bounds a slow request head
        lingering_time=config.http.lingering_s,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    gate = ConnectionGate(config.connections)
    site = CappedTCPSite(
        runner, config.host, config.port, gate, reuse_address=True, backlog=LISTEN_BACKLOG
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        print(f"proxy: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return EXIT_LISTEN
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    log.info("listening", extra={"fields": {"url": url, "enclave_cid": config.enclave.cid,
                                            "enclave_port": config.enclave.port,
                                            "max_connections": gate.max_connections,
                                            "max_per_peer": config.connections.max_per_peer}})

    async def close() -> None:
        log.info("stopping", extra={"fields": {}})
        with contextlib.suppress(Exception):
            await app[DRAINER_KEY].drain(runner)
        await runner.cleanup()

    ready = {"url": url, "enclave": [config.enclave.cid, config.enclave.port]}
    drain = config.drain.grace_s + config.drain.deadline_s
    return Started(ready=ready, close=close, close_timeout_s=drain + SHUTDOWN_TIMEOUT_S + 5.0)


def _parser() -> argparse.ArgumentParser:
    d = HttpLimits()
    p = argparse.ArgumentParser(
        prog="python -m parent proxy",
        description="HTTP API for other services, forwarding to the enclave over vsock.",
    )
    p.add_argument("--enclave-cid", type=int, required=True, help="the enclave's CID (>= 4)")
    p.add_argument("--enclave-port", type=int, default=DEFAULT_ENCLAVE_PORT)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (0 = any free)")
    p.add_argument("--pool-size", type=int, default=PoolLimits().size,
                   help="connections to the enclave")
    p.add_argument("--max-in-flight", type=int, default=d.max_in_flight)
    p.add_argument("--max-connections", type=int, default=ConnectionLimits().max_connections,
                   help="open HTTP connections, all peers (also bounded by RLIMIT_NOFILE)")
    p.add_argument("--max-connections-per-peer", type=int,
                   default=ConnectionLimits().max_per_peer,
                   help="open HTTP connections from one peer address")
    p.add_argument("--max-body", type=int, default=d.max_body_bytes, help="bytes per body")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s,
                   help="seconds from a request's arrival to its answer: the outer deadline, "
                   "the inner ones (and the enclave's) derive from it "
                   f"(default {d.request_timeout_s:g})")
    p.add_argument("--header-timeout", type=float, default=d.header_timeout_s,
                   help="seconds a connection may take to send a request head (and idle)")
    p.add_argument("--body-timeout", type=float, default=None,
                   help=f"seconds to receive a whole body (default min({BODY_TIMEOUT_S:g}, "
                   "0.9 x the request timeout); must be below the request timeout")
    p.add_argument("--queue-timeout", type=float, default=None,
                   help=f"seconds a request waits for a forwarding slot (default "
                   f"min({QUEUE_TIMEOUT_S:g}, 0.9 x the request timeout))")
    p.add_argument("--secret-store", metavar="DIR|s3://BUCKET/PREFIX",
                   help="keep registered secrets (KMS ciphertexts) here; a restarted enclave "
                   "gets them back before it takes traffic")
    p.add_argument("--s3-endpoint-url", help="S3 endpoint for an s3:// secret store")
    p.add_argument("--drain-grace", type=float, default=DrainLimits().grace_s,
                   help="seconds /health fails before the proxy stops listening on SIGTERM")
    p.add_argument("--drain-deadline", type=float, default=None,
                   help="seconds in-flight requests get to finish after that "
                        "(default: --request-timeout + 0.5)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_json_logging(getattr(logging, args.log_level))
    try:
        config = ProxyConfig.from_args(args)
    except ConfigError as exc:
        return config_failure("proxy", exc)
    return run_service(lambda: start_proxy(config))


if __name__ == "__main__":
    sys.exit(main())
