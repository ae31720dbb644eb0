"""Keeps the enclave holding every registered secret, across enclave and proxy restarts.

The :class:`SecretKeeper` watches the enclave (``health`` every ``check_interval_s``): when a
connection to it is (re)made, or the enclave's start time moves (it restarted), it compares the
store with the enclave's ``seal-list`` and ``seal-load``\\ s what is missing — once the enclave
holds credentials. :class:`KeptPool` is the enclave pool the proxy uses: it holds application
requests while such a pass runs (bounded by ``gate_timeout_s``), so a restarted enclave takes
traffic only after it got its secrets, and it records successful ``seal-load``\\ s in the store
and drops ``seal-delete``\\ d ones. A secret KMS refuses is reported by name with the KMS error
and retried with exponential backoff only, never in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from enclave.protocol import RemoteError
from enclave.retry import backoff

from ._proxy_pool import EnclavePool, EnclaveUnavailable
from .secret_store import SecretRecord, SecretStore, StoreError

log = logging.getLogger("parent.proxy")

UNGATED_OPS = frozenset({"health", "describe", "seal-list"})
SEAL_LOAD_OP = "seal-load"
SEAL_DELETE_OP = "seal-delete"
NO_SUCH_SECRET = "no-such-secret"
GATE_RETRY_S = 0.05  # a held request looks again this often (e.g. credentials not there yet)
RESTART_SLACK_S = 1.0  # the enclave's start time may move this much between probes (rounding)
# seal-load failures that say "not now" rather than "no": retried at the next check
TRANSIENT_CODES = frozenset({"credentials-unavailable", "enclave-unavailable", "busy",
                             "timeout", "deadline-exceeded", "connection-lost"})


@dataclass(frozen=True)
class KeeperLimits:
    check_interval_s: float = 0.25  # health probe of the enclave (also retries due secrets)
    probe_timeout_s: float = 1.0
    load_timeout_s: float = 30.0  # one seal-load (attested KMS round trip)
    gate_timeout_s: float = 10.0  # an application request waits this long for a load pass
    backoff_initial_s: float = 0.5  # a refused secret is retried after this, doubling ...
    backoff_max_s: float = 30.0  # ... up to this
    store_refresh_s: float = 5.0  # re-read the store (secrets registered through other nodes)
    reread_min_s: float = 0.5  # an unknown secret name re-reads the store at most this often


@dataclass
class SecretStatus:
    loaded: bool = False
    error: dict[str, str] | None = None
    attempts: int = 0
    retry_at: float = 0.0


class SecretKeeper:
    """Loads the store's secrets into the enclave (see the module docstring)."""

    def __init__(self, store: SecretStore, limits: KeeperLimits | None = None) -> None:
        self.store = store
        self.limits = limits or KeeperLimits()
        self.records: dict[str, SecretRecord] = {}
        self.status: dict[str, SecretStatus] = {}
        self.store_error: dict[str, str] | None = None
        self.enclave_up = False
        self.enclave_restarts = 0
        self.credentials = False
        self._started_at: float | None = None
        self._seen_connects = -1
        self._read_at = -1e9
        self._dirty = True  # a pass is needed
        self._pass: asyncio.Task | None = None
        self._loop_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._pool: EnclavePool | None = None

    # ------------------------------------------------------------ what health shows

    @property
    def total(self) -> int:
        return len(self.records)

    @property
    def loaded(self) -> int:
        return sum(1 for n in self.records if self.status.get(n, SecretStatus()).loaded)

    @property
    def ready(self) -> bool:
        """Every registered secret is in the enclave, as of the latest connection to it."""
        current = self._pool is not None and self._pool.connects == self._seen_connects
        return (current and self.store_error is None and self.loaded == self.total
                and not self._dirty)

    def report(self) -> dict[str, Any]:
        failed = [
            {"name": n, **(s.error or {}), "attempts": s.attempts}
            for n, s in sorted(self.status.items())
            if n in self.records and not s.loaded and s.error
        ]
        out: dict[str, Any] = {"secrets": f"loaded {self.loaded}/{self.total}"}
        if failed:
            out["secrets_failed"] = failed
        if self.store_error:
            out["secret_store_error"] = self.store_error
        return out

    # ------------------------------------------------------------ lifecycle

    async def start(self, pool: EnclavePool) -> None:
        self._pool = pool
        self._loop_task = asyncio.ensure_future(self._watch(pool))

    async def close(self) -> None:
        for task in (self._loop_task, self._pass):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _watch(self, pool: EnclavePool) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self._probe(pool)
                self.kick(pool)
            await asyncio.sleep(self.limits.check_interval_s)

    async def _probe(self, pool: EnclavePool) -> None:
        try:
            answer = await pool.request(
                "health", {}, timeout=self.limits.probe_timeout_s, wait=False, control=True
            )
        except (EnclaveUnavailable, TimeoutError, RemoteError):
            self.enclave_up = False
            return
        self.enclave_up = True
        if not isinstance(answer, dict):
            return
        self.credentials = bool(answer.get("credentials"))
        uptime = answer.get("uptime_s")
        if isinstance(uptime, int | float):
            started = time.monotonic() - float(uptime)
            if self._started_at is not None and abs(started - self._started_at) > RESTART_SLACK_S:
                self.enclave_restarts += 1
                self._dirty = True
                log.warning("enclave-restarted", extra={"fields": {"uptime_s": uptime}})
            self._started_at = started

    # ------------------------------------------------------------ load passes

    def kick(self, pool: EnclavePool) -> asyncio.Task | None:
        """Start a load pass if one is due; returns the running pass, if any."""
        if self._pass is not None and not self._pass.done():
            return self._pass
        now = time.monotonic()
        if pool.connects != self._seen_connects:
            self._dirty = True
        due = self._dirty or now - self._read_at >= self.limits.store_refresh_s or any(
            not s.loaded and s.retry_at <= now for s in self.status.values()
        )
        if due and pool.up:
            self._pass = asyncio.ensure_future(self._run_pass(pool))
            return self._pass
        return None

    async def settle(self, timeout: float) -> None:
        """Run a due load pass now and wait for it at most ``timeout`` (for /health)."""
        if self._pool is None or self.ready:
            return
        task = self.kick(self._pool)
        if task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), timeout)

    async def gate(self, pool: EnclavePool) -> None:
        """Hold an application request until a load pass has completed for the enclave now
        connected (it may first wait for the enclave's credentials); bounded by
        ``gate_timeout_s``, after which the request goes on as it is."""
        end = time.monotonic() + self.limits.gate_timeout_s
        while pool.connects != self._seen_connects or self._dirty:
            left = end - time.monotonic()
            if left <= 0 or not pool.up:
                return
            task = self.kick(pool)
            if task is not None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), left)
            if pool.connects != self._seen_connects or self._dirty:
                await asyncio.sleep(min(GATE_RETRY_S, max(0.0, end - time.monotonic())))

    async def _run_pass(self, pool: EnclavePool) -> None:
        async with self._lock:
            connects = pool.connects
            now = time.monotonic()
            if self._dirty or now - self._read_at >= self.limits.store_refresh_s:
                try:
                    records = await asyncio.to_thread(self.store.list)
                except StoreError as exc:
                    self.store_error = {"code": exc.code, "message": exc.message}
                    log.error("secret-store-failed", extra={"fields": {"code": exc.code}})
                    # requests go on (health says 503); the store is read again after refresh
                    self._read_at, self._seen_connects, self._dirty = now, connects, False
                    return
                self.store_error = None
                self.records = {r.name: r for r in records}
                self._read_at = now
                for name in list(self.status):
                    if name not in self.records:
                        del self.status[name]
            if not self.records:
                self._seen_connects, self._dirty = connects, False
                return
            try:
                listed = await pool.request(
                    "seal-list", {}, timeout=self.limits.probe_timeout_s * 2, control=True
                )
            except (EnclaveUnavailable, TimeoutError, RemoteError):
                return  # still dirty: the next check tries again
            held = {
                s.get("name") for s in (listed.get("secrets") or [])
                if isinstance(s, dict)
            } if isinstance(listed, dict) else set()
            missing = []
            for name in self.records:
                status = self.status.setdefault(name, SecretStatus())
                if name in held:
                    status.loaded, status.error = True, None
                else:
                    status.loaded = False
                    missing.append(name)
            if missing:
                await self._probe(pool)  # this enclave's credentials, not the last one's
                if not self.credentials:
                    return  # no KMS access yet: not a failure of the secrets, check again soon
            now = time.monotonic()
            settled = True
            for name in missing:
                status = self.status[name]
                if status.error is not None and status.retry_at > now and not self._dirty:
                    continue
                settled = await self._load(pool, self.records[name], status) and settled
            if settled:  # else still dirty: requests stay held, the next check tries again
                self._seen_connects, self._dirty = connects, False

    async def _load(self, pool: EnclavePool, record: SecretRecord, status: SecretStatus) -> bool:
        """One seal-load; False when it failed for a passing reason (no credentials yet, the
        connection broke): the pass is then not over."""
        try:
            await pool.request(SEAL_LOAD_OP, record.seal_load_body(),
                               timeout=self.limits.load_timeout_s, control=True)
        except (RemoteError, EnclaveUnavailable, TimeoutError) as exc:
            code = getattr(exc, "code", "enclave-timeout")
            if code in TRANSIENT_CODES or isinstance(exc, EnclaveUnavailable | TimeoutError):
                log.info("secret-load-deferred", extra={"fields": {"name": record.name,
                                                                   "code": code}})
                return False
            status.attempts += 1
            delay = backoff(status.attempts, self.limits.backoff_initial_s,
                            self.limits.backoff_max_s)
            status.retry_at = time.monotonic() + delay
            status.error = {
                "code": getattr(exc, "code", "enclave-timeout"),
                "message": str(getattr(exc, "message", exc))[:300],
            }
            log.warning("secret-load-failed", extra={"fields": {
                "name": record.name, "code": status.error["code"], "retry_in_s": delay}})
            return True
        status.loaded, status.error, status.attempts = True, None, 0
        log.info("secret-loaded", extra={"fields": {"name": record.name}})
        return True

    async def refresh_knows(self, pool: EnclavePool, name: Any) -> bool:
        """Re-read the store now and load what is missing; True if ``name`` is loaded then."""
        if not isinstance(name, str) or name in self.records:
            return False
        wait = self.limits.reread_min_s - (time.monotonic() - self._read_at)
        if wait > 0:  # unknown names re-read the store at most every reread_min_s: wait for it
            await asyncio.sleep(wait)
        if time.monotonic() - self._read_at >= self.limits.reread_min_s:
            self._dirty = True  # else another request's re-read is done or under way
        await self.gate(pool)
        status = self.status.get(name)
        return status is not None and status.loaded

    # ------------------------------------------------------------ what the API registers

    async def registered(self, body: Any) -> None:
        """A seal-load succeeded through the API: keep it (raises StoreError)."""
        record = SecretRecord.from_body(body if isinstance(body, dict) else {})
        await asyncio.to_thread(self.store.put, record)
        self.records[record.name] = record
        self.status[record.name] = SecretStatus(loaded=True)

    async def deleted(self, name: Any) -> None:
        if isinstance(name, str):
            with contextlib.suppress(StoreError):
                await asyncio.to_thread(self.store.delete, name)
            self.records.pop(name, None)
            self.status.pop(name, None)


