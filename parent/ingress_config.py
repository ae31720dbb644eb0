"""The parent ingress relay's configuration (``python -m parent ingress``): one object.

A frozen dataclass of plain settings (python-tuf's ``ngclient/config.py`` shape), built from
the command line in one place (:meth:`IngressConfig.from_args`) and checked when made: a wrong
value stops the relay at start-up with a typed ``enclave.config.ConfigError``
(``invalid-config``, exit code 2). Bytes only, so no request deadline to derive from: per
connection, the connect towards the enclave and then the idle wait while piping are each
bounded by their own named limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from enclave.config import ConfigError, check_positive
from enclave.transport import TransportError, VsockAddress

__all__ = ["IngressConfig", "IngressLimits"]


@dataclass(frozen=True)
class IngressLimits:
    """Bounds of the parent's ingress relay (counts, seconds, bytes).

    Args:
        max_connections: Connections relayed at once; more are closed at once (counted).
        backlog: listen() backlog.
        connect_timeout_s: Time to reach the enclave's listener over vsock.
        idle_timeout_s: A connection with no byte either way for this long is closed.
        chunk_bytes: Read size of the relay.
    """

    max_connections: int = 4096
    backlog: int = 2048
    connect_timeout_s: float = 5.0
    idle_timeout_s: float = 300.0
    chunk_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        for name in ("max_connections", "backlog", "chunk_bytes"):
            check_positive("IngressLimits", name, getattr(self, name), integer=True)
        for name in ("connect_timeout_s", "idle_timeout_s"):
            check_positive("IngressLimits", name, getattr(self, name))


def _split_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"--listen expects HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True)
class IngressConfig:
    """The configuration of ``python -m parent ingress``.

    Args:
        enclave: The enclave's TLS listener on vsock.
        host: TCP address to accept on.
        port: TCP port (0: any free one).
        proxy_protocol: Send a PROXY v2 header (the client's address) before the TLS bytes.
        verbose: Debug logging.
        limits: Bounds of the relay (``IngressLimits``).
    """

    enclave: VsockAddress
    host: str = "0.0.0.0"
    port: int = 443
    proxy_protocol: bool = False
    verbose: bool = False
    limits: IngressLimits = field(default_factory=IngressLimits)

    def __post_init__(self) -> None:
        port = self.port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise ConfigError(f"IngressConfig.port must be 0..65535, got {port!r}")

    @classmethod
    def from_args(cls, args: Any) -> IngressConfig:
        """The configuration from ``python -m parent ingress``'s parsed flags (ConfigError)."""
        host, port = _split_listen(args.listen)
        try:
            enclave = VsockAddress(args.enclave_cid, args.enclave_port)
        except TransportError as exc:
            raise ConfigError(exc.message) from None
        return cls(
            enclave=enclave, host=host, port=port, proxy_protocol=args.proxy_protocol,
            verbose=args.verbose,
            limits=IngressLimits(max_connections=args.max_connections,
                                 connect_timeout_s=args.connect_timeout,
                                 idle_timeout_s=args.idle_timeout),
        )
