"""The local fleet (real processes: `python -m simulator up --enclaves 4`, HAProxy in front).

Node 3 runs changed enclave code (another PCR0, not in the key policy): it reports the secret as
not loaded by name with the KMS error, fails its health check, and gets no traffic. Nodes 0-2
carry steady load through lb_url while one enclave is SIGKILLed and another proxy SIGTERMed:
nothing fails after the client's single retry and no answer is wrong. /metrics parses with
prometheus_client's parser and its counters move."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fleet_support import (
    Launched,
    create_key,
    get,
    health,
    hmac_request,
    mac_of,
    metrics,
    post,
    seal_body,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families

from simulator._haproxy import find_haproxy
from simulator.loadgen import run_load
from simulator.stack import DEFAULT_ENCLAVE_SOURCE

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(900),
    pytest.mark.skipif(find_haproxy() is None, reason="haproxy is not installed (apt-get install "
                       "-y haproxy)"),
]
NODES = 4
CHANGED = 3  # this node runs changed code
SECRET = "fleet-key"
KEY = bytes(range(32))
# Steady bounded load; lower it on a machine that cannot carry it (FLEET_TEST_RATE).
RATE = float(os.environ.get("FLEET_TEST_RATE", "100"))
DURATION_S = float(os.environ.get("FLEET_TEST_DURATION", "20"))
SETTLE_S = 90


def changed_copy(root: Path) -> Path:
    target = root / "enclave"
    shutil.copytree(DEFAULT_ENCLAVE_SOURCE, target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    handlers = target / "handlers" / "sealed.py"
    handlers.write_text(handlers.read_text() + "\n# one changed line\n")
    return target


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    base = tmp_path_factory.mktemp("fleet")
    launched = Launched(base / "state", "--enclaves", str(NODES),
                        "--node-source", f"{CHANGED}={changed_copy(base / 'changed')}")
    try:
        info = launched.wait_ready("lb_url")
        status, answer = post(info["lb_url"] + "/v1/seal-load",
                              seal_body(info, create_key(info), SECRET, KEY))
        assert status == 200, answer
        for i in range(NODES):
            if i != CHANGED:
                wait_for(lambda i=i: health(info["nodes"][i]["proxy_url"])[1].get("secrets")
                         == "loaded 1/1", SETTLE_S, f"node{i} to load the secret")
        yield launched
    finally:
        launched.stop()


def test_stack_json_lists_the_nodes(fleet: Launched) -> None:
    info = fleet.read()
    assert info["lb_url"].startswith("http://127.0.0.1:") and info["proxy_url"] == info["lb_url"]
    assert len(info["nodes"]) == NODES
    cids = {n["enclave_cid"] for n in info["nodes"]}
    assert len(cids) == NODES
    for node in info["nodes"]:
        assert {"enclave", "proxy", "nsm", "kms-relay", "credentials"} <= set(node["pids"])
        assert node["proxy_url"] != info["lb_url"]
    assert info["nodes"][CHANGED]["pcrs"]["0"] != info["nodes"][0]["pcrs"]["0"]


def test_a_node_with_changed_code_reports_the_secret_and_gets_no_traffic(fleet: Launched) -> None:
    info = fleet.info
    bad = info["nodes"][CHANGED]["proxy_url"]

    def failed_by_name() -> dict | None:
        status, body = health(bad)
        failed = {f["name"]: f for f in body.get("secrets_failed", [])}
        return body if status == 503 and SECRET in failed else None

    body = wait_for(failed_by_name, SETTLE_S, "the changed node to report its secret")
    assert body["secrets"] == "loaded 0/1"
    failure = next(f for f in body["secrets_failed"] if f["name"] == SECRET)
    assert failure["code"] == "kms-access-denied", failure
    assert failure["message"]
    # no tight loop: a few attempts over the fixture's life, spaced by backoff
    attempts = failure["attempts"]
    time.sleep(2.0)
    assert health(bad)[1]["secrets_failed"][0]["attempts"] <= attempts + 2

    def hmac_count(url: str) -> float:
        return sum(v for (name, labels), v in metrics(url).items()
                   if name == "nitro_proxy_requests_total" and ("route", "/v1/hmac") in labels)

    before = hmac_count(bad)
    for i in range(30):
        message = f"m{i}".encode()
        status, answer = hmac_request(info["lb_url"], SECRET, message)
        assert status == 200, answer
        assert answer["mac"] == mac_of(KEY, message)
    assert hmac_count(bad) == before


def test_metrics_parse_and_counters_move(fleet: Launched) -> None:
    url = fleet.info["nodes"][0]["proxy_url"]
    before = metrics(url)
    for i in range(5):
        assert hmac_request(url, SECRET, f"x{i}".encode())[0] == 200
    assert hmac_request(url, "no-such", b"x")[0] == 404
    after = metrics(url)
    ok = ("nitro_proxy_requests_total", (("route", "/v1/hmac"), ("status", "200")))
    assert after[ok] - before.get(ok, 0) == 5
    nf = ("nitro_proxy_requests_total", (("route", "/v1/hmac"), ("status", "404")))
    assert after[nf] - before.get(nf, 0) == 1
    count = ("nitro_proxy_request_duration_seconds_count", (("route", "/v1/hmac"),))
    assert after[count] - before.get(count, 0) == 6
    assert after[("nitro_enclave_up", ())] == 1
    assert after[("nitro_secrets_loaded", ())] == 1
    assert after[("nitro_secrets_registered", ())] == 1
    assert after[("nitro_proxy_relay_bytes_total", (("direction", "in"),))] > before.get(
        ("nitro_proxy_relay_bytes_total", (("direction", "in"),)), 0)
    assert after[("nitro_enclave_connections", ())] >= 1
    raw = get(url + "/metrics")[1].decode()  # never a payload or a secret name
    assert SECRET not in raw and "x0" not in raw
    # the node's KMS relay carried the attested KMS calls that loaded the secret
    relay_url = fleet.info["nodes"][0]["kms_relay_metrics_url"]
    relay = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for f in text_string_to_metric_families(get(relay_url)[1].decode())
             for s in f.samples}
    assert relay[("nitro_kms_relay_connections_accepted_total", ())] >= 1
    for direction in ("to_remote", "from_remote"):  # counted as connections close
        assert relay[("nitro_kms_relay_bytes_total", (("direction", direction),))] >= 0


def test_a_secret_registered_on_one_node_is_served_by_another_at_once(fleet: Launched) -> None:
    info = fleet.info
    key = bytes(range(100, 132))
    status, answer = post(info["nodes"][0]["proxy_url"] + "/v1/seal-load",
                          seal_body(info, create_key(info), "late-key", key))
    assert status == 200, answer
    # node 1 has not re-read the shared store yet: the unknown name makes it look, once
    status, answer = hmac_request(info["nodes"][1]["proxy_url"], "late-key", b"now")
    assert status == 200, answer
    assert answer["mac"] == mac_of(key, b"now")
    status, answer = hmac_request(info["nodes"][1]["proxy_url"], "never-registered", b"x")
    assert status == 404 and answer["error"]["code"] == "no-such-secret"


def test_steady_load_survives_an_enclave_kill_and_a_proxy_drain(fleet: Launched) -> None:
    info = fleet.read()
    victim_enclave = info["nodes"][0]["pids"]["enclave"]
    victim_proxy = info["nodes"][1]["pids"]["proxy"]

    def disrupt() -> None:
        time.sleep(DURATION_S * 0.25)
        os.kill(victim_enclave, signal.SIGKILL)
        time.sleep(DURATION_S * 0.25)
        os.kill(victim_proxy, signal.SIGTERM)

    with ThreadPoolExecutor(1) as pool:
        chaos = pool.submit(disrupt)
        result = asyncio.run(run_load(info["lb_url"], secret_name=SECRET, key=KEY, rate=RATE,
                                      duration_s=DURATION_S))
        chaos.result()
    print("load:", result.summary(), "first errors:", result.first_errors[:10])
    assert result.sent >= RATE * DURATION_S * 0.8  # the client itself kept (about) the pace
    assert result.shed == 0
    assert result.wrong == 0
    assert result.failed == 0, result.first_errors
    after = fleet.read()
    assert after["nodes"][0]["pids"]["enclave"] != victim_enclave
    assert after["nodes"][1]["pids"]["proxy"] != victim_proxy
    for i in (0, 1):
        wait_for(lambda i=i: health(after["nodes"][i]["proxy_url"])[0] == 200, SETTLE_S,
                 f"node{i} healthy again")
