"""Connection caps of the proxy's HTTP listener: one global, one per peer address.

Idle sockets cost a file descriptor each; without a cap, enough of them drive the process into
EMFILE, and asyncio then stops accepting for a second at a time, so even ``/health`` stalls.
Here every accepted connection is counted: one over a cap gets a one-line ``503`` and is
closed at once, and the first refusal of a burst is logged in one clear line. The global cap
never exceeds the process's file-descriptor limit minus ``fd_reserve``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("parent.proxy")

LOG_EVERY_S = 10.0
"""While connections keep being refused, at most one log line per this many seconds."""


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 4096
    """Open HTTP connections at once, all peers together (also bounded by RLIMIT_NOFILE)."""
    max_per_peer: int = 2048
    """Open HTTP connections from one peer address."""
    fd_reserve: int = 128
    """File descriptors kept free for the enclave pool, logs and accepting."""


def effective_max_connections(limits: ConnectionLimits) -> int:
    """The global cap: ``max_connections``, lowered to fit the file-descriptor limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limits.max_connections
    return max(1, min(limits.max_connections, soft - limits.fd_reserve))


def _refusal(message: str) -> bytes:
    body = json.dumps({"error": {"code": "too-many-connections", "message": message}}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGate:
    """Counts open connections; ``wrap(factory)`` gives a protocol factory that enforces it."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.max_connections = effective_max_connections(limits)
        self.open = 0
        self.per_peer: dict[str, int] = {}
        self.refused = 0
        self._logged_at = -LOG_EVERY_S
        self._unlogged = 0

    def admit(self, peer: str) -> str | None:
        """Count a new connection from ``peer``, or say which cap refuses it."""
        if self.open >= self.max_connections:
            return f"the proxy holds {self.max_connections} connections (max_connections)"
        if self.per_peer.get(peer, 0) >= self.limits.max_per_peer:
            return f"{self.limits.max_per_peer} connections from {peer} (max_per_peer)"
        self.open += 1
        self.per_peer[peer] = self.per_peer.get(peer, 0) + 1
        return None

    def release(self, peer: str) -> None:
        self.open -= 1
        left = self.per_peer.get(peer, 1) - 1
        if left:
            self.per_peer[peer] = left
        else:
            self.per_peer.pop(peer, None)

    def refuse(self, peer: str, reason: str) -> bytes:
        self.refused += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            log.warning(
                "connection-cap",
                extra={"fields": {"peer": peer, "reason": reason, "refused": self._unlogged,
                                  "open": self.open}},
            )
            self._logged_at, self._unlogged = now, 0
        return _refusal(f"connection refused: {reason}; retry later")

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        def make() -> asyncio.Protocol:
            return _Gated(self, factory)

        return make


class _Gated(asyncio.Protocol):
    """Delegates to the real (aiohttp) protocol once the connection is admitted."""

    def __init__(self, gate: ConnectionGate, factory: Callable[[], asyncio.Protocol]) -> None:
        self._gate = gate
        self._factory = factory
        self._inner: Any = None
        self._peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        self._peer = str(peername[0]) if isinstance(peername, tuple) and peername else "?"
        reason = self._gate.admit(self._peer)
        if reason is not None:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(self._gate.refuse(self._peer, reason))
            transport.close()
            return
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._gate.release(self._peer)
            self._inner.connection_lost(exc)
            self._inner = None

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
