"""The KMS relay's configuration (``python -m parent kms-relay``): one object, read once.

A frozen dataclass of plain settings (python-tuf's ``ngclient/config.py`` shape), built from
the vsock-proxy compatible command line in one place (:meth:`RelayConfig.from_args`) and
checked when made: a wrong value stops the relay at start-up with a typed
``enclave.config.ConfigError`` (``invalid-config``, exit code 2). The relay pipes bytes, so it
has no request deadline to derive from: its waits come one after another per connection
(resolve, connect, then idle while piping), each bounded by its own named limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from enclave.config import ConfigError, check_positive
from enclave.transport import TransportError, VsockAddress

from ._allowlist import DEFAULT_ALLOWLIST, IpFamily

__all__ = ["RelayConfig", "RelayLimits"]


@dataclass(frozen=True)
class RelayLimits:
    """Bounds of the relay (seconds, bytes, counts).

    Args:
        max_connections: Connections piped at once; more are closed at once (counted refused).
        backlog: listen() backlog: a burst of this many connects waits for accept (the kernel
            caps it at net.core.somaxconn).
        connect_timeout_s: Time to open the TCP connection to the remote.
        idle_timeout_s: A connection with no bytes either way for this long is closed.
        dns_refresh_s: Re-resolve the remote name after this long (stand-in for the DNS TTL).
        resolve_timeout_s: One name resolution.
        chunk_bytes: Read size when piping (vsock-proxy: 8 KiB).
        stats_interval_s: Connection counts are logged this often when they changed.
    """

    max_connections: int = 1024
    backlog: int = 1024
    connect_timeout_s: float = 5.0
    idle_timeout_s: float = 600.0
    dns_refresh_s: float = 60.0
    resolve_timeout_s: float = 5.0
    chunk_bytes: int = 256 * 1024
    stats_interval_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("max_connections", "backlog", "chunk_bytes"):
            check_positive("RelayLimits", name, getattr(self, name), integer=True)
        for name in ("connect_timeout_s", "idle_timeout_s", "dns_refresh_s",
                     "resolve_timeout_s", "stats_interval_s"):
            check_positive("RelayLimits", name, getattr(self, name))


@dataclass(frozen=True)
class RelayConfig:
    """The configuration of ``python -m parent kms-relay``.

    Args:
        listen: The vsock address to accept on (CID 3, the relay port).
        remote_host: Host to forward to (must be on the allowlist).
        remote_port: TCP port to forward to.
        family: Address family resolution may return (``-4``/``-6``).
        allowlist: Path of the allowlist YAML (vsock-proxy format).
        metrics_port: Serve Prometheus ``GET /metrics`` on 127.0.0.1 here (None: no).
        verbose: Log every connection.
        limits: Bounds of the relay (``RelayLimits``).
    """

    listen: VsockAddress
    remote_host: str
    remote_port: int
    family: IpFamily = IpFamily.ANY
    allowlist: str = str(DEFAULT_ALLOWLIST)
    metrics_port: int | None = None
    verbose: bool = False
    limits: RelayLimits = field(default_factory=RelayLimits)

    def __post_init__(self) -> None:
        port = self.remote_port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"RelayConfig.remote_port must be 1..65535, got {port!r}")
        mport = self.metrics_port
        if mport is not None and (isinstance(mport, bool) or not isinstance(mport, int)
                                  or not 0 <= mport < 65536):
            raise ConfigError(f"RelayConfig.metrics_port must be 0..65535, got {mport!r}")

    @classmethod
    def from_args(cls, args: Any) -> RelayConfig:
        """The configuration from the relay's parsed flags (ConfigError if bad)."""
        try:
            listen = VsockAddress(args.listen_cid, args.local_port)
        except TransportError as exc:
            raise ConfigError(exc.message) from None
        family = IpFamily.IPV4 if args.ipv4 else IpFamily.IPV6 if args.ipv6 else IpFamily.ANY
        return cls(
            listen=listen,
            remote_host=args.remote_host,
            remote_port=args.remote_port,
            family=family,
            allowlist=args.config,
            metrics_port=args.metrics_port,
            verbose=args.verbose,
            limits=RelayLimits(
                max_connections=args.max_connections,
                connect_timeout_s=args.connect_timeout,
                idle_timeout_s=args.idle_timeout,
                dns_refresh_s=args.dns_refresh,
            ),
        )
