"""The local fleet: N parent+enclave nodes behind HAProxy, standing in for EC2 behind an NLB.

``python -m simulator up --state DIR --enclaves N`` starts one KMS endpoint (shared, like the
regional KMS), then N nodes — each like one EC2 instance: its own vsock namespace
(``DIR/nodes/nodeI/vsock``), NSM device, enclave (CID ``16 + I``), KMS relay, credential
hand-off and proxy — and HAProxy in front (``simulator._haproxy``). The proxies share one
secret store (``DIR/secrets``, or ``--secret-store s3://...``), so a secret registered through
any node reaches every enclave. The launcher restarts whatever exits, with backoff
(``simulator._supervisor``), and keeps ``DIR/stack.json`` current::

    {"lb_url", "proxy_url" (= lb_url), "kms_url", "root_pem", "credentials", "pcrs",
     "secret_store", "nodes": [{"name", "proxy_url", "enclave_cid", "pcrs", "logs",
                                "pids": {"enclave", "proxy", "nsm", "kms-relay",
                                         "credentials"}}], "pids": {...}}
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from simulator.kms.store import atomic_write

from ._haproxy import HAPROXY_INSTALL_HINT, LbLimits, find_haproxy, haproxy_config
from ._supervisor import RestartPolicy, Supervisor
from .stack import (
    DEFAULT_ENCLAVE_CID,
    STACK_FILE,
    Stack,
    StackConfig,
    StackError,
    free_port,
)

__all__ = ["Fleet", "FleetConfig", "NodeStack", "main_fleet"]

MAX_NODES = 16
EXIT_NO_HAPROXY = 3
ENCLAVE = "enclave"  # the enclave's name inside each node (its children's name prefix)


@dataclass(frozen=True)
class FleetConfig:
    stack: StackConfig  # state_dir, enclave_source, limits, proxy_args ... for every node
    nodes: int = 3
    node_sources: Mapping[int, Path] = field(default_factory=dict)  # node index -> other code
    lb_port: int = 0
    secret_store: str | None = None  # default DIR/secrets (shared directory)
    s3_endpoint_url: str | None = None
    lb: LbLimits = field(default_factory=LbLimits)
    restart: RestartPolicy = field(default_factory=RestartPolicy)


class NodeStack(Stack):
    """One node: a Stack without its own KMS, with the fleet's PKI and secret store."""

    def __init__(self, config: StackConfig, *, label: str, kms_url: str, pki_dir: Path,
                 echo: Callable[[str], None]) -> None:
        super().__init__(config, echo=lambda m: echo(f"{label}: {m}"))
        self.label = label
        self.pki_dir = pki_dir
        self._shared_kms_url = kms_url

    def _start_kms(self) -> None:
        self.kms_url = self._shared_kms_url


