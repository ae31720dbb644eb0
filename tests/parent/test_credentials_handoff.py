"""parent.credentials: IMDSv2 (a local HTTP server) -> boto3 -> protocol -> enclave store."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest

from enclave.kms.credentials import CredentialStore
from enclave.protocol import serve
from enclave.transport import VMADDR_CID_ANY, VsockAddress
from parent.credentials import CredentialSender, HandoffError, HandoffLimits, credentials_body

ROOT = Path(__file__).resolve().parents[2]
ENCLAVE_CID = 16
ROLE = "parent-instance-role"
IMDS_SECRET = "imdsSecretKeyEXAMPLE/abcdefghijklmnopqrst"
IMDS_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN"
EXPIRATION = (datetime.now(UTC) + timedelta(hours=6)).replace(microsecond=0)


class _Imds(BaseHTTPRequestHandler):
    """The two IMDSv2 endpoints botocore uses: a session token, then role credentials."""

    token = "imds-session-token-1"
    calls: list[str] = []

    def _send(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        self.calls.append("PUT " + self.path)
        if self.path != "/latest/api/token" or not self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        ):
            return self._send(400, "")
        return self._send(200, self.token)

    def do_GET(self):
        self.calls.append("GET " + self.path)
        if self.headers.get("X-aws-ec2-metadata-token") != self.token:
            return self._send(401, "")
        base = "/latest/meta-data/iam/security-credentials/"
        if self.path == base:
            return self._send(200, ROLE)
        if self.path == base + ROLE:
            return self._send(200, json.dumps({
                "Code": "Success", "Type": "AWS-HMAC",
                "LastUpdated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "AccessKeyId": "ASIAIMDSEXAMPLE00001", "SecretAccessKey": IMDS_SECRET,
                "Token": IMDS_TOKEN, "Expiration": EXPIRATION.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }))
        return self._send(404, "")

    def log_message(self, *args):
        pass


@pytest.fixture
def imds(monkeypatch, tmp_path):
    _Imds.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Imds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_EC2_METADATA_DISABLED", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT",
                       f"http://127.0.0.1:{server.server_address[1]}/")
    yield _Imds.calls
    server.shutdown()
    server.server_close()


@pytest.fixture
def sim_dir(tmp_path_factory, monkeypatch):
    d = tmp_path_factory.mktemp("vs")
    d.chmod(0o700)
    monkeypatch.setenv("NITRO_VSOCK_SIM_DIR", str(d))
    monkeypatch.setenv("NITRO_VSOCK_SIM_CID", str(ENCLAVE_CID))
    return d


async def enclave_side(store: CredentialStore, port: int = 5000):
    return await serve(VsockAddress(VMADDR_CID_ANY, port),
                       {"set-credentials": store.handle_set_credentials})


def test_instance_role_credentials_reach_the_enclave(imds, sim_dir, caplog):
    caplog.set_level(logging.DEBUG)
    store = CredentialStore()

    async def main():
        server = await enclave_side(store)
        try:
            sender = CredentialSender(
                VsockAddress(ENCLAVE_CID, 5000), session=boto3.Session(region_name="eu-west-1")
            )
            return await sender.push_once()
        finally:
            server.close()
            await server.wait_closed()

    expiration = asyncio.run(asyncio.wait_for(main(), 30))
    held = store.get()
    assert held is not None
    assert (held.access_key_id, held.secret_access_key, held.session_token) == (
        "ASIAIMDSEXAMPLE00001", IMDS_SECRET, IMDS_TOKEN
    )
    assert held.expiration == EXPIRATION == expiration
    assert held.region == "eu-west-1"
    assert imds[0] == "PUT /latest/api/token"  # IMDSv2: token first
    ours = [r.getMessage() for r in caplog.records if r.name.startswith(("parent", "enclave"))]
    assert any("credentials pushed" in m for m in ours)
    assert not any(IMDS_SECRET in m or IMDS_TOKEN in m for m in ours)


def test_retries_with_backoff_until_the_enclave_is_up(monkeypatch, sim_dir):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENVEXAMPLE000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-key-example")
    store = CredentialStore()
    limits = HandoffLimits(connect_deadline_s=0.1, backoff_initial_s=0.1, backoff_max_s=0.3,
                           push_interval_s=30)

    async def main():
        sender = CredentialSender(
            VsockAddress(ENCLAVE_CID, 5001), session=boto3.Session(region_name="us-east-1"),
            limits=limits,
        )
        with pytest.raises(HandoffError) as info:
            await sender.push_once()
        assert info.value.code == "enclave-unreachable"
        stop = asyncio.Event()
        task = asyncio.ensure_future(sender.run(stop))
        await asyncio.sleep(0.6)
        server = await enclave_side(store, 5001)
        try:
            for _ in range(100):
                if store.get() is not None:
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
            server.close()
            await server.wait_closed()
        return sender

    sender = asyncio.run(asyncio.wait_for(main(), 30))
    assert sender.failures >= 2 and sender.pushes == 1
    held = store.get()
    assert held.access_key_id == "AKIAENVEXAMPLE000001"
    assert held.expiration is None  # static credentials


def test_the_enclave_refusing_credentials_is_reported(monkeypatch, sim_dir):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-an-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-key-example")

    async def main():
        server = await enclave_side(CredentialStore(), 5002)
        try:
            sender = CredentialSender(VsockAddress(ENCLAVE_CID, 5002), session=boto3.Session())
            with pytest.raises(HandoffError) as info:
                await sender.push_once()
            return info.value
        finally:
            server.close()
            await server.wait_closed()

    err = asyncio.run(asyncio.wait_for(main(), 30))
    assert err.code == "enclave-refused" and "bad-credentials" in err.message
    assert "env-secret-key-example" not in str(err)


def test_no_credentials_at_all(sim_dir):
    class NoCreds:
        region_name = None

        def get_credentials(self):
            return None

    async def main():
        sender = CredentialSender(VsockAddress(ENCLAVE_CID, 5003), session=NoCreds())
        with pytest.raises(HandoffError) as info:
            await sender.push_once()
        return info.value

    assert asyncio.run(main()).code == "no-credentials"


def test_schedule():
    now = datetime(2030, 1, 1, tzinfo=UTC)
    sender = CredentialSender(VsockAddress(ENCLAVE_CID, 5000), session=boto3.Session(),
                              clock=lambda: now)
    lim = sender.limits
    assert sender.next_delay(None) == lim.push_interval_s
    assert sender.next_delay(now + timedelta(hours=6)) == lim.push_interval_s
    assert sender.next_delay(now + timedelta(minutes=15, seconds=30)) == 30
    assert sender.next_delay(now + timedelta(minutes=5)) == lim.min_interval_s
    delays = [sender.backoff(n) for n in range(1, 12)]
    assert delays[0] <= lim.backoff_initial_s * 1.2
    assert max(delays) <= lim.backoff_max_s * 1.2


def test_body_from_refreshable_credentials():
    from botocore.credentials import RefreshableCredentials

    creds = RefreshableCredentials.create_from_metadata(
        {"access_key": "ASIAX", "secret_key": "s", "token": "t",
         "expiry_time": "2099-01-01T00:00:00Z"},
        refresh_using=lambda: None, method="test",
    )
    body = credentials_body(creds, "us-west-2")
    assert body == {"access_key_id": "ASIAX", "secret_access_key": "s", "session_token": "t",
                    "expiration": "2099-01-01T00:00:00+00:00", "region": "us-west-2"}


def test_cli_once(imds, sim_dir):
    store = CredentialStore()
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(enclave_side(store, 5004))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        p = subprocess.run(
            [sys.executable, "-m", "parent.credentials", "--enclave-cid", str(ENCLAVE_CID),
             "--port", "5004", "--region", "ap-south-1", "--once"],
            env=env, capture_output=True, text=True, timeout=60,
        )
        assert p.returncode == 0, p.stderr
        assert "credentials pushed" in p.stderr
        assert IMDS_SECRET not in p.stderr + p.stdout
        assert store.get().region == "ap-south-1"
        t0 = time.monotonic()
        p = subprocess.run(
            [sys.executable, "-m", "parent.credentials", "--enclave-cid", str(ENCLAVE_CID),
             "--port", "5999", "--once", "--deadline", "1"],
            env=env, capture_output=True, text=True, timeout=60,
        )
        assert p.returncode == 1 and "giving up: enclave-unreachable" in p.stderr
        assert time.monotonic() - t0 < 30
    finally:
        async def stop():
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
