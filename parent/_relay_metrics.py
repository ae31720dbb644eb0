"""``python -m parent kms-relay ... --metrics-port P``: the relay's Prometheus metrics.

Connections (open, accepted, refused at the cap, failed to connect) and bytes each way,
added when a connection closes (a kept-alive KMS connection shows its bytes at its end) —
TLS ciphertext counts only; the relay never sees plaintext and logs no bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["serve_relay_metrics"]


class _RelayCollector(Collector):
    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        c = self._read()
        yield GaugeMetricFamily("nitro_kms_relay_connections", "Connections being relayed",
                                value=c["active"])
        yield CounterMetricFamily("nitro_kms_relay_connections_accepted",
                                  "Connections accepted", value=c["total"])
        yield CounterMetricFamily("nitro_kms_relay_connections_refused",
                                  "Connections refused at max_connections", value=c["refused"])
        yield CounterMetricFamily("nitro_kms_relay_connections_failed",
                                  "Connections whose remote could not be reached",
                                  value=c["failed"])
        relayed = CounterMetricFamily("nitro_kms_relay_bytes",
                                      "Bytes relayed, counted when a connection closes",
                                      labels=["direction"])
        relayed.add_metric(["to_remote"], c.get("bytes_to_remote", 0))
        relayed.add_metric(["from_remote"], c.get("bytes_from_remote", 0))
        yield relayed


def serve_relay_metrics(read: Callable[[], dict[str, int]], host: str, port: int) -> Any:
    """Serve ``GET /metrics`` on host:port from a thread; returns the server."""
    registry = CollectorRegistry()
    registry.register(_RelayCollector(read))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
