"""``GET /metrics``: the proxy's Prometheus metrics (``prometheus_client``, text format).

Counts and timings only — route templates, status codes, sizes — never a payload, a secret
name or a request id. Route labels come from a bounded set: the app's operations as learned
from ``describe`` (``/v1/sign``), the fixed routes, or ``other``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

__all__ = ["LATENCY_BUCKETS_S", "METRICS_PATH", "ProxyMetrics"]

METRICS_PATH = "/metrics"
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                     10.0, 30.0)
FIXED_ROUTES = frozenset({"/health", "/attestation", "/e2e", "/v1", METRICS_PATH})


class _StateCollector(Collector):
    """Values read from the pool and the secret keeper at scrape time."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        s = self._read()
        yield GaugeMetricFamily("nitro_enclave_up", "1 when the proxy reaches the enclave",
                                value=1 if s["enclave_up"] else 0)
        yield CounterMetricFamily("nitro_enclave_restarts", "Enclave restarts seen by the proxy",
                                  value=s["enclave_restarts"])
        yield GaugeMetricFamily("nitro_enclave_connections",
                                "Open protocol connections to the enclave",
                                value=s["enclave_connections"])
        yield CounterMetricFamily("nitro_enclave_connects",
                                  "Protocol connections made to the enclave",
                                  value=s["enclave_connects"])
        yield GaugeMetricFamily("nitro_secrets_registered", "Secrets in the parent's store",
                                value=s["secrets_registered"])
        yield GaugeMetricFamily("nitro_secrets_loaded",
                                "Registered secrets the enclave holds", value=s["secrets_loaded"])
        yield GaugeMetricFamily("nitro_proxy_draining", "1 while the proxy drains",
                                value=1 if s["draining"] else 0)


class ProxyMetrics:
    """One registry per proxy; ``middleware`` counts requests, ``handler`` serves them."""

    def __init__(self, read_state: Callable[[], dict[str, Any]],
                 known_ops: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        self._known_ops = known_ops
        self.requests = Counter("nitro_proxy_requests", "HTTP requests answered",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("nitro_proxy_request_duration_seconds",
                                 "Time to answer an HTTP request", ["route"],
                                 buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.in_flight = Gauge("nitro_proxy_in_flight_requests", "HTTP requests being answered",
                               registry=self.registry)
        self.relay_bytes = Counter("nitro_proxy_relay_bytes",
                                   "HTTP body bytes relayed (request bodies in, answers out)",
                                   ["direction"], registry=self.registry)
        self.registry.register(_StateCollector(read_state))

    def route_of(self, request: web.Request) -> str:
        if request.path in FIXED_ROUTES:
            return request.path
        op = request.match_info.get("op")
        if op is not None and op in self._known_ops():
            return f"/v1/{op}"
        return "other"

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == METRICS_PATH:
            return await handler(request)
        start = time.perf_counter()
        self.in_flight.inc()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.in_flight.dec()
            route = self.route_of(request)
            self.requests.labels(route, str(status)).inc()
            self.latency.labels(route).observe(time.perf_counter() - start)
            if request.content_length:
                self.relay_bytes.labels("in").inc(request.content_length)
            body = getattr(locals().get("response"), "body", None)
            if isinstance(body, bytes | bytearray):
                self.relay_bytes.labels("out").inc(len(body))

    async def handler(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
