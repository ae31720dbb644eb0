"""Attested HTTPS ingress benchmark: an ASGI app through parent ingress and TLS in the enclave.

    .venv/bin/python bench/ingress.py [--seconds 4] [--concurrency 32] [--payload-mib 1]

Real processes on this machine, vsock simulated (AF_UNIX). Compared in one run:

* baseline: the same ASGI app served by uvicorn with TLS directly on the host (same uvicorn
  settings as the enclave: h11, asyncio);
* ingress: client -> ``python -m parent ingress`` (TCP) -> simulated vsock -> TLS in
  ``python -m enclave --asgi`` -> app;
* today's JSON proxy (``python -m parent proxy``, bench/proxy.py's echo operation) for the
  large bodies;
* raw relay throughput of the parent hop alone: the toolkit's relay (``parent ingress``)
  against an ``os.splice`` relay (socket -> pipe -> socket, no copy through Python), both
  TCP -> AF_UNIX into a sink that discards.

One load client for all (asyncio, pre-built HTTP/1.1, keep-alive TLS connections, opened
before the timed window), so the ratio is the cost of the extra hop. Baseline and ingress
runs alternate (``--rounds``, median kept) because a shared machine's load drifts. Also the
time to the first attested request (TCP + TLS handshake + document + verification + request,
``attestation.https``). Prints a Markdown table (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import proxy as json_proxy  # noqa: E402  (bench/proxy.py: processes, JSON proxy load)

CID = 16
SMALL = b"0123456789abcdef"


async def bench_asgi(scope: dict, receive: Any, send: Any) -> None:
    """GET /small: 16 bytes; POST /echo: the body back, streamed as it comes."""
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        return
    if scope["path"] == "/echo":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            await send({"type": "http.response.body", "body": message.get("body", b""),
                        "more_body": True})
            if not message.get("more_body"):
                break
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(SMALL)).encode())]})
    await send({"type": "http.response.body", "body": SMALL})


def serve_direct(port: int, tmp: str) -> None:
    """The baseline: uvicorn with TLS on the host, same settings as in the enclave."""
    import uvicorn
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from enclave.ingress._tls import _self_signed

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key)
    key_path, cert_path = Path(tmp, "direct.key"), Path(tmp, "direct.pem")
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    uvicorn.run(bench_asgi, host="127.0.0.1", port=port, http="h11", ws="none", loop="asyncio",
                log_config=None, log_level="warning", access_log=False, lifespan="on",
                ssl_keyfile=str(key_path), ssl_certfile=str(cert_path), backlog=2048,
                limit_concurrency=4096)


# ---------------------------------------------------------------- load client


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if length is not None:
        await reader.readexactly(length)
        return status
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return status
    raise RuntimeError("response without length")


async def http_load(port: int, request: bytes, seconds: float, concurrency: int,
                    moved_per_request: int = 0) -> dict:
    """Open ``concurrency`` TLS connections first (handshakes are not timed), then send
    ``request`` on each in a loop for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    connections = [await asyncio.open_connection("127.0.0.1", port, ssl=_tls(), limit=8 << 20)
                   for _ in range(concurrency)]
    end = time.perf_counter() + seconds

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal errors
        try:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                writer.write(request)
                if await _read_response(reader) != 200:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in connections))
    wall = time.perf_counter() - start
    return {"n": len(latencies), "rps": len(latencies) / wall, "errors": errors,
            "p50_ms": json_proxy.percentile(latencies, 50) * 1000,
            "p99_ms": json_proxy.percentile(latencies, 99) * 1000,
            "mb_s": len(latencies) * moved_per_request / wall / 1e6}


def small_request() -> bytes:
    return b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"


