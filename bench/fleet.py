"""Fleet benchmark: requests/s through the load balancer with 1, 2 and 3 nodes, node CPU per
request, time from an enclave SIGKILL to serving sealed-secret requests again, and requests
lost during that kill under steady load.

    .venv/bin/python bench/fleet.py [--seconds 10] [--concurrency 32] [--rate 200]
                                    [--kill-seconds 20] [--kills 3]

Everything is real processes on this machine (``simulator.fleet``: a KMS, N nodes of NSM,
enclave, KMS relay, credentials and proxy each, HAProxy in TCP mode in front). The request is
``POST /v1/hmac`` with a sealed HMAC key (64-byte message, each on a new connection, as clients
spread by an NLB). Compared in the same run:

* the LB with 1, 2, 3 nodes, against one node's proxy addressed directly (no LB) — the ratio
  is what the LB costs and what more nodes add; on a 2-core machine the nodes share the same
  two cores, so scaling stops early: the CPU seconds per request (all of the nodes'
  processes, from /proc, minus their idle use measured just before) is the figure to
  extrapolate to more cores;
* kill: under ``--rate`` req/s through the LB, one enclave is SIGKILLed ``--kills`` times;
  the time until that node's own proxy serves the sealed secret again, and the requests that
  failed after the client's single retry (target: 0).

Prints a Markdown table (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from parent.key_policy import key_policy  # noqa: E402
from simulator.fleet import Fleet, FleetConfig  # noqa: E402
from simulator.loadgen import run_closed, run_load  # noqa: E402
from simulator.stack import StackConfig  # noqa: E402

SECRET = "bench-key"
KEY = os.urandom(32)
TICKS = os.sysconf("SC_CLK_TCK")
IDLE_S = 3.0  # idle CPU of the nodes, measured before each load and subtracted


def _kms(info: dict, who: str) -> Any:
    import boto3

    c = info["credentials"][who]
    return boto3.client("kms", endpoint_url=info["kms_url"], region_name="us-east-1",
                        aws_access_key_id=c["access_key_id"],
                        aws_secret_access_key=c["secret_access_key"])


def _post(url: str, body: dict, timeout: float = 30.0) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except OSError:
        return 0, {}


def _seal(info: dict) -> None:
    pcrs = {int(i): v for i, v in info["pcrs"].items() if int(i) in (0, 1, 2)}
    creds = info["credentials"]
    policy = key_policy(pcrs=pcrs, enclave_role=creds["parent"]["principal"],
                        admin=creds["operator"]["principal"])
    op = _kms(info, "operator")
    key_id = op.create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
    blob = op.encrypt(KeyId=key_id, Plaintext=KEY)["CiphertextBlob"]
    status, answer = _post(info["lb_url"] + "/v1/seal-load", {
        "name": SECRET, "kind": "hmac", "ciphertext": base64.b64encode(blob).decode()})
    assert status == 200, answer
    for node in info["nodes"]:  # every node has it before we measure
        end = time.monotonic() + 60
        while not _serves(node["proxy_url"]):
            assert time.monotonic() < end, f"{node['name']} never loaded the secret"
            time.sleep(0.1)


def _serves(proxy_url: str) -> bool:
    status, _ = _post(proxy_url + "/v1/hmac", {"name": SECRET, "message": "aGk="}, timeout=5)
    return status == 200


def _cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def _node_pids(info: dict) -> list[int]:
    return [pid for node in info["nodes"] for pid in node["pids"].values()]


def throughput(state: Path, nodes: int, seconds: float, concurrency: int) -> dict:
    config = FleetConfig(stack=StackConfig(state_dir=state / f"n{nodes}"), nodes=nodes)
    with Fleet(config) as fleet:
        info = fleet.write_info()
        _seal(info)
        rows = {}
        targets = [("lb", info["lb_url"])]
        if nodes == 1:
            targets.insert(0, ("direct", info["nodes"][0]["proxy_url"]))
        for label, url in targets:
            pids = _node_pids(info)
            lb = [info["pids"]["haproxy"]]
            idle0 = _cpu_s(pids)
            time.sleep(IDLE_S)  # the nodes' own background work (health checks, probes)
            idle_cores = (_cpu_s(pids) - idle0) / IDLE_S
            cpu0, lb0, me0, t0 = _cpu_s(pids), _cpu_s(lb), time.process_time(), time.monotonic()
            result = asyncio.run(run_closed(url, secret_name=SECRET, key=KEY,
                                            concurrency=concurrency, duration_s=seconds))
            wall = time.monotonic() - t0
            cpu, lb_cpu, me = _cpu_s(pids) - cpu0, _cpu_s(lb) - lb0, time.process_time() - me0
            busy = max(0.0, cpu - idle_cores * wall)
            rows[label] = {**result.summary(), "node_cpu_ms_per_req":
                           round(1e3 * busy / max(1, result.ok), 2),
                           "node_idle_cores": round(idle_cores, 3),
                           "node_cpu_cores": round(cpu / wall, 2),
                           "lb_cpu_cores": round(lb_cpu / wall, 2),
                           "client_cpu_cores": round(me / wall, 2)}
        return rows


def kill_test(state: Path, rate: float, seconds: float, kills: int) -> dict:
    config = FleetConfig(stack=StackConfig(state_dir=state / "kill"), nodes=3)
    with Fleet(config) as fleet:
        info = fleet.write_info()
        _seal(info)
        stop = threading.Event()
        ticker = threading.Thread(target=lambda: _tick(fleet, stop), daemon=True)
        ticker.start()
        recoveries: list[float] = []

        def chaos() -> None:
            gap = seconds / (kills + 1)
            for k in range(kills):
                time.sleep(gap * 0.5)
                node = info["nodes"][k % len(info["nodes"])]
                pid = fleet.describe()["nodes"][k % len(info["nodes"])]["pids"]["enclave"]
                os.kill(pid, signal.SIGKILL)
                t0 = time.monotonic()
                time.sleep(0.05)
                while not _serves(node["proxy_url"]):
                    time.sleep(0.05)
                recoveries.append(time.monotonic() - t0)
                time.sleep(gap * 0.5)

        killer = threading.Thread(target=chaos)
        killer.start()
        result = asyncio.run(run_load(info["lb_url"], secret_name=SECRET, key=KEY, rate=rate,
                                      duration_s=seconds))
        killer.join()
        stop.set()
        ticker.join()
        return {**result.summary(), "recoveries_s": [round(r, 2) for r in recoveries],
                "first_errors": result.first_errors[:5]}


def _tick(fleet: Fleet, stop: threading.Event) -> None:
    """The launcher's supervision loop (Fleet.tick), here in a thread of the benchmark."""
    while not stop.is_set():
        fleet.tick()
        time.sleep(fleet.config.restart.tick_s)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--kill-seconds", type=float, default=20.0)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--nodes", type=int, nargs="*", default=[1, 2, 3])
    args = p.parse_args()
    out: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as d:
        state = Path(d)
        for n in args.nodes:
            out[f"nodes_{n}"] = throughput(state, n, args.seconds, args.concurrency)
            print(json.dumps({f"nodes_{n}": out[f"nodes_{n}"]}), flush=True)
        if args.kills:
            out["kill"] = kill_test(state, args.rate, args.kill_seconds, args.kills)
            print(json.dumps({"kill": out["kill"]}), flush=True)
    _table(out, args)
    return 0


