"""Connections to the enclave that heal themselves when the enclave restarts.

``size`` multiplexed ``ProtocolClient`` connections carry requests (round robin); one more,
the *control* connection, carries only health probes and ``describe``, so a saturated pool
(64 requests in flight on each connection) never makes the enclave look down
(tests/parent/test_proxy.py::test_health_is_not_stuck_behind_a_saturated_pool).

Each connection has a supervisor task: connect, wait until the connection is lost (the
client's read loop sees EOF or an error) or a request failed on it for a connection reason,
then reconnect with ``enclave.retry.backoff``. No heartbeat: the request path and the
connection's own read loop are what tell a dead connection; a link that hangs without
closing is found by the request path too: a request that gets no answer in time makes the pool
probe that connection (``health``, ``probe_timeout_s``) and drop it when the probe gets none
either (tests/parent/test_pool_hung_link.py). When no request connection is
up, a request waits ``available_wait_s`` for one, then fails with ``enclave-unavailable``.
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
from enclave.wire import HEALTH_OP

log = logging.getLogger("parent.proxy")

CLOSE_TIMEOUT_S = 1.0  # closing one dropped connection


class EnclaveUnavailable(CodedError):
    """No usable connection to the enclave (it is down, restarting, or the link broke)."""

    kind = Kind.UNAVAILABLE
    show_code = True


@dataclass(frozen=True)
class PoolLimits:
    size: int = 4  # request connections to the enclave (plus one control connection)
    connect_deadline_s: float = 1.0  # one connect call (the transport retries inside it)
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    available_wait_s: float = 0.5  # a request waits this long for a connection, then fails
    max_frame: int = ProtocolLimits().max_frame  # largest request/answer on a connection
    probe_timeout_s: float = 2.0  # a request got no answer: its connection must answer a probe


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.client: ProtocolClient | None = None
        self.broken = asyncio.Event()  # a request failed on this connection
        self.probing = False  # a probe of this connection is under way

    def usable(self) -> bool:
        return self.client is not None and not self.client.closed and not self.broken.is_set()


class EnclavePool:
    """Connections to one enclave address; ``request`` picks a live one (round robin)."""

    def __init__(
        self,
        address: VsockAddress,
        *,
        limits: PoolLimits | None = None,
        on_connect: Callable[[EnclavePool], Awaitable[None]] | None = None,
    ) -> None:
        self.address = address
        self.limits = limits or PoolLimits()
        self._on_connect = on_connect  # run each time the control connection (re)connects
        self._protocol_limits = ProtocolLimits(max_frame=self.limits.max_frame)
        self._slots = [_Slot(i) for i in range(self.limits.size)]
        self._control = _Slot(-1)
        self._tasks: list[asyncio.Task[None]] = []
        self._rr = itertools.count()
        self._changed = asyncio.Event()
        self._probes: set[asyncio.Task[None]] = set()
        self.connects = 0
        self.disconnects = 0

    @property
    def connected(self) -> int:
        return sum(1 for s in self._slots if s.usable())

    @property
    def up(self) -> bool:
        """At least one request connection to the enclave is usable."""
        return self.connected > 0

    async def start(self) -> None:
        self._tasks = [
            asyncio.ensure_future(self._supervise(s)) for s in (*self._slots, self._control)
        ]

    async def close(self) -> None:
        for task in (*self._tasks, *self._probes):
            task.cancel()
        for task in (*self._tasks, *self._probes):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for slot in (*self._slots, self._control):
            await self._drop(slot)

    async def _drop(self, slot: _Slot) -> None:
        client, slot.client = slot.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), CLOSE_TIMEOUT_S)

    async def _connect(self, slot: _Slot) -> ProtocolClient:
        attempt = 0
        while True:
            try:
                return await ProtocolClient.connect(
                    self.address,
                    deadline=self.limits.connect_deadline_s,
                    limits=self._protocol_limits,
                )
            except Exception as exc:  # TransportError, OSError: retried with backoff
                attempt += 1
                if attempt == 1:
                    log.warning(
                        "enclave-connect-failed",
                        extra={"fields": {"slot": slot.index,
                                          "code": getattr(exc, "code", type(exc).__name__)}},
                    )
                lim = self.limits
                await asyncio.sleep(backoff(attempt, lim.backoff_initial_s, lim.backoff_max_s))

    async def _supervise(self, slot: _Slot) -> None:
        while True:
            client = await self._connect(slot)
            slot.broken.clear()
            slot.client = client
            self.connects += 1
            log.info("enclave-connected", extra={"fields": {"slot": slot.index}})
            if self._on_connect is not None and slot is self._control:
                with contextlib.suppress(Exception):
                    await self._on_connect(self)
            self._changed.set()
            watchers = {
                asyncio.ensure_future(slot.broken.wait()),
                asyncio.ensure_future(client.wait_closed()),
            }
            try:
                await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for watcher in watchers:
                    watcher.cancel()
            self.disconnects += 1
            log.warning("enclave-disconnected", extra={"fields": {"slot": slot.index}})
            await self._drop(slot)

    def _probe(self, slot: _Slot, client: ProtocolClient) -> None:
        """No answer in time: probe that connection, and drop it if the probe gets no answer
        either (a hung link never closes, so its read loop alone would never tell)."""
        if slot.probing or slot.client is not client:
            return
        slot.probing = True

        async def probe() -> None:
            try:
                await client.request(HEALTH_OP, {}, timeout=self.limits.probe_timeout_s)
            except RemoteError:
                pass  # an answer, even an error, shows the link works
            except Exception:
                if slot.client is client:
                    log.warning("enclave-link-unresponsive", extra={"fields": {"slot": slot.index}})
                    slot.broken.set()
            finally:
                slot.probing = False

        task = asyncio.ensure_future(probe())
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

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
        if slot is None or slot.client is None:
            raise EnclaveUnavailable(
                "enclave-unavailable", f"no connection to the enclave at {self.address}"
            )
        client = slot.client
        try:
            return await client.request(op, body, timeout=timeout)
        except RemoteError as exc:
            if exc.code == "timeout":
                raise TimeoutError(exc.message) from None
            raise
        except TimeoutError:  # RequestTimeoutError included: no answer in time
            self._probe(slot, client)
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
