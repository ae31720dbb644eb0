"""Graceful drain: on SIGTERM the proxy fails its health check first, keeps answering for
``grace_s`` (a load balancer notices the failing check within that time and stops sending new
connections), then stops listening and lets in-flight requests finish within ``deadline_s``."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ._proxy_http import REQUEST_TIMEOUT_S

log = logging.getLogger("parent.proxy")

DRAIN_MARGIN_S = 0.5
"""How much longer than the request deadline in-flight requests get on SIGTERM."""


@dataclass(frozen=True)
class DrainLimits:
    # > the LB health interval x fall count (HAProxy here: 0.25 s x 2; an NLB: 10 s x 2)
    grace_s: float = 1.5
    # in-flight requests must finish within this after the grace: the request deadline and a
    # margin, so a request admitted before SIGTERM can finish (ProxyConfig.derived follows D)
    deadline_s: float = REQUEST_TIMEOUT_S + DRAIN_MARGIN_S


class Drainer:
    """Tracks in-flight requests; ``draining`` makes ``/health`` answer 503."""

    def __init__(self, limits: DrainLimits) -> None:
        self.limits = limits
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.in_flight += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def drain(self, runner: web.AppRunner) -> bool:
        """Fail health, wait the grace, stop listening, wait for in-flight requests.
        Returns True when every request finished within the deadline."""
        self.draining = True
        start = time.monotonic()
        log.info("draining", extra={"fields": {"grace_s": self.limits.grace_s,
                                               "in_flight": self.in_flight}})
        await asyncio.sleep(self.limits.grace_s)
        for site in list(runner.sites):
            await site.stop()  # no new connections
        try:
            await asyncio.wait_for(self._idle.wait(), self.limits.deadline_s)
            finished = True
        except TimeoutError:
            finished = False
        log.info("drained", extra={"fields": {"finished": finished, "left": self.in_flight,
                                              "s": round(time.monotonic() - start, 3)}})
        return finished
