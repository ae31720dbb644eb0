"""A/B of the framed protocol between two source trees, alternated in the same minutes.

    .venv/bin/python bench/ab_protocol.py BASE_TREE [NEW_TREE] [--rounds 2] [--count 2000]

BASE_TREE / NEW_TREE are checkouts of this repository (e.g. ``git archive REV | tar -x -C
/tmp/base``); NEW_TREE defaults to this one. Each round runs BASE, NEW, NEW, BASE (so drift
of a shared machine's load hits both alike), each in fresh processes: a ``serve`` process
with an ``echo`` op and a ``ProtocolClient`` measuring

* round trip of a 16-byte body, sequential (p50, p99),
* 1 KiB bodies with 8 requests in flight (requests/s, CPU µs per request of client and
  server), and 1 MiB bodies with 4 in flight (MB/s, both ways counted).

Prints the medians per tree and NEW / BASE ratios (docs/benchmarks.md §12). Each trial stops
by itself (bounded counts and durations).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASE_S = 2.0  # seconds per throughput phase
TRIAL_TIMEOUT_S = 120


async def _client(sim: str, count: int, server_pid: int) -> dict[str, float]:
    from enclave.protocol import ProtocolClient
    from enclave.transport import VsockAddress

    def server_cpu() -> float:
        fields = Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    client = await ProtocolClient.connect(VsockAddress(16, 6100), sim_dir=sim, deadline=10)
    small = b"x" * 16
    for _ in range(200):
        await client.request("echo", small)
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        await client.request("echo", small)
        times.append(time.perf_counter() - t0)
    times.sort()
    out = {"p50_us": times[len(times) // 2] * 1e6, "p99_us": times[int(len(times) * 0.99)] * 1e6}

    async def load(body: bytes, window: int) -> tuple[int, float]:
        done = 0
        end = time.perf_counter() + PHASE_S

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await client.request("echo", body)
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(window)))
        return done, time.perf_counter() - t0

    c0, s0 = time.process_time(), server_cpu()
    done, wall = await load(b"k" * 1024, 8)
    out["kib_rps"] = done / wall
    out["client_cpu_us"] = (time.process_time() - c0) / done * 1e6
    out["server_cpu_us"] = (server_cpu() - s0) / done * 1e6
    done, wall = await load(os.urandom(1 << 20), 4)
    out["mib_mbs"] = done * 2 * (1 << 20) / wall / 1e6
    await client.close()
    return out


async def _server(sim: str) -> None:
    from enclave.protocol import serve
    from enclave.transport import VsockAddress

    async def echo(body: object) -> object:
        return body

    server = await serve(VsockAddress(16, 6100), {"echo": echo}, sim_dir=sim)
    print("READY", flush=True)
    await asyncio.sleep(TRIAL_TIMEOUT_S)
    server.close()


def trial(tree: Path, count: int) -> dict[str, float]:
    """One measurement of ``tree``, in two fresh processes that import it."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    with tempfile.TemporaryDirectory(prefix="ab-protocol-") as tmp:
        sim = os.path.join(tmp, "v")
        os.mkdir(sim, 0o700)
        server = subprocess.Popen([sys.executable, __file__, "--role", "server", sim],
                                  stdout=subprocess.PIPE, env=env)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == b"READY"
            out = subprocess.run(
                [sys.executable, __file__, "--role", "client", sim, str(count), str(server.pid)],
                env=env, capture_output=True, text=True, timeout=TRIAL_TIMEOUT_S, check=True,
            ).stdout
        finally:
            server.terminate()
            server.wait(10)
    return json.loads(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("new", type=Path, nargs="?", default=ROOT)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--count", type=int, default=2000, help="sequential round trips")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    results: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
    for _ in range(args.rounds):
        for name in ("base", "new", "new", "base"):
            results[name].append(trial(getattr(args, name).resolve(), args.count))
    keys = ["p50_us", "p99_us", "kib_rps", "client_cpu_us", "server_cpu_us", "mib_mbs"]
    print(f"{args.rounds} rounds of base, new, new, base; medians of {2 * args.rounds} trials\n")
    print("| tree | RTT p50 µs | RTT p99 µs | 1 KiB x8 req/s | client CPU µs/req "
          "| server CPU µs/req | 1 MiB x4 MB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    med = {n: {k: statistics.median(r[k] for r in rs) for k in keys} for n, rs in results.items()}
    for name in ("base", "new"):
        print(f"| {name} | " + " | ".join(f"{med[name][k]:,.0f}" for k in keys) + " |")
    print("| new / base | " + " | ".join(f"{med['new'][k] / med['base'][k]:.2f}" for k in keys)
          + " |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--role":
        sys.path.insert(0, os.environ.get("PYTHONPATH", str(ROOT)))
        if sys.argv[2] == "server":
            asyncio.run(_server(sys.argv[3]))
        else:
            result = asyncio.run(_client(sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
            print(json.dumps(result))
        sys.exit(0)
    sys.exit(main())
