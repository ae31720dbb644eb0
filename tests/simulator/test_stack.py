"""`python -m simulator up`: starts every part as its own process, writes stack.json, serves
boto3 and the proxy, and stops everything (SIGTERM, Ctrl-C, or the launcher killed outright)
without leaving a process behind; a part that dies at startup fails the stack fast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 40


def launch(state: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "simulator", "up", "--state", str(state), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_stack_json(process: subprocess.Popen, state: Path) -> dict:
    end = time.monotonic() + START_TIMEOUT_S
    path = state / "stack.json"
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"stack exited {process.returncode}: {process.stderr.read()}")
        assert time.monotonic() < end, "stack.json never appeared"
        time.sleep(0.1)
    return json.loads(path.read_text())


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line mentions ``text`` (the state dir is in every child's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if text in cmdline and ") Z " not in stat:  # zombies are already gone
            found.append(int(entry.name))
    return found


def wait_gone(text: str, within: float = 15) -> None:
    end = time.monotonic() + within
    while processes_mentioning(text):
        assert time.monotonic() < end, f"left behind: {processes_mentioning(text)}"
        time.sleep(0.1)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_up_serves_and_stops_cleanly(tmp_path: Path, stop_signal: signal.Signals) -> None:
    state = tmp_path / "st"
    process = launch(state)
    try:
        info = wait_stack_json(process, state)
        for key in ("proxy_url", "kms_url", "root_pem", "enclave_cid", "pcrs", "credentials",
                    "pids"):
            assert key in info
        assert Path(info["root_pem"]).read_bytes().startswith(b"-----BEGIN CERTIFICATE")
        assert info["enclave_cid"] == 16
        assert len(info["pcrs"]["0"]) == 96 and info["pcrs"]["0"] != "0" * 96
        for name in ("kms", "kms-relay", "enclave-nsm", "enclave", "enclave-credentials",
                     "proxy"):
            assert Path(f"/proc/{info['pids'][name]}").exists(), name
        with urllib.request.urlopen(info["proxy_url"] + "/health", timeout=5) as r:
            health = json.loads(r.read())
        assert health["enclave"] == "ok" and health["credentials"] is True
        op = info["credentials"]["operator"]
        kms = boto3.client("kms", endpoint_url=info["kms_url"], region_name="us-east-1",
                           aws_access_key_id=op["access_key_id"],
                           aws_secret_access_key=op["secret_access_key"])
        assert "Keys" in kms.list_keys()
        process.send_signal(stop_signal)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    wait_gone(str(state))
    assert not (state / "stack.json").exists()


def test_children_die_with_a_killed_launcher(tmp_path: Path) -> None:
    state = tmp_path / "st"
    process = launch(state)
    try:
        wait_stack_json(process, state)
    finally:
        process.kill()  # SIGKILL: the launcher cannot clean up; PDEATHSIG does
        process.wait(10)
    wait_gone(str(state))


def test_a_part_that_dies_at_startup_fails_the_stack_fast(tmp_path: Path) -> None:
    broken = tmp_path / "src" / "enclave"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise SystemExit('this enclave build is broken')\n")
    state = tmp_path / "st"
    start = time.monotonic()
    process = launch(state, "--enclave-source", str(broken))
    try:
        _, err = process.communicate(timeout=START_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    assert "enclave exited with code" in err and "this enclave build is broken" in err
    assert time.monotonic() - start < START_TIMEOUT_S
    wait_gone(str(state))


def test_up_usage_errors(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "simulator", "up"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--state" in result.stderr
    result = subprocess.run([sys.executable, "-m", "simulator", "bogus"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "unknown command" in result.stderr
