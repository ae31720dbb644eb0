"""Helpers of the fleet tests: a `python -m simulator up` process, KMS, sealing, probes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from prometheus_client.parser import text_string_to_metric_families

from parent.key_policy import key_policy

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240  # N nodes of 5 processes each on a shared 2-core machine
STOP_TIMEOUT_S = 60


class Launched:
    """One `python -m simulator up` process and its stack.json."""

    def __init__(self, state: Path, *args: str) -> None:
        self.state = state
        state.mkdir(parents=True, exist_ok=True)
        self.out_path = state.parent / f"{state.name}-launcher.log"
        self._out = open(self.out_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "simulator", "up", "--state", str(state), *args],
            cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT,
        )
        self.info: dict[str, Any] = {}

    def wait_ready(self, key: str = "proxy_url") -> dict:
        end = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"launcher exited {self.process.returncode}:\n{self.output()}")
            if b'"event": "ready"' in self.out_path.read_bytes():
                self.info = self.read()
                assert key in self.info
                return self.info
            assert time.monotonic() < end, f"not ready:\n{self.output()}"
            time.sleep(0.2)

    def read(self) -> dict:
        self.info = json.loads((self.state / "stack.json").read_text())
        return self.info

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._out.close()


def kms(info: dict, who: str) -> Any:
    c = info["credentials"][who]
    return boto3.client(
        "kms", endpoint_url=info["kms_url"], region_name="us-east-1",
        aws_access_key_id=c["access_key_id"], aws_secret_access_key=c["secret_access_key"],
    )


def create_key(info: dict) -> str:
    """A KMS key whose policy names the default enclave code's PCR0-2."""
    pcrs = {int(i): v for i, v in info["pcrs"].items() if int(i) in (0, 1, 2)}
    creds = info["credentials"]
    policy = key_policy(pcrs=pcrs, enclave_role=creds["parent"]["principal"],
                        admin=creds["operator"]["principal"])
    return kms(info, "operator").create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]


def seal_body(info: dict, key_id: str, name: str, secret: bytes, kind: str = "hmac") -> dict:
    blob = kms(info, "operator").encrypt(KeyId=key_id, Plaintext=secret)["CiphertextBlob"]
    return {"name": name, "kind": kind, "ciphertext": base64.b64encode(blob).decode()}


def post(url: str, body: dict, timeout: float = 30.0) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError) as exc:  # refused, reset, timed out: no answer
        return 0, {"error": {"code": type(exc).__name__}}


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError as exc:
        return 0, repr(exc).encode()


def health(proxy_url: str) -> tuple[int, dict]:
    status, raw = get(proxy_url + "/health", timeout=5.0)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, {}


def mac_of(key: bytes, message: bytes) -> str:
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def hmac_request(url: str, name: str, message: bytes) -> tuple[int, dict]:
    return post(url + "/v1/hmac", {"name": name, "message": base64.b64encode(message).decode()},
                timeout=10.0)


def wait_for(check: Any, timeout: float, what: str, step: float = 0.1) -> Any:
    end = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < end, f"timed out after {timeout} s waiting for {what}"
        time.sleep(step)


def metrics(proxy_url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of GET /metrics, parsed by prometheus_client's own parser."""
    status, raw = get(proxy_url + "/metrics")
    assert status == 200, raw[:300]
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(raw.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