def _table(out: dict, args: Any) -> None:
    print(f"\ncpus {out['cpus']}, load average at start {out['load_avg']:.1f}; "
          f"{args.concurrency} clients, {args.seconds:g} s each\n")
    print("| target | ok req/s | vs direct | p50 ms | p99 ms | node CPU ms/req | node cores "
          "| LB cores | client cores | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = out.get("nodes_1", {}).get("direct", {}).get("ok_per_s") or 0
    for key in sorted(k for k in out if k.startswith("nodes_")):
        for label, row in out[key].items():
            name = "1 node, direct (no LB)" if label == "direct" else \
                f"LB, {key.split('_')[1]} node(s)"
            ratio = f"{row['ok_per_s'] / base:.2f}x" if base else "-"
            print(f"| {name} | {row['ok_per_s']} | {ratio} | {row['p50_ms']} | {row['p99_ms']} "
                  f"| {row['node_cpu_ms_per_req']} | {row['node_cpu_cores']} "
                  f"| {row.get('lb_cpu_cores', '-')} | {row.get('client_cpu_cores', '-')} "
                  f"| {row['failed']} |")
    if "kill" in out:
        k = out["kill"]
        rec = k["recoveries_s"]
        print(f"\nkill test: {args.rate:g} req/s for {args.kill_seconds:g} s through the LB, "
              f"{len(rec)} enclave SIGKILLs: sent {k['sent']}, failed after retry "
              f"{k['failed']}, wrong {k['wrong']}, retried {k['retried']}; SIGKILL -> serving "
              f"the sealed secret again: median {statistics.median(rec):.2f} s, "
              f"max {max(rec):.2f} s")


if __name__ == "__main__":
    sys.exit(main())