class Fleet:
    """Starts, supervises and stops the fleet (see the module docstring)."""

    def __init__(self, config: FleetConfig, *, echo: Callable[[str], None] | None = None) -> None:
        if not 1 <= config.nodes <= MAX_NODES:
            raise StackError(f"--enclaves must be 1..{MAX_NODES}")
        self.config = config
        self.echo = echo or (lambda _m: None)
        self.state = Path(config.stack.state_dir).absolute()
        self.root = Stack(replace(config.stack, state_dir=self.state), echo=self.echo)
        self.nodes: list[NodeStack] = []
        self.lb_url = ""
        self.store = config.secret_store or str(self.state / "secrets")
        self.supervisor = Supervisor(
            [], config.restart, echo=self.echo, on_restart=lambda _s, _c: self._rewrite()
        )

    def start(self) -> dict:
        if find_haproxy() is None:
            raise StackError(HAPROXY_INSTALL_HINT)
        try:
            self.root._prepare()
            self.root._start_kms()
            for i in range(self.config.nodes):
                self._start_node(i)
            self._start_lb()
            self.supervisor.stacks = [self.root, *self.nodes]
        except BaseException:
            self.stop()
            raise
        return self.write_info()

    def _start_node(self, i: int) -> None:
        store_args = ["--secret-store", self.store]
        if self.config.s3_endpoint_url:
            store_args += ["--s3-endpoint-url", self.config.s3_endpoint_url]
        cfg = replace(
            self.config.stack,
            state_dir=self.state / "nodes" / f"node{i}",
            enclave_source=self.config.node_sources.get(i, self.config.stack.enclave_source),
            enclave_cid=DEFAULT_ENCLAVE_CID + i,
            proxy_port=0,
            proxy_args=(*self.config.stack.proxy_args, *store_args),
        )
        node = NodeStack(cfg, label=f"node{i}", kms_url=self.root.kms_url,
                         pki_dir=self.root.pki_dir, echo=self.echo)
        self.nodes.append(node)
        node.start()

    def _start_lb(self) -> None:
        port = self.config.lb_port or free_port()
        servers = []
        for node in self.nodes:
            host, _, p = node.proxy_url.removeprefix("http://").rpartition(":")
            servers.append((host, int(p)))
        path = self.state / "run" / "haproxy.cfg"
        path.write_text(haproxy_config(("127.0.0.1", port), servers, self.config.lb))
        child = self.root._spawn("haproxy", ["-m", "simulator._haproxy", str(path)])
        self.lb_url = f"http://127.0.0.1:{port}"
        self.root._wait_until(child, lambda: _tcp_open("127.0.0.1", port), "LB port")
        self.root._wait_until(child, lambda: _http_ok(self.lb_url + "/health"), "a healthy node")
        self.echo(f"lb         {self.lb_url}  (haproxy, pid {child.pid})")

    def describe(self) -> dict:
        info = self.root.describe()
        first = self.nodes[0].enclaves.get(ENCLAVE) if self.nodes else None
        info.update(
            proxy_url=self.lb_url,
            lb_url=self.lb_url,
            secret_store=self.store,
            enclave_cid=None,
            pcrs=first.pcrs if first else {},
            module_id=first.module_id if first else None,
            enclave_source=str(first.source) if first else None,
            vsock_dir=None,
            kms_relay_metrics_url=None,
            nodes=[_node_info(n) for n in self.nodes],
        )
        return info

    def write_info(self) -> dict:
        info = self.describe()
        atomic_write(self.state / STACK_FILE, (json.dumps(info, indent=2) + "\n").encode())
        return info

    def _rewrite(self) -> None:
        self.write_info()

    def tick(self) -> None:
        self.supervisor.tick()

    def stop(self) -> None:
        for c in [c for c in self.root.children if c.name == "haproxy"]:  # the LB first
            c.stop(self.root.limits.stop_timeout_s)
            self.root.children.remove(c)
        for node in reversed(self.nodes):
            node.stop()
        self.root.stop()

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _node_info(node: NodeStack) -> dict[str, Any]:
    handle = node.enclaves.get(ENCLAVE)
    pids = {c.name.removeprefix(f"{ENCLAVE}-"): c.pid for c in node.children}
    return {
        "name": node.label,
        "proxy_url": node.proxy_url,
        "kms_relay_metrics_url": node.kms_relay_metrics_url,
        "enclave_cid": handle.cid if handle else None,
        "pcrs": handle.pcrs if handle else {},
        "vsock_dir": str(node.vsock_dir),
        "logs": str(node.logs),
        "pids": pids,
    }


def _tcp_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        try:
            s.connect((host, port))
        except OSError:
            return False
    return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as r:
            return r.status == 200
    except Exception:
        return False


def main_fleet(args: Any, config: StackConfig) -> int:
    """The ``--enclaves N`` branch of ``python -m simulator up`` (args from its parser)."""
    import signal

    if find_haproxy() is None:
        print(f"error: {HAPROXY_INSTALL_HINT}", file=sys.stderr)
        return EXIT_NO_HAPROXY
    sources: dict[int, Path] = {}
    for spec in args.node_source or []:
        index, _, path = spec.partition("=")
        if not index.isdigit() or not path:
            print(f"error: --node-source wants I=DIR, got {spec!r}", file=sys.stderr)
            return 2
        sources[int(index)] = Path(path)
    fleet = Fleet(
        FleetConfig(stack=config, nodes=args.enclaves, node_sources=sources,
                    secret_store=args.secret_store, s3_endpoint_url=args.s3_endpoint_url),
        echo=lambda m: print(m, flush=True),
    )

    class _Interrupted(Exception):
        pass

    def interrupted(signum: int, _frame: Any) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        info = fleet.start()
        print(f"fleet up: {fleet.state / STACK_FILE}", flush=True)
        print(json.dumps({"event": "ready", "stack": str(fleet.state / STACK_FILE),
                          "proxy_url": info["proxy_url"], "lb_url": info["lb_url"],
                          "kms_url": info["kms_url"]}), flush=True)
        while True:
            fleet.tick()
            time.sleep(fleet.config.restart.tick_s)
    except _Interrupted as exc:
        print(f"{exc}: stopping the fleet", flush=True)
        return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        fleet.stop()
        with contextlib.suppress(OSError):
            os.unlink(fleet.state / STACK_FILE)
        for s, handler in previous.items():
            signal.signal(s, handler)
