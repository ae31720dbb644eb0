"""Attested HTTPS ingress, parent side: TCP in, vsock out, bytes only (DESIGN §3).

    python -m parent ingress --listen HOST:PORT --enclave-cid CID [--enclave-port 5443]
        [--proxy-protocol] [--max-connections N] [--idle-timeout S] [--connect-timeout S]

Every accepted TCP connection is piped, as opaque bytes, to the enclave's TLS listener on
vsock with the toolkit's relay (``enclave.transport.relay``); TLS ends inside the enclave,
so this process never holds a key and never sees plaintext. Bounded: at most
``max_connections`` at once (more are closed at once), a connect timeout towards the
enclave, an idle timeout per connection. ``--proxy-protocol`` sends a PROXY v2 header first
(the enclave must run with ``--proxy-protocol`` too) so the app sees client addresses.

Settings: ``parent.ingress_config.IngressConfig`` (built from these flags, checked at
start-up). Runs through ``enclave.service.run_service``: one JSON ``ready`` line (``url``,
``port``) on stdout. Exit codes: 0 stopped by a signal, 2 usage or invalid configuration,
5 cannot listen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import socket
import sys
from collections.abc import Sequence

from enclave.config import ConfigError
from enclave.ingress.proxy_v2 import build_header
from enclave.service import EXIT_LISTEN, Started, config_failure, run_service
from enclave.transport import TransportError, VsockAddress, open_connection, relay
from enclave.wire import INGRESS_PORT as DEFAULT_INGRESS_PORT

from .ingress_config import IngressConfig, IngressLimits

__all__ = ["EXIT_LISTEN", "Ingress", "IngressConfig", "IngressLimits", "main"]

log = logging.getLogger("parent.ingress")


class Ingress:
    """Accepts TCP connections and relays each to the enclave's vsock TLS listener."""

    def __init__(
        self,
        enclave: VsockAddress,
        *,
        host: str = "0.0.0.0",
        port: int = 443,
        limits: IngressLimits | None = None,
        proxy_protocol: bool = False,
        sim_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.enclave = enclave
        self.host, self.port = host, port
        self.limits = limits or IngressLimits()
        self.proxy_protocol = proxy_protocol
        self.sim_dir = sim_dir
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.active = self.total = self.refused = self.failed = 0

    async def start(self) -> None:
        """Listen (raises OSError when the address is taken)."""
        self._server = await asyncio.start_server(
            self._on_connect, self.host, self.port, backlog=self.limits.backlog,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"https://{'[' + host + ']' if ':' in host else host}:{self.port}"

    async def close(self) -> None:
        """Stop accepting and close every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)

    def counts(self) -> dict[str, int]:
        return {"active": self.active, "total": self.total,
                "refused": self.refused, "failed": self.failed}

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= self.limits.max_connections:
            self.refused += 1
            writer.transport.abort()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.active += 1
        self.total += 1
        try:
            await self._relay(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            self.active -= 1
            if task is not None:
                self._tasks.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            up_reader, up_writer = await open_connection(
                self.enclave, deadline=self.limits.connect_timeout_s, sim_dir=self.sim_dir
            )
        except TransportError as exc:
            self.failed += 1
            log.warning("cannot reach the enclave: %s", exc.code)
            writer.transport.abort()
            return
        if self.proxy_protocol:
            up_writer.write(build_header(
                _address(writer.get_extra_info("peername")),
                _address(writer.get_extra_info("sockname")),
            ))
        await relay(  # owns both connections from here and closes them
            reader, writer, up_reader, up_writer,
            idle_timeout=self.limits.idle_timeout_s, chunk_size=self.limits.chunk_bytes,
        )


def _address(value: object) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


def _parser() -> argparse.ArgumentParser:
    d = IngressLimits()
    p = argparse.ArgumentParser(
        prog="python -m parent ingress",
        description="Relay TCP to the enclave's TLS listener over vsock (bytes only).",
    )
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="TCP address to accept on")
    p.add_argument("--enclave-cid", type=int, required=True, help="the enclave's CID")
    p.add_argument("--enclave-port", type=int, default=DEFAULT_INGRESS_PORT,
                   help=f"the enclave's TLS vsock port (default {DEFAULT_INGRESS_PORT})")
    p.add_argument("--proxy-protocol", action="store_true",
                   help="send a PROXY v2 header (client address) before the TLS bytes")
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help=f"connections relayed at once (default {d.max_connections})")
    p.add_argument("--connect-timeout", type=float, default=d.connect_timeout_s,
                   help=f"seconds to reach the enclave (default {d.connect_timeout_s:g})")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s,
                   help=f"close a connection idle this long (default {d.idle_timeout_s:g} s)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m parent ingress ...``; see the module docstring."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="ingress: %(levelname)s %(message)s")
    try:
        config = IngressConfig.from_args(args)
    except ConfigError as exc:
        return config_failure("ingress", exc)
    with contextlib.suppress(ValueError, OSError):  # each connection is two descriptors
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ingress = Ingress(config.enclave, host=config.host, port=config.port, limits=config.limits,
                      proxy_protocol=config.proxy_protocol)
    return run_service(lambda: _start(ingress))


async def _start(ingress: Ingress) -> Started | int:
    try:
        await ingress.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", ingress.host, ingress.port, exc.strerror or exc)
        return EXIT_LISTEN

    async def close() -> None:
        await ingress.close()
        log.info("stopped; connections: %s", ingress.counts())

    ready = {"url": ingress.url, "port": ingress.port, "enclave_cid": ingress.enclave.cid,
             "enclave_port": ingress.enclave.port}
    return Started(ready=ready, close=close)


if __name__ == "__main__":
    sys.exit(main())
