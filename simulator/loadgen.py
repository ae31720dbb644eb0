"""Steady, bounded HTTP load against a proxy or the fleet's load balancer (tests and bench/).

``run_load`` sends ``rate`` HMAC requests per second for ``duration_s`` (each on a new
connection, as clients spread by an NLB do), checks every answer against the MAC computed
locally with the known key, and retries a failed request once after ``retry_delay_s``. It
counts what failed even after that retry and what came back wrong. At most
``max_outstanding`` requests are in progress; a tick that finds no room counts as ``shed``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field

import aiohttp

__all__ = ["LoadLimits", "LoadResult", "run_load"]


@dataclass(frozen=True)
class LoadLimits:
    request_timeout_s: float = 10.0
    retry_delay_s: float = 1.0  # the client's single retry waits this long
    max_outstanding: int = 512
    message_bytes: int = 64


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    retried: int = 0  # first attempt failed
    failed: int = 0  # failed after the retry too
    wrong: int = 0  # 200 with a MAC that is not the right one
    shed: int = 0  # the client had no room to send (max_outstanding)
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    first_errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return 0.0
        data = sorted(self.latencies_s)
        return data[min(len(data) - 1, int(q * len(data)))]

    def summary(self) -> dict:
        return {
            "sent": self.sent, "ok": self.ok, "retried": self.retried, "failed": self.failed,
            "wrong": self.wrong, "shed": self.shed, "elapsed_s": round(self.elapsed_s, 2),
            "ok_per_s": round(self.rate, 1), "p50_ms": round(self.percentile(0.5) * 1e3, 1),
            "p99_ms": round(self.percentile(0.99) * 1e3, 1),
        }


async def _attempt(session: aiohttp.ClientSession, url: str, body: dict, expected: str,
                   timeout: float) -> tuple[bool, bool, str]:
    """-> (answered 200, answer right, error text)."""
    try:
        async with session.post(url, json=body,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            data = await r.json(content_type=None)
            if r.status != 200:
                code = data.get("error", {}).get("code") if isinstance(data, dict) else None
                return False, False, f"{r.status} {code}"
            return True, isinstance(data, dict) and data.get("mac") == expected, ""
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return False, False, type(exc).__name__


async def run_load(base_url: str, *, secret_name: str, key: bytes, rate: float,
                   duration_s: float, limits: LoadLimits | None = None) -> LoadResult:
    lim = limits or LoadLimits()
    result = LoadResult()
    url = base_url.rstrip("/") + "/v1/hmac"
    connector = aiohttp.TCPConnector(force_close=True, limit=lim.max_outstanding)
    outstanding: set[asyncio.Task] = set()

    async def one(session: aiohttp.ClientSession) -> None:
        message = os.urandom(lim.message_bytes)
        body = {"name": secret_name, "message": base64.b64encode(message).decode()}
        expected = base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()
        start = time.perf_counter()
        answered, right, error = await _attempt(session, url, body, expected,
                                                lim.request_timeout_s)
        if not answered:
            result.retried += 1
            if len(result.first_errors) < 20:
                result.first_errors.append(error)
            await asyncio.sleep(lim.retry_delay_s)
            answered, right, error = await _attempt(session, url, body, expected,
                                                    lim.request_timeout_s)
        if not answered:
            result.failed += 1
            if len(result.first_errors) < 20:
                result.first_errors.append("after retry: " + error)
        elif not right:
            result.wrong += 1
        else:
            result.ok += 1
            result.latencies_s.append(time.perf_counter() - start)

    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.monotonic()
        interval = 1.0 / rate
        n = 0
        while (now := time.monotonic()) - start < duration_s:
            due = start + n * interval
            if due > now:
                await asyncio.sleep(due - now)
            n += 1
            if len(outstanding) >= lim.max_outstanding:
                result.shed += 1
                continue
            result.sent += 1
            task = asyncio.ensure_future(one(session))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        if outstanding:
            await asyncio.wait(outstanding)
        result.elapsed_s = time.monotonic() - start
    return result


async def run_closed(base_url: str, *, secret_name: str, key: bytes, concurrency: int,
                     duration_s: float, limits: LoadLimits | None = None) -> LoadResult:
    """As many requests as ``concurrency`` clients can send back to back (no retries): the
    capacity of what is behind ``base_url``."""
    lim = limits or LoadLimits()
    result = LoadResult()
    url = base_url.rstrip("/") + "/v1/hmac"
    connector = aiohttp.TCPConnector(force_close=True, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.monotonic()

        async def worker() -> None:
            while time.monotonic() - start < duration_s:
                message = os.urandom(lim.message_bytes)
                body = {"name": secret_name, "message": base64.b64encode(message).decode()}
                expected = base64.b64encode(hmac.new(key, message, hashlib.sha256).digest())
                t0 = time.perf_counter()
                result.sent += 1
                answered, right, error = await _attempt(session, url, body, expected.decode(),
                                                        lim.request_timeout_s)
                if not answered:
                    result.failed += 1
                    if len(result.first_errors) < 20:
                        result.first_errors.append(error)
                elif not right:
                    result.wrong += 1
                else:
                    result.ok += 1
                    result.latencies_s.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed_s = time.monotonic() - start
    return result
