"""HAProxy in front of the local fleet, standing in for an AWS Network Load Balancer.

TCP mode (an NLB does not look into HTTP), round robin, an HTTP health check on each node's
``GET /health`` (a node answers 503 while its enclave is down, a secret is not loaded, or it
drains), and retries with redispatch when a connection to a node fails.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["HAPROXY_INSTALL_HINT", "LbLimits", "find_haproxy", "haproxy_config"]

HAPROXY_INSTALL_HINT = (
    "haproxy is not installed; the local fleet (--enclaves N) uses it as its load balancer. "
    "Install it with: sudo apt-get install -y haproxy (Debian/Ubuntu), "
    "or: brew install haproxy (macOS)"
)


@dataclass(frozen=True)
class LbLimits:
    check_interval_ms: int = 250  # health check of each node (an NLB: 10 s or 30 s)
    check_timeout_ms: int = 1000
    fall: int = 2  # failed checks before a node is out
    rise: int = 2  # passed checks before it is back
    connect_timeout_ms: int = 1000
    client_timeout_s: int = 60
    server_timeout_s: int = 60
    retries: int = 3  # connection attempts, the last ones on another node
    max_connections: int = 4096


def find_haproxy() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if shutil.which(p)), None
    )


def haproxy_config(
    listen: tuple[str, int], nodes: Sequence[tuple[str, int]], limits: LbLimits | None = None
) -> str:
    """The configuration text for ``haproxy -f``."""
    lim = limits or LbLimits()
    servers = "\n".join(
        f"    server node{i} {host}:{port} check" for i, (host, port) in enumerate(nodes)
    )
    return f"""\
global
    maxconn {lim.max_connections}

defaults
    mode tcp
    timeout connect {lim.connect_timeout_ms}ms
    timeout client {lim.client_timeout_s}s
    timeout server {lim.server_timeout_s}s
    timeout check {lim.check_timeout_ms}ms
    retries {lim.retries}
    option redispatch 1

frontend fleet
    bind {listen[0]}:{listen[1]}
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server inter {lim.check_interval_ms}ms fastinter {lim.check_interval_ms}ms \
downinter {lim.check_interval_ms}ms fall {lim.fall} rise {lim.rise}
{servers}
"""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulator._haproxy CONFIG``: exec ``haproxy -db -f CONFIG`` (foreground)."""
    import os
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m simulator._haproxy CONFIG", file=sys.stderr)
        return 2
    binary = find_haproxy()
    if binary is None:
        print(HAPROXY_INSTALL_HINT, file=sys.stderr)
        return 127
    os.execv(binary, [binary, "-db", "-f", args[0]])
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