class KeptPool(EnclavePool):
    """The enclave pool with a :class:`SecretKeeper`: gates requests, records seal-load."""

    keeper: SecretKeeper | None = None

    async def request(
        self, op: str, body: Any, *, timeout: float, wait: bool = True, control: bool = False
    ) -> Any:
        keeper = self.keeper
        if keeper is None or control or op in UNGATED_OPS:
            answer = await super().request(op, body, timeout=timeout, wait=wait, control=control)
        else:
            start = time.monotonic()
            await self._await_up(wait)
            await keeper.gate(self)
            timeout -= time.monotonic() - start  # the waits share the caller's deadline
            if timeout <= 0:
                raise TimeoutError("no time left after waiting for the secrets to load")
            try:
                answer = await super().request(op, body, timeout=timeout, wait=wait)
            except RemoteError as exc:
                if exc.code != NO_SUCH_SECRET or not isinstance(body, dict):
                    raise
                if op == SEAL_DELETE_OP:
                    await keeper.deleted(body.get("name"))  # e.g. one that never loaded here
                    raise
                # registered through another node of the fleet since the store was last read?
                if not await keeper.refresh_knows(self, body.get("name")):
                    raise
                answer = await super().request(op, body, timeout=timeout, wait=wait)
        if keeper is not None and not control:
            if op == SEAL_LOAD_OP:
                try:
                    await keeper.registered(body)
                except StoreError as exc:
                    raise RemoteError("secret-store-failed",
                                      f"loaded, but not kept for restarts: {exc.message}") from None
            elif op == SEAL_DELETE_OP and isinstance(body, dict):
                await keeper.deleted(body.get("name"))
        return answer

    async def _await_up(self, wait: bool) -> None:
        if self.up or not wait:
            return
        end = time.monotonic() + self.limits.available_wait_s
        while not self.up and time.monotonic() < end:
            await asyncio.sleep(0.02)
