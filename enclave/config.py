"""The enclave app process's configuration (``python -m enclave``): one object, read once.

The shape of python-tuf's ``ngclient/config.py``: a small frozen dataclass of plain settings
with safe defaults, built from the command line in one place (:meth:`EnclaveConfig.from_args`)
and checked when it is made, so a wrong value stops the process at start-up with a typed
:class:`ConfigError` (``invalid-config``, kind ``bad-request``; exit code 2), never later.

Deadlines nest, the outer one set, the inner ones derived from it::

    request_timeout_s      outer: the protocol server cancels a handler at
        |                  min(request_timeout_s, the caller's timeout_ms)
        +-- reply_margin_s     the app answers deadline-exceeded this long before that, so the
        |                      typed answer reaches the caller before the caller gives up
        +-- handler_deadline_s = request_timeout_s - reply_margin_s: the longest any handler runs
              +-- default_deadline_s   an operation that declares none (<= handler_deadline_s)
                    +-- queue_timeout_s    wait for a free handler slot (< default_deadline_s)
        +-- read_timeout_s     a started frame must complete within this (< request_timeout_s)

A derived value (``None``) is the historic default capped by its outer deadline, so the
defaults are unchanged; a value set explicitly must nest, or :class:`ConfigError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from attestation.errors import CodedError, Kind
from enclave.wire import APP_PORT

if TYPE_CHECKING:
    from enclave.protocol._base import ProtocolLimits

__all__ = [
    "DEFAULT_DEADLINE_S",
    "MIN_DEADLINE_S",
    "NEST_SHARE",
    "QUEUE_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "REPLY_MARGIN_S",
    "REQUEST_TIMEOUT_S",
    "AppLimits",
    "ConfigError",
    "EnclaveConfig",
    "check_nested",
    "check_positive",
    "derive",
    "handler_deadline",
]

REQUEST_TIMEOUT_S = 30.0
"""The enclave's outer deadline per request (``ProtocolLimits.request_timeout``'s default)."""
REPLY_MARGIN_S = 0.25
"""Time kept between the app's own deadline and the caller's, for the typed answer to travel
back (vsock, one frame) before the caller's timer fires."""
DEFAULT_DEADLINE_S = 15.0
"""An operation's deadline when it declares none (capped by the handler deadline)."""
QUEUE_TIMEOUT_S = 2.0
"""Wait for a free handler slot, then answer ``busy`` (capped by the default deadline)."""
READ_TIMEOUT_S = 10.0
"""A started frame must be complete within this (``ProtocolLimits.read_timeout``'s default)."""


class ConfigError(CodedError):
    """A process configuration that cannot work (a bound not positive, or deadlines that do not
    nest). Raised when the configuration is made; ``main()`` turns it into exit code 2."""

    codes = {"invalid-config": Kind.BAD_REQUEST}
    kind = Kind.BAD_REQUEST
    show_code = True

    def __init__(self, message: str) -> None:
        super().__init__("invalid-config", message)


