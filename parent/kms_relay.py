"""KMS relay: vsock -> TCP forwarder for the enclave's KMS traffic (replaces AWS vsock-proxy).

    python -m parent.kms_relay [-4|-6] [--config FILE] [--listen-cid CID] \\
        LOCAL_PORT REMOTE_HOST REMOTE_PORT

Same command line and allowlist YAML as AWS ``vsock-proxy`` (nitro-spec §4.1): it listens on
vsock ``(CID 3, LOCAL_PORT)`` and pipes every connection, as opaque bytes, to
``REMOTE_HOST:REMOTE_PORT``, which must be on the allowlist (default: the packaged
``parent/vsock-proxy.yaml``: KMS endpoints). The enclave runs TLS through it, so the relay
sees ciphertext only. Differences from vsock-proxy, on purpose:

- asyncio, no worker pool: every connection is served at once up to
  ``RelayLimits.max_connections`` (vsock-proxy serves 4 and queues the rest: CLI #413);
- the remote name is re-resolved every ``RelayLimits.dns_refresh_s`` (stdlib resolution has no
  TTL; vsock-proxy uses the record's TTL), keeping the last good address if resolution fails;
- a connect timeout and an idle timeout per connection; a failed connect closes only that
  client (vsock-proxy panics the worker);
- logs connection counts, never bytes.

Settings: ``parent.relay_config.RelayConfig`` (built from these flags, checked at start-up).
Exit codes: 0 stopped by a signal, 2 usage or invalid configuration, 3 destination not on
the allowlist, 4 allowlist unreadable or malformed, 5 cannot listen.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence

from enclave.config import ConfigError
from enclave.service import EXIT_LISTEN, Started, config_failure, run_service
from enclave.transport import (
    PARENT_CID,
    TransportError,
    TransportLimits,
    VsockAddress,
    VsockServer,
    relay,
    start_server,
)
from enclave.wire import KMS_RELAY_PORT

from ._allowlist import (
    DEFAULT_ALLOWLIST,
    AllowlistError,
    IpAddress,
    IpFamily,
    Resolver,
    check_destination,
    load_allowlist,
    resolve,
)
from .relay_config import RelayConfig, RelayLimits

__all__ = [
    "DEFAULT_LOCAL_PORT",
    "EXIT_CONFIG",
    "EXIT_LISTEN",
    "EXIT_NOT_ALLOWED",
    "KmsRelay",
    "RelayConfig",
    "RelayLimits",
    "main",
]

DEFAULT_LOCAL_PORT = KMS_RELAY_PORT
EXIT_NOT_ALLOWED = 3
EXIT_CONFIG = 4

log = logging.getLogger("parent.kms_relay")


class _Destination:
    """The remote address, re-resolved after `dns_refresh_s`; keeps the last good one."""

    def __init__(
        self, host: str, port: int, family: IpFamily, limits: RelayLimits, resolver: Resolver
    ) -> None:
        self.host, self.port, self.family = host, port, family
        self._limits = limits
        self._resolver = resolver
        self._ip: IpAddress | None = None
        self._resolved_at = float("-inf")
        self._lock = asyncio.Lock()

    async def address(self) -> IpAddress:
        if time.monotonic() - self._resolved_at < self._limits.dns_refresh_s and self._ip:
            return self._ip
        async with self._lock:
            if time.monotonic() - self._resolved_at < self._limits.dns_refresh_s and self._ip:
                return self._ip
            loop = asyncio.get_running_loop()
            try:
                ips = await asyncio.wait_for(
                    loop.run_in_executor(None, self._resolver, self.host, self.family),
                    self._limits.resolve_timeout_s,
                )
                ip = ips[0]
            except (OSError, TimeoutError, IndexError, UnicodeError) as exc:
                if self._ip is None:
                    raise OSError(f"cannot resolve {self.host}: {exc}") from None
                log.warning("re-resolving %s failed; keeping %s", self.host, self._ip)
                self._resolved_at = time.monotonic()
                return self._ip
            if ip != self._ip:
                log.info("using %s for %s", ip, self.host)
            self._ip, self._resolved_at = ip, time.monotonic()
            return ip


class KmsRelay:
    """Accepts vsock connections on `listen` and pipes each to the remote TCP endpoint."""

    def __init__(
        self,
        remote_host: str,
        remote_port: int,
        *,
        listen: VsockAddress | None = None,
        family: IpFamily = IpFamily.ANY,
        limits: RelayLimits | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        self.listen = listen or VsockAddress(PARENT_CID, DEFAULT_LOCAL_PORT)
        self.limits = limits or RelayLimits()
        self.destination = _Destination(remote_host, remote_port, family, self.limits, resolver)
        self._server: VsockServer | None = None
        self.active = 0
        self.total = 0
        self.refused = 0
        self.failed = 0
        self.bytes_to_remote = 0
        self.bytes_from_remote = 0

    async def start(self) -> None:
        """Bind and start accepting (raises TransportError when it cannot listen)."""
        self._server = await start_server(
            self._on_connect, self.listen, limits=TransportLimits(backlog=self.limits.backlog)
        )
        log.info(
            "listening on vsock (%d, %d) -> %s:%d",
            self.listen.cid, self.listen.port, self.destination.host, self.destination.port,
        )

    async def close(self) -> None:
        """Stop accepting and close every open connection."""
        if self._server is not None:
            self._server.close()  # also cancels the connections still relaying
            await self._server.wait_closed()

    def counts(self) -> dict[str, int]:
        return {
            "active": self.active, "total": self.total,
            "refused": self.refused, "failed": self.failed,
        }

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= self.limits.max_connections:
            self.refused += 1
            log.warning("refused a connection: %d already open", self.active)
            return  # start_server closes the connection
        self.active += 1
        self.total += 1
        log.debug("connection opened (%d open)", self.active)
        try:
            await self._relay(reader, writer)
        finally:
            self.active -= 1
            log.debug("connection closed (%d open)", self.active)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dest = self.destination
        try:
            ip = await dest.address()
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(str(ip), dest.port), self.limits.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            self.failed += 1
            reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            log.warning("cannot connect to %s:%d: %s", dest.host, dest.port, reason)
            return
        stats = await relay(  # owns both connections from here and closes them
            reader, writer, up_reader, up_writer,
            idle_timeout=self.limits.idle_timeout_s, chunk_size=self.limits.chunk_bytes,
        )
        self.bytes_to_remote += stats.a_to_b
        self.bytes_from_remote += stats.b_to_a

    async def log_stats_forever(self) -> None:
        last: dict[str, int] = {}
        while True:
            await asyncio.sleep(self.limits.stats_interval_s)
            now = self.counts()
            if now != last:
                log.info("connections: %s", now)
                last = now


# -- command line --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m parent.kms_relay",
        description="vsock -> TCP relay for the enclave's KMS traffic (vsock-proxy compatible).",
    )
    fam = p.add_mutually_exclusive_group()
    fam.add_argument("-4", "--ipv4", action="store_true", help="resolve to IPv4 only")
    fam.add_argument("-6", "--ipv6", action="store_true", help="resolve to IPv6 only")
    p.add_argument(
        "--config", default=str(DEFAULT_ALLOWLIST),
        help="allowlist YAML (vsock-proxy format); default: the packaged KMS allowlist",
    )
    p.add_argument(
        "--listen-cid", type=int, default=PARENT_CID,
        help="vsock CID to bind (default 3, the parent; in simulation the simulated CID 3)",
    )
    p.add_argument(
        "-w", "--num_workers", type=int, default=None,
        help="accepted for vsock-proxy compatibility and ignored (no worker pool here)",
    )
    d = RelayLimits()
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help=f"connections relayed at once (default {d.max_connections})")
    p.add_argument("--connect-timeout", type=float, default=d.connect_timeout_s,
                   help=f"seconds to connect to the remote (default {d.connect_timeout_s:g})")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s,
                   help=f"close a connection idle this long (default {d.idle_timeout_s:g} s)")
    p.add_argument("--dns-refresh", type=float, default=d.dns_refresh_s,
                   help=f"re-resolve the remote after this long (default {d.dns_refresh_s:g} s)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    p.add_argument("--metrics-port", type=int,
                   help="serve Prometheus GET /metrics on 127.0.0.1:PORT (connections, bytes)")
    p.add_argument("local_port", type=int, help="vsock port to listen on (e.g. 8000)")
    p.add_argument("remote_host", help="host to forward to (must be on the allowlist)")
    p.add_argument("remote_port", type=int, help="TCP port to forward to (e.g. 443)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m parent.kms_relay ...` (also wired as `python -m parent kms-relay ...`)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="kms-relay: %(levelname)s %(message)s",
    )
    try:
        config = RelayConfig.from_args(args)
    except ConfigError as exc:
        return config_failure("kms-relay", exc)
    if args.num_workers is not None:
        log.info("-w/--num_workers ignored: connections are not limited to a worker pool")
    try:
        allowlist = load_allowlist(config.allowlist)
        entry = check_destination(
            allowlist, config.remote_host, config.remote_port, family=config.family
        )
    except AllowlistError as exc:
        if exc.code == "destination-not-allowed":
            log.error(
                "refusing to start: %s:%d is not on the allowlist %s (%s)",
                config.remote_host, config.remote_port, config.allowlist, exc.message,
            )
            return EXIT_NOT_ALLOWED
        log.error("refusing to start: allowlist %s: %s", config.allowlist, exc)
        return EXIT_CONFIG
    log.info("destination allowed by entry %s:%d", entry.address, entry.port)
    relay = KmsRelay(
        config.remote_host, config.remote_port,
        listen=config.listen, family=config.family, limits=config.limits,
    )
    if config.metrics_port is not None:
        from ._relay_metrics import serve_relay_metrics

        def read() -> dict[str, int]:
            return {**relay.counts(), "bytes_to_remote": relay.bytes_to_remote,
                    "bytes_from_remote": relay.bytes_from_remote}

        try:
            serve_relay_metrics(read, "127.0.0.1", config.metrics_port)
        except OSError as exc:
            log.error("cannot serve metrics on 127.0.0.1:%d: %s", config.metrics_port, exc)
            return EXIT_LISTEN
    return run_service(lambda: _start(relay))


async def _start(relay: KmsRelay) -> Started | int:
    try:
        await relay.start()
    except (TransportError, OSError) as exc:
        log.error(
            "cannot listen on vsock (%d, %d): %s",
            relay.listen.cid, relay.listen.port, getattr(exc, "message", None) or exc,
        )
        return EXIT_LISTEN
    stats = asyncio.ensure_future(relay.log_stats_forever())

    async def close() -> None:
        stats.cancel()
        await relay.close()
        log.info("stopped; connections: %s", relay.counts())

    listen = [relay.listen.cid, relay.listen.port]
    remote = [relay.destination.host, relay.destination.port]
    return Started(ready={"listen": listen, "remote": remote}, close=close)


if __name__ == "__main__":
    sys.exit(main())
