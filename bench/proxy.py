"""Parent proxy benchmark: small-request rate and latency, large-payload throughput, enclave RSS.

    .venv/bin/python bench/proxy.py [--seconds 4] [--concurrency 32] [--payload-mib 1]

Everything runs as real processes on this machine, in simulation (AF_UNIX for vsock):
an enclave app (``python -m enclave --app proxy:bench_app``, one ``echo`` operation) and the
parent proxy (``python -m parent proxy``) in front of it. Compared in the same run:

* small requests (``POST /v1/echo`` with 16 bytes): HTTP -> proxy -> vsock -> enclave -> back,
  against the *same* aiohttp stack (the proxy's middleware and JSON/base64 handling) answering
  directly without the enclave hop, in its own process — the ratio is the cost of forwarding;
* large payloads (``--payload-mib`` each way): through the proxy (HTTP, JSON, base64), against
  ``socat`` relaying the framed protocol over the same enclave socket (TCP -> AF_UNIX), and
  against a protocol client on the enclave socket directly;
* the enclave app's RSS when idle and its peak under the loads above.

Prints a Markdown table (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CID, PORT = 16, 5000
SMALL = b"0123456789abcdef"


def bench_app() -> Any:
    """The enclave app used here: built-ins plus ``echo``."""
    from enclave.app import App

    app = App("bench", "1")

    @app.operation("echo", bytes_fields=("data",))
    async def echo(ctx, body):
        return {"data": body.get("data", b"")}

    return app


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Procs:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sim = tmp / "v"
        self.sim.mkdir(mode=0o700)
        self.procs: list[subprocess.Popen] = []

    def env(self, **extra: str) -> dict:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join([str(ROOT / "bench"), str(ROOT)]),
            NITRO_VSOCK_SIM_DIR=str(self.sim),
            PYTHONDONTWRITEBYTECODE="1",
            **extra,
        )
        return env

    def start(self, args: list[str], **env: str) -> subprocess.Popen:
        log = open(self.tmp / f"p{len(self.procs)}.log", "wb")  # noqa: SIM115 - closed at exit
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env(**env),
                             cwd=self.tmp, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_for(check: Callable[[], bool], what: str, within: float = 20) -> None:
    end = time.monotonic() + within
    while not check():
        if time.monotonic() > end:
            raise SystemExit(f"bench: {what} did not come up")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def tcp_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def direct_server(port: int) -> Any:
    """The same aiohttp stack as the proxy (middleware, JSON, base64) answering by itself."""
    from aiohttp import web

    from parent._proxy_http import HttpLimits, ProxyHandlers, request_context, to_json

    handlers = ProxyHandlers(pool=None, limits=HttpLimits())  # type: ignore[arg-type]

    async def echo(request: web.Request) -> web.Response:
        body = await handlers.read_json(request)
        data = base64.b64decode(body.get("data", ""), validate=True)
        return web.json_response(to_json({"data": data}))

    app = web.Application(middlewares=[request_context], client_max_size=64 << 20)
    app.router.add_post("/v1/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


# ---------------------------------------------------------------- load


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def http_load(url: str, payload: bytes, seconds: float, concurrency: int) -> dict:
    import aiohttp

    body = json.dumps({"data": base64.b64encode(payload).decode()})
    latencies: list[float] = []
    errors = 0
    moved = 0
    end = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors, moved
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                async with session.post(url, data=body,
                                        headers={"Content-Type": "application/json"}) as r:
                    raw = await r.read()
                if r.status != 200:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                moved += len(payload) * 2 if len(raw) > len(payload) else 0

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"n": len(latencies), "rps": len(latencies) / wall, "errors": errors,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "mb_s": moved / wall / 1e6}


async def protocol_load(connect: Callable[[], Awaitable[Any]], payload: bytes, seconds: float,
                        concurrency: int) -> dict:
    client = await connect()
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            answer = await client.request("echo", {"data": payload}, timeout=30)
            assert len(answer["data"]) == len(payload)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    await client.close()
    return {"n": len(latencies), "rps": len(latencies) / wall,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "mb_s": len(latencies) * len(payload) * 2 / wall / 1e6}


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_kib(self.pid))
            await asyncio.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


# ---------------------------------------------------------------- main


async def run(args: argparse.Namespace, procs: Procs) -> list[tuple[str, str, str, str]]:
    from enclave.protocol import ProtocolClient
    from enclave.transport import VsockAddress

    py = sys.executable
    enclave = procs.start([py, "-m", "enclave", "--app", "proxy:bench_app", "--port", str(PORT)],
                          NITRO_VSOCK_SIM_CID=str(CID))
    sock = procs.sim / f"{CID}-{PORT}.sock"
    wait_for(sock.exists, "enclave")
    proxy_port, direct_port, socat_port = free_port(), free_port(), free_port()
    procs.start([py, "-m", "parent", "proxy", "--enclave-cid", str(CID), "--port",
                 str(proxy_port), "--max-body", str(64 << 20), "--log-level", "WARNING"])
    wait_for(lambda: http_ok(f"http://127.0.0.1:{proxy_port}/health"), "proxy")
    procs.start([py, str(Path(__file__).resolve()), "--serve-direct", str(direct_port)])
    wait_for(lambda: tcp_open(direct_port), "direct server")
    socat = shutil.which("socat")
    if socat:
        procs.start([socat, f"TCP-LISTEN:{socat_port},reuseaddr,fork,bind=127.0.0.1",
                     f"UNIX-CONNECT:{sock}"])
        wait_for(lambda: tcp_open(socat_port), "socat")
    await asyncio.sleep(0.5)
    idle_rss = rss_kib(enclave.pid)

    proxy_url = f"http://127.0.0.1:{proxy_port}/v1/echo"
    direct_url = f"http://127.0.0.1:{direct_port}/v1/echo"
    s, c = args.seconds, args.concurrency
    large = os.urandom(int(args.payload_mib * (1 << 20)))
    with RssSampler(enclave.pid) as sampler:
        small_direct = await http_load(direct_url, SMALL, s, c)
        small_proxy = await http_load(proxy_url, SMALL, s, c)
        seq_direct = await http_load(direct_url, SMALL, s / 2, 1)
        seq_proxy = await http_load(proxy_url, SMALL, s / 2, 1)
        big_proxy = await http_load(proxy_url, large, s, 4)
        big_vsock = await protocol_load(
            lambda: ProtocolClient.connect(VsockAddress(CID, PORT), sim_dir=procs.sim),
            large, s, 4)
        big_socat = None
        if socat:
            async def via_socat() -> Any:
                reader, writer = await asyncio.open_connection("127.0.0.1", socat_port,
                                                               limit=8 << 20)
                return ProtocolClient(reader, writer)

            big_socat = await protocol_load(via_socat, large, s, 4)

    def ms(r: dict) -> str:
        return f"{r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"

    mib = f"{args.payload_mib:g} MiB"
    rows = [
        (f"small echo, {c} concurrent", ms(small_proxy), ms(small_direct),
         f"{small_direct['rps'] / small_proxy['rps']:.2f}x slower"),
        ("small echo, 1 client", ms(seq_proxy), ms(seq_direct),
         f"+{seq_proxy['p50_ms'] - seq_direct['p50_ms']:.2f} ms p50"),
        (f"{mib} echo (each way), 4 concurrent: proxy vs socat",
         f"{big_proxy['mb_s']:.0f} MB/s", f"{big_socat['mb_s']:.0f} MB/s" if big_socat else
         "socat not installed",
         f"{big_socat['mb_s'] / big_proxy['mb_s']:.2f}x" if big_socat else "-"),
        (f"{mib} echo, 4 concurrent: protocol client on the enclave socket", "-",
         f"{big_vsock['mb_s']:.0f} MB/s", "(reference)"),
        ("enclave app RSS", f"idle {idle_rss / 1024:.1f} MiB",
         f"peak under load {sampler.peak / 1024:.1f} MiB", "-"),
    ]
    errors = small_proxy["errors"] + small_direct["errors"] + big_proxy["errors"]
    if errors:
        rows.append(("HTTP errors during the run", str(errors), "", ""))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--payload-mib", type=float, default=1.0)
    parser.add_argument("--serve-direct", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_direct:  # the baseline server, in its own process like the proxy
        async def serve() -> None:
            await direct_server(args.serve_direct)
            await asyncio.Event().wait()

        asyncio.run(serve())
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as d:
        procs = Procs(Path(d))
        try:
            rows = asyncio.run(run(args, procs))
        finally:
            procs.stop()
    print(f"Parent proxy vs direct, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
          f"{args.seconds:g} s per measurement\n")
    print("| measurement | through proxy | baseline | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