def check_positive(owner: str, name: str, value: object, *, integer: bool = False) -> None:
    """``owner.name`` is a finite number > 0 (an int when ``integer``), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{owner}.{name} must be a number, not {type(value).__name__}")
    if integer and not isinstance(value, int):
        raise ConfigError(f"{owner}.{name} must be an integer, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{owner}.{name} must be > 0, got {value!r}")


def check_nested(
    owner: str, inner: str, inner_s: float, outer: str, outer_s: float, *, strict: bool = True
) -> None:
    """The inner deadline ends before the outer one (or with it, when not ``strict``)."""
    if not (inner_s < outer_s if strict else inner_s <= outer_s):
        raise ConfigError(
            f"{owner}.{inner} ({inner_s:g} s) must be below {outer} ({outer_s:g} s): "
            "an inner deadline ends before the one around it"
        )


NEST_SHARE = 0.9
"""A derived inner wait is at most this share of the deadline around it."""


def derive(given: float | None, historic: float, outer: float) -> float:
    """``given`` when set; else the historic default, capped at NEST_SHARE of ``outer``."""
    return given if given is not None else min(historic, outer * NEST_SHARE)


MIN_DEADLINE_S = 0.001
"""A handler always gets at least this (then answers deadline-exceeded)."""


def handler_deadline(own_s: float, left_s: float | None, margin_s: float) -> float:
    """Seconds a handler gets: its own deadline, cut to the caller's time left (``left_s``,
    from the wire's ``timeout_ms``; None: no caller deadline) minus the reply margin, or
    minus a tenth of what is left when that is smaller: always less than ``left_s``."""
    if left_s is None:
        return own_s
    margin = min(margin_s, left_s * (1.0 - NEST_SHARE))
    return max(MIN_DEADLINE_S, min(own_s, left_s - margin))


@dataclass(frozen=True)
class AppLimits:
    """Bounds every request of an :class:`enclave.app.App` gets (an operation may declare a
    shorter deadline). Made by :meth:`EnclaveConfig.app_limits` in ``python -m enclave``.

    Args:
        max_concurrent: Handler runs at once, all connections together.
        queue_timeout_s: Wait for a free slot, then answer ``busy`` (< ``default_deadline_s``).
        default_deadline_s: Per request, from arrival to answer, for an operation that declares
            no deadline of its own.
        blocking_workers: Threads for blocking calls (NSM ioctl, boto3).
        reply_margin_s: A request that arrived with the caller's deadline (``timeout_ms``) gets
            that deadline minus this margin (or minus a tenth of the time left, when that is
            less), so its ``deadline-exceeded`` answer arrives while the caller still waits.
    """

    max_concurrent: int = 128
    queue_timeout_s: float = QUEUE_TIMEOUT_S
    default_deadline_s: float = DEFAULT_DEADLINE_S
    blocking_workers: int = 8
    reply_margin_s: float = REPLY_MARGIN_S

    def __post_init__(self) -> None:
        for name in ("max_concurrent", "blocking_workers"):
            check_positive("AppLimits", name, getattr(self, name), integer=True)
        for name in ("queue_timeout_s", "default_deadline_s", "reply_margin_s"):
            check_positive("AppLimits", name, getattr(self, name))
        check_nested("AppLimits", "queue_timeout_s", self.queue_timeout_s,
                     "default_deadline_s", self.default_deadline_s)
        check_nested("AppLimits", "reply_margin_s", self.reply_margin_s,
                     "default_deadline_s", self.default_deadline_s)


@dataclass(frozen=True)
class EnclaveConfig:
    """The configuration of ``python -m enclave`` (module docstring: how deadlines nest).

    Args:
        port: vsock port of the app's framed protocol.
        request_timeout_s: The outer deadline of one request in the enclave, from its arrival;
            a caller's ``timeout_ms`` can only shorten it.
        reply_margin_s: The app gives up this long before the outer (or the caller's) deadline.
        default_deadline_s: An operation's deadline when it declares none; ``None``: derived,
            ``min(15 s, handler_deadline_s)``.
        queue_timeout_s: Wait for a handler slot; ``None``: ``min(2 s, default deadline * 0.9)``.
        read_timeout_s: A started frame must complete within this; ``None``:
            ``min(10 s, request_timeout_s * 0.9)``.
        max_concurrent: Handler runs at once; ``None``: the app's own (``AppLimits``, 128).
        ingress_port: vsock port of the ``--asgi`` TLS listener (``None``: 5443).
        proxy_protocol: ``--asgi`` connections start with a PROXY v2 header.
        tls_cert: The ``--asgi`` app's own certificate (PEM path, with ``tls_key``).
        tls_key: Its private key (PEM path, with ``tls_cert``).
    """

    port: int = APP_PORT
    request_timeout_s: float = REQUEST_TIMEOUT_S
    reply_margin_s: float = REPLY_MARGIN_S
    default_deadline_s: float | None = None
    queue_timeout_s: float | None = None
    read_timeout_s: float | None = None
    max_concurrent: int | None = None
    ingress_port: int | None = None
    proxy_protocol: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not (
            0 < self.port < 2**32
        ):
            raise ConfigError(f"EnclaveConfig.port must be 1..4294967295, got {self.port!r}")
        if self.ingress_port is not None and (
            isinstance(self.ingress_port, bool) or not isinstance(self.ingress_port, int)
            or not 0 < self.ingress_port < 2**32
        ):
            raise ConfigError(
                f"EnclaveConfig.ingress_port must be 1..4294967295, got {self.ingress_port!r}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("EnclaveConfig.tls_cert and tls_key go together (both or neither)")
        if self.max_concurrent is not None:
            check_positive("EnclaveConfig", "max_concurrent", self.max_concurrent, integer=True)
        for name in ("request_timeout_s", "reply_margin_s", "default_deadline_s",
                     "queue_timeout_s", "read_timeout_s"):
            value = getattr(self, name)
            if value is not None:
                check_positive("EnclaveConfig", name, value)
        check_nested("EnclaveConfig", "reply_margin_s", self.reply_margin_s,
                     "request_timeout_s", self.request_timeout_s)
        check_nested("EnclaveConfig", "default_deadline_s", self.deadline_s,
                     "request_timeout_s - reply_margin_s", self.handler_deadline_s, strict=False)
        check_nested("EnclaveConfig", "queue_timeout_s", self.queue_s,
                     "default_deadline_s", self.deadline_s)
        check_nested("EnclaveConfig", "read_timeout_s", self.read_s,
                     "request_timeout_s", self.request_timeout_s)

    # ------------------------------------------------------------ derived values

    @property
    def handler_deadline_s(self) -> float:
        """The longest any handler may run: the outer deadline minus the reply margin."""
        return self.request_timeout_s - self.reply_margin_s

    @property
    def deadline_s(self) -> float:
        """The default operation deadline in effect (set, or derived)."""
        given = self.default_deadline_s
        return given if given is not None else min(DEFAULT_DEADLINE_S, self.handler_deadline_s)

    @property
    def queue_s(self) -> float:
        """The handler-slot wait in effect (set, or derived)."""
        return derive(self.queue_timeout_s, QUEUE_TIMEOUT_S, self.deadline_s)

    @property
    def read_s(self) -> float:
        """The frame read timeout in effect (set, or derived)."""
        return derive(self.read_timeout_s, READ_TIMEOUT_S, self.request_timeout_s)

    def app_limits(self, base: AppLimits | None = None) -> AppLimits:
        """``base`` (an app's own limits; default ``AppLimits()``) under this configuration:
        the deadlines set here win; derived ones keep an app's own shorter values."""
        from dataclasses import replace

        base = base or AppLimits()
        deadline = self.deadline_s
        if self.default_deadline_s is None:
            deadline = min(deadline, base.default_deadline_s)
        queue = derive(self.queue_timeout_s, base.queue_timeout_s, deadline)
        return replace(
            base,
            default_deadline_s=deadline,
            queue_timeout_s=queue,
            reply_margin_s=min(self.reply_margin_s, deadline * NEST_SHARE),
            max_concurrent=self.max_concurrent or base.max_concurrent,
        )

    def protocol_limits(self) -> ProtocolLimits:
        """The framed protocol's limits: the outer deadline and the derived read timeout."""
        from enclave.protocol._base import ProtocolLimits

        return ProtocolLimits(request_timeout=self.request_timeout_s, read_timeout=self.read_s)

    # ------------------------------------------------------------ command line

    @classmethod
    def from_args(cls, args: Any) -> EnclaveConfig:
        """The configuration from ``python -m enclave``'s parsed flags (ConfigError if bad)."""
        return cls(
            port=args.port,
            request_timeout_s=args.request_timeout,
            default_deadline_s=args.default_deadline,
            max_concurrent=args.max_concurrent,
            ingress_port=args.ingress_port,
            proxy_protocol=args.proxy_protocol,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