def echo_request(payload: bytes) -> bytes:
    return (b"POST /echo HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % len(payload)) + payload


def first_attested(url: str, root_pem: Path, runs: int) -> list[float]:
    from attestation import Verifier, load_root_pem
    from attestation.connect import Expectations
    from attestation.https import attested_client

    expect = Expectations(verifier=Verifier([load_root_pem(root_pem.read_bytes())]))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        with attested_client(url, expect) as client:
            assert client.get("/small").status_code == 200
        times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------- the parent hop alone


def _sink(path: str) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                threading.Thread(target=_drain, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server


def _drain(conn: socket.socket) -> None:
    buf = bytearray(1 << 20)
    with contextlib.suppress(OSError):
        while conn.recv_into(buf):
            pass
    with contextlib.suppress(OSError):
        conn.sendall(b"done")
    conn.close()


def splice_relay(port: int, path: str, stop: threading.Event) -> None:
    """TCP -> AF_UNIX, one direction, os.splice through a pipe (the experiment)."""
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.2)

    def pump(src: socket.socket, dst: socket.socket) -> None:
        r, w = os.pipe()
        try:
            while True:
                n = os.splice(src.fileno(), w, 1 << 20, flags=getattr(os, "SPLICE_F_MOVE", 1))
                if n == 0:
                    break
                while n:
                    n -= os.splice(r, dst.fileno(), n, flags=getattr(os, "SPLICE_F_MOVE", 1))
            dst.shutdown(socket.SHUT_WR)
            while data := dst.recv(65536):
                src.sendall(data)
        except OSError:
            pass
        finally:
            os.close(r)
            os.close(w)
            src.close()
            dst.close()

    while not stop.is_set():
        try:
            client, _ = listener.accept()
        except TimeoutError:
            continue
        client.settimeout(None)
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(path)
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
    listener.close()


def push(port: int, total: int, streams: int) -> float:
    """MB/s of ``streams`` connections each sending ``total / streams`` bytes."""
    block = os.urandom(1 << 20)
    per = total // streams

    def one() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            sent = 0
            while sent < per:
                s.sendall(block)
                sent += len(block)
            s.shutdown(socket.SHUT_WR)
            s.recv(16)

    threads = [threading.Thread(target=one) for _ in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * streams / (time.perf_counter() - t0) / 1e6


# ---------------------------------------------------------------- the run


async def run(args: argparse.Namespace, procs: Any, tmp: Path) -> list[tuple[str, ...]]:
    py = sys.executable
    free = json_proxy.free_port
    pki = tmp / "pki"
    nsm_sock = tmp / "nsm.sock"
    procs.start([py, "-m", "simulator.nsm", "--socket", str(nsm_sock), "--pki", str(pki),
                 "--enclave-source", str(ROOT / "enclave")])
    json_proxy.wait_for(nsm_sock.exists, "NSM", within=60)
    procs.start([py, "-m", "enclave", "--asgi", "ingress:bench_asgi", "--app", "proxy:bench_app"],
                NITRO_VSOCK_SIM_CID=str(CID), NITRO_NSM_SOCKET=str(nsm_sock))
    json_proxy.wait_for((procs.sim / f"{CID}-5443.sock").exists, "enclave", within=60)
    ingress_port, direct_port, proxy_port = free(), free(), free()
    procs.start([py, "-m", "parent", "ingress", "--listen", f"127.0.0.1:{ingress_port}",
                 "--enclave-cid", str(CID)])
    procs.start([py, str(Path(__file__).resolve()), "--serve-direct", str(direct_port),
                 "--tmp", str(tmp)])
    procs.start([py, "-m", "parent", "proxy", "--enclave-cid", str(CID), "--port",
                 str(proxy_port), "--max-body", str(64 << 20), "--log-level", "WARNING"])
    for port, what in ((ingress_port, "ingress"), (direct_port, "direct uvicorn")):
        json_proxy.wait_for(lambda p=port: json_proxy.tcp_open(p), what, within=60)
    json_proxy.wait_for(lambda: json_proxy.http_ok(f"http://127.0.0.1:{proxy_port}/health"),
                        "proxy", within=60)
    await asyncio.sleep(0.5)

    s, c = args.seconds, args.concurrency
    payload = os.urandom(int(args.payload_mib * (1 << 20)))
    big = echo_request(payload)
    await http_load(direct_port, small_request(), 1, 4)  # warm up both
    await http_load(ingress_port, small_request(), 1, 4)
    async def paired(request: bytes, concurrency: int, moved: int) -> tuple[dict, dict]:
        """Baseline and ingress in alternating order, ``args.rounds`` times; the median run
        of each (by rate): the machine's load drifts, so neither side gets the quiet slot."""
        direct_runs, ingress_runs = [], []
        for i in range(args.rounds):
            order = [(direct_port, direct_runs), (ingress_port, ingress_runs)]
            for port, runs in order if i % 2 == 0 else order[::-1]:
                runs.append(await http_load(port, request, s, concurrency, moved))
        pick = lambda runs: sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]  # noqa: E731
        return pick(direct_runs), pick(ingress_runs)

    small_direct, small_ingress = await paired(small_request(), c, 0)
    big_runs = []
    for bc in args.big_concurrency:
        big_direct, big_ingress = await paired(big, bc, 2 * len(payload))
        big_json = await json_proxy.http_load(f"http://127.0.0.1:{proxy_port}/v1/echo", payload,
                                              s, bc)
        big_runs.append((bc, big_direct, big_ingress, big_json))
    first = first_attested(f"https://127.0.0.1:{ingress_port}", pki / "root.pem", args.first_runs)

    # the parent hop alone: toolkit relay vs os.splice, TCP -> AF_UNIX sink
    sink_path = str(tmp / "sink.sock")
    sink = _sink(sink_path)
    os.symlink(sink_path, procs.sim / f"{CID + 1}-7000.sock")
    relay_port, splice_port = free(), free()
    procs.start([py, "-m", "parent", "ingress", "--listen", f"127.0.0.1:{relay_port}",
                 "--enclave-cid", str(CID + 1), "--enclave-port", "7000"])
    stop = threading.Event()
    threading.Thread(target=splice_relay, args=(splice_port, sink_path, stop), daemon=True).start()
    json_proxy.wait_for(lambda: json_proxy.tcp_open(relay_port), "relay", within=60)
    total = int(args.relay_mib) << 20
    relay_mb = statistics.median(push(relay_port, total, 4) for _ in range(3))
    splice_mb = statistics.median(push(splice_port, total, 4) for _ in range(3))
    stop.set()
    sink.close()

    def rps(r: dict) -> str:
        return f"{r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"

    mib = f"{args.payload_mib:g} MiB"
    rows = [
        (f"small GET, {c} concurrent (keep-alive TLS)", rps(small_ingress), rps(small_direct),
         f"{small_ingress['rps'] / small_direct['rps']:.2f}x"),
    ]
    for bc, big_direct, big_ingress, big_json in big_runs:
        rows += [
            (f"{mib} POST echo (each way), {bc} concurrent", f"{big_ingress['mb_s']:.0f} MB/s",
             f"{big_direct['mb_s']:.0f} MB/s",
             f"{big_ingress['mb_s'] / big_direct['mb_s']:.2f}x"),
            (f"{mib} echo, {bc} concurrent: ingress vs today's JSON proxy",
             f"{big_ingress['mb_s']:.0f} MB/s", f"JSON proxy {big_json['mb_s']:.0f} MB/s",
             f"{big_ingress['mb_s'] / big_json['mb_s']:.2f}x"),
        ]
    rows += [
        ("time to first attested request (TCP+TLS+document+verify+GET)",
         f"median {statistics.median(first) * 1000:.0f} ms",
         f"min {min(first) * 1000:.0f} ms, max {max(first) * 1000:.0f} ms ({len(first)} runs)",
         "-"),
        (f"parent hop alone, {args.relay_mib} MiB over 4 streams: relay vs os.splice",
         f"relay {relay_mb:.0f} MB/s", f"splice {splice_mb:.0f} MB/s",
         f"{splice_mb / relay_mb:.2f}x"),
    ]
    errors = small_ingress["errors"] + small_direct["errors"] + sum(
        r["errors"] for run in big_runs for r in run[1:])
    if errors:
        rows.append(("HTTP errors during the run", str(errors), "", ""))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--payload-mib", type=float, default=1.0)
    parser.add_argument("--big-concurrency", type=int, nargs="+", default=[4, 16],
                        help="concurrent large requests, one run each (bench/proxy.py uses 4)")
    parser.add_argument("--relay-mib", type=int, default=512)
    parser.add_argument("--first-runs", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating baseline/ingress runs per measurement (median kept)")
    parser.add_argument("--serve-direct", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_direct:
        serve_direct(args.serve_direct, args.tmp)
        return 0
    with tempfile.TemporaryDirectory(prefix="ingress-bench-") as tmp:
        procs = json_proxy.Procs(Path(tmp))
        try:
            rows = asyncio.run(run(args, procs, Path(tmp)))
        finally:
            procs.stop()
    print("| measurement | ingress (parent -> vsock -> TLS in enclave) | baseline | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
