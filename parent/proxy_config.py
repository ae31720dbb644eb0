"""The parent proxy's configuration (``python -m parent proxy``): one object, read once.

One frozen dataclass (python-tuf's ``ngclient/config.py`` shape) whose parts are the proxy's
limits; :meth:`ProxyConfig.from_args` builds it from the command line in one place, and it is
checked when made, so a wrong value stops the proxy at start-up with a typed
``enclave.config.ConfigError`` (``invalid-config``, exit code 2).

The outer deadline is ``http.request_timeout_s`` (D, from a request's arrival). Derived from
it, each ending before it: the body read (``http.body_timeout_s``), the wait for a forwarding
slot (``http.queue_timeout_s``) and, with a secret store, the wait for a reload pass
(``keeper.gate_timeout_s``). The enclave is sent what remains of D and answers
``deadline-exceeded`` its reply margin before that (``enclave.config``), so the inner layer
always gives up before this one answers ``enclave-timeout``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from enclave.config import ConfigError, check_nested, check_positive, derive
from enclave.transport import TransportError, VsockAddress

from ._drain import DRAIN_MARGIN_S, DrainLimits
from ._proxy_conns import ConnectionLimits
from ._proxy_http import REQUEST_TIMEOUT_S, HttpLimits
from ._proxy_pool import PoolLimits
from ._secret_keeper import KeeperLimits

__all__ = ["DEFAULT_PORT", "GATE_TIMEOUT_S", "ProxyConfig"]

DEFAULT_PORT = 8080
GATE_TIMEOUT_S = KeeperLimits.gate_timeout_s
"""A request waits this long for a secret-reload pass (capped by D when derived)."""


def _port(owner: str, value: object, upper: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= upper:
        raise ConfigError(f"{owner} must be an integer in 0..{upper}, got {value!r}")


@dataclass(frozen=True)
class ProxyConfig:
    """The configuration of ``python -m parent proxy``.

    Args:
        enclave: The enclave app's vsock address.
        host: Address to listen on (loopback by default).
        port: TCP port (0: any free one).
        http: Bodies, JSON shape, backpressure and the outer deadline (``HttpLimits``).
        pool: Connections to the enclave (``PoolLimits``); their waits are cut by the request
            deadline.
        connections: Open HTTP connections, all peers and per peer (``ConnectionLimits``).
        secret_store: Directory or ``s3://bucket/prefix`` of kept secrets (None: none).
        s3_endpoint_url: S3 endpoint for an ``s3://`` store.
        keeper: Reloading kept secrets into a restarted enclave (``KeeperLimits``); its
            ``gate_timeout_s`` ends before the request deadline.
        drain: What SIGTERM does (``DrainLimits``); by default its deadline outlasts the
            request deadline by ``DRAIN_MARGIN_S``, so no admitted request is cut off.
    """

    enclave: VsockAddress
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    http: HttpLimits = field(default_factory=HttpLimits)
    pool: PoolLimits = field(default_factory=PoolLimits)
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    secret_store: str | None = None
    s3_endpoint_url: str | None = None
    keeper: KeeperLimits = field(default_factory=KeeperLimits)
    drain: DrainLimits = field(default_factory=DrainLimits)

    def __post_init__(self) -> None:
        _port("ProxyConfig.port", self.port, 65535)
        check_positive("ProxyConfig", "pool.size", self.pool.size, integer=True)
        for name in ("max_connections", "max_per_peer"):
            check_positive("ProxyConfig", f"connections.{name}",
                           getattr(self.connections, name), integer=True)
        for name in ("grace_s", "deadline_s"):
            value = getattr(self.drain, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(f"ProxyConfig.drain.{name} must be >= 0, got {value!r}")
        if self.secret_store:
            check_positive("ProxyConfig", "keeper.gate_timeout_s", self.keeper.gate_timeout_s)
            check_nested("ProxyConfig", "keeper.gate_timeout_s", self.keeper.gate_timeout_s,
                         "http.request_timeout_s", self.http.request_timeout_s)

    @property
    def request_timeout_s(self) -> float:
        """The outer deadline (D) of a forwarded request."""
        return self.http.request_timeout_s

    @classmethod
    def derived(
        cls,
        enclave: VsockAddress,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        *,
        body_timeout_s: float | None = None,
        queue_timeout_s: float | None = None,
        gate_timeout_s: float | None = None,
        drain_deadline_s: float | None = None,
        drain_grace_s: float | None = None,
        http: dict[str, Any] | None = None,
        keeper: KeeperLimits | None = None,
        **fields: Any,
    ) -> ProxyConfig:
        """A configuration whose inner deadlines derive from ``request_timeout_s`` (``None``:
        the default, capped below it); explicit ones must end before it (ConfigError)."""
        limits = HttpLimits.derived(request_timeout_s, body_timeout_s=body_timeout_s,
                                    queue_timeout_s=queue_timeout_s, **(http or {}))
        keeper = keeper or KeeperLimits()
        gate = derive(gate_timeout_s, keeper.gate_timeout_s, request_timeout_s)
        drain = DrainLimits(
            grace_s=DrainLimits().grace_s if drain_grace_s is None else drain_grace_s,
            deadline_s=(request_timeout_s + DRAIN_MARGIN_S if drain_deadline_s is None
                        else drain_deadline_s),
        )
        return cls(enclave=enclave, http=limits, keeper=replace(keeper, gate_timeout_s=gate),
                   drain=fields.pop("drain", drain), **fields)

    @classmethod
    def from_args(cls, args: Any) -> ProxyConfig:
        """The configuration from ``python -m parent proxy``'s parsed flags (ConfigError)."""
        try:
            enclave = VsockAddress(args.enclave_cid, args.enclave_port)
        except TransportError as exc:
            raise ConfigError(exc.message) from None
        for name in ("pool_size", "max_in_flight", "max_body", "max_connections",
                     "max_connections_per_peer"):
            check_positive("proxy", f"--{name.replace('_', '-')}", getattr(args, name),
                           integer=True)
        return cls.derived(
            enclave,
            args.request_timeout,
            body_timeout_s=args.body_timeout,
            queue_timeout_s=args.queue_timeout,
            http={"max_body_bytes": args.max_body, "max_in_flight": args.max_in_flight,
                  "header_timeout_s": args.header_timeout},
            host=args.host,
            port=args.port,
            pool=PoolLimits(size=args.pool_size),
            connections=ConnectionLimits(
                max_connections=args.max_connections, max_per_peer=args.max_connections_per_peer
            ),
            secret_store=args.secret_store,
            s3_endpoint_url=args.s3_endpoint_url,
            drain_grace_s=args.drain_grace,
            drain_deadline_s=args.drain_deadline,
        )
