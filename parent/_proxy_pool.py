"""A pool of protocol connections to the enclave that heals itself when the enclave restarts.

Each of ``size`` slots holds one ``ProtocolClient`` (many requests in flight per connection).
A supervisor task per slot connects, and after a failure reconnects with exponential backoff.
A request that fails for a connection reason (not a typed answer from the enclave) marks its
slot broken; a heartbeat (``health``) finds connections that died while idle. When no slot is
connected the pool is *down* and requests fail at once with ``enclave-unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from attestation.errors import CodedError, Kind
from enclave.protocol import ProtocolClient, ProtocolError, ProtocolLimits, RemoteError
from enclave.retry import backoff
from enclave.transport import VsockAddress

log = logging.getLogger("parent.proxy")


class EnclaveUnavailable(CodedError):
    """No usable connection to the enclave (it is down, restarting, or the link broke)."""

    kind = Kind.UNAVAILABLE
    show_code = True


@dataclass(frozen=True)
class PoolLimits:
    size: int = 4  # connections to the enclave
    connect_deadline_s: float = 1.0  # one connect call (the transport retries inside it)
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    heartbeat_s: float = 1.0  # idle connections are checked this often
    heartbeat_timeout_s: float = 2.0
    available_wait_s: float = 0.5  # a request waits this long for a connection, then fails
    max_frame: int = ProtocolLimits().max_frame  # largest request/answer on a connection


async def _default_connector(
    address: VsockAddress, deadline: float, limits: ProtocolLimits
) -> Any:
    return await ProtocolClient.connect(address, deadline=deadline, limits=limits)


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.client: Any = None
        self.broken = asyncio.Event()
        self.in_flight = 0

    def usable(self) -> bool:
        if self.client is None or self.broken.is_set():
            return False
        if getattr(self.client, "closed", False):  # the peer went away: EOF already seen
            self.broken.set()
            return False
        return True


class EnclavePool:
    """Connections to one enclave address; ``request`` picks a live one (round robin).

    One more connection, the *control* connection, carries only health probes and
    ``describe``: a saturated pool never makes the enclave look down.
    """

    def __init__(
        self,
        address: VsockAddress,
        *,
        limits: PoolLimits | None = None,
        connector: Callable[[VsockAddress, float, ProtocolLimits], Awaitable[Any]] = (
            _default_connector
        ),
        on_connect: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        self.address = address
        self.limits = limits or PoolLimits()
        self._connector = connector
        self._on_connect = on_connect
        self._protocol_limits = ProtocolLimits(max_frame=self.limits.max_frame)
        self._slots = [_Slot(i) for i in range(self.limits.size)]
        self._control = _Slot(-1)
        self._tasks: list[asyncio.Task] = []
        self._rr = itertools.count()
        self._changed = asyncio.Event()
        self._closing = False
        self.connects = 0
        self.disconnects = 0

    @property
    def connected(self) -> int:
        return sum(1 for s in self._slots if s.usable())

    @property
    def up(self) -> bool:
        """At least one connection to the enclave is usable."""
        return self.connected > 0

    async def start(self) -> None:
        self._tasks = [
            asyncio.ensure_future(self._supervise(s)) for s in (*self._slots, self._control)
        ]
        self._tasks.append(asyncio.ensure_future(self._heartbeat()))

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for slot in (*self._slots, self._control):
            await self._drop(slot)

    async def _drop(self, slot: _Slot) -> None:
        client, slot.client = slot.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 1.0)

    async def _supervise(self, slot: _Slot) -> None:
        attempt = 0
        while not self._closing:
            try:
                client = await self._connector(
                    self.address, self.limits.connect_deadline_s, self._protocol_limits
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                if attempt == 1:
                    log.warning(
                        "enclave-connect-failed",
                        extra={"fields": {"slot": slot.index,
                                          "code": getattr(exc, "code", type(exc).__name__)}},
                    )
                delay = backoff(attempt, self.limits.backoff_initial_s, self.limits.backoff_max_s)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            slot.broken.clear()
            slot.client = client
            self.connects += 1
            log.info("enclave-connected", extra={"fields": {"slot": slot.index}})
            if self._on_connect is not None and slot is self._control:
                with contextlib.suppress(Exception):
                    await self._on_connect(self)
            self._changed.set()
            await slot.broken.wait()
            self.disconnects += 1
            log.warning("enclave-disconnected", extra={"fields": {"slot": slot.index}})
            await self._drop(slot)

    async def _heartbeat(self) -> None:
        """Probe idle connections; a busy one proves itself (a dead one fails its requests
        as soon as the EOF is read), so a slow or saturated enclave is never cut off."""
        while not self._closing:
            await asyncio.sleep(self.limits.heartbeat_s)
            for slot in (*self._slots, self._control):
                if not slot.usable() or slot.in_flight:
                    continue
                client = slot.client
                try:
                    await client.request("health", {}, timeout=self.limits.heartbeat_timeout_s)
                except RemoteError:
                    pass  # the enclave answered: the connection works
                except asyncio.CancelledError:
                    raise
                except Exception:
                    if slot.client is client and not slot.in_flight:
                        slot.broken.set()

    def _pick(self) -> _Slot | None:
        live = [s for s in self._slots if s.usable()]
        if not live:
            return None
        return live[next(self._rr) % len(live)]

    async def _wait_for_slot(self, wait: float) -> _Slot | None:
        slot = self._pick()
        if slot is not None or wait <= 0:
            return slot
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while slot is None and loop.time() < end:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), end - loop.time())
            slot = self._pick()
        return slot

    async def request(
        self, op: str, body: Any, *, timeout: float, wait: bool = True, control: bool = False
    ) -> Any:
        """Send one request; raises RemoteError (typed answer), TimeoutError (no answer in
        ``timeout``) or EnclaveUnavailable (no connection, or it broke). ``control`` sends it
        on the control connection (health, describe) when that one is up."""
        slot: _Slot | None = None
        if control and self._control.usable():
            slot = self._control
        if slot is None:
            slot = await self._wait_for_slot(self.limits.available_wait_s if wait else 0.0)
        if slot is None:
            raise EnclaveUnavailable(
                "enclave-unavailable", f"no connection to the enclave at {self.address}"
            )
        client = slot.client
        slot.in_flight += 1
        try:
            return await client.request(op, body, timeout=timeout)
        except RemoteError as exc:
            if exc.code == "timeout":
                raise TimeoutError(exc.message) from None
            raise
        except TimeoutError:
            raise
        except asyncio.CancelledError:
            raise
        except ProtocolError as exc:
            if exc.code != "connection-lost":  # refused before sending (frame-too-large, ...)
                raise RemoteError(exc.code, exc.message, kind=exc.kind) from None
            if slot.client is client:
                slot.broken.set()
            raise EnclaveUnavailable(
                "enclave-unavailable", f"the connection to the enclave failed ({exc.code})"
            ) from None
        except Exception as exc:
            if slot.client is client:
                slot.broken.set()
            code = getattr(exc, "code", None) or type(exc).__name__
            raise EnclaveUnavailable(
                "enclave-unavailable", f"the connection to the enclave failed ({code})"
            ) from None
        finally:
            slot.in_flight -= 1
