"""parent.kms_relay: vsock (simulated) -> TCP relay, its limits, and its command line."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from enclave.transport import PARENT_CID, VsockAddress, open_connection
from parent._allowlist import IpFamily
from parent.kms_relay import EXIT_CONFIG, EXIT_LISTEN, EXIT_NOT_ALLOWED, KmsRelay, RelayLimits

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = ipaddress.ip_address("127.0.0.1")


@pytest.fixture
def sim_dir(tmp_path_factory, monkeypatch):
    d = tmp_path_factory.mktemp("vs")
    d.chmod(0o700)
    monkeypatch.setenv("NITRO_VSOCK_SIM_DIR", str(d))
    return d


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def echo_server(hold_until: int = 0):
    """TCP echo on 127.0.0.1; with `hold_until`, nothing is echoed before that many
    connections are open at the same time (a worker cap would deadlock it)."""
    state = {"open": 0, "max": 0}
    all_open = asyncio.Event()
    if hold_until <= 0:
        all_open.set()

    async def handle(reader, writer):
        state["open"] += 1
        state["max"] = max(state["max"], state["open"])
        if state["open"] >= hold_until:
            all_open.set()
        try:
            await all_open.wait()
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        finally:
            state["open"] -= 1
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
    return server, server.sockets[0].getsockname()[1], state


async def round_trip(address: VsockAddress, payload: bytes) -> bytes:
    reader, writer = await open_connection(address)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    data = await reader.read()
    writer.close()
    return data


def test_forwards_bytes_intact_with_200_concurrent_connections(sim_dir):
    async def main():
        server, port, state = await echo_server(hold_until=200)
        relay = KmsRelay("127.0.0.1", port, listen=VsockAddress(PARENT_CID, 8000))
        await relay.start()
        try:
            payloads = [os.urandom(1 + (i * 7919) % 65536) for i in range(200)]
            got = await asyncio.gather(
                *(round_trip(VsockAddress(PARENT_CID, 8000), p) for p in payloads)
            )
            assert got == payloads
            assert state["max"] == 200  # all 200 were open at once: no worker cap
            assert relay.counts()["total"] == 200 and relay.refused == 0
        finally:
            await relay.close()
            server.close()

    run(main())


def test_large_transfer(sim_dir):
    async def main():
        server, port, _ = await echo_server()
        relay = KmsRelay("127.0.0.1", port, listen=VsockAddress(PARENT_CID, 8001))
        await relay.start()
        try:
            blob = os.urandom(8 * 1024 * 1024)
            assert await round_trip(VsockAddress(PARENT_CID, 8001), blob) == blob
        finally:
            await relay.close()
            server.close()

    run(main())


def test_connections_over_the_limit_are_closed_and_counted(sim_dir):
    async def main():
        server, port, _ = await echo_server(hold_until=10**6)  # never echoes: holds them open
        relay = KmsRelay(
            "127.0.0.1", port, listen=VsockAddress(PARENT_CID, 8002),
            limits=RelayLimits(max_connections=5),
        )
        await relay.start()
        held = []
        try:
            for _ in range(5):
                held.append(await open_connection(VsockAddress(PARENT_CID, 8002)))
            for _ in range(50):
                if relay.active == 5:
                    break
                await asyncio.sleep(0.02)
            reader, _writer = await open_connection(VsockAddress(PARENT_CID, 8002))
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once
            assert relay.refused == 1 and relay.active == 5
        finally:
            for _, w in held:
                w.close()
            await relay.close()
            server.close()

    run(main())


def test_unreachable_remote_closes_only_that_client(sim_dir):
    async def main():
        relay = KmsRelay(
            "127.0.0.1", 1, listen=VsockAddress(PARENT_CID, 8003),
            limits=RelayLimits(connect_timeout_s=1.0),
        )
        await relay.start()
        try:
            reader, _writer = await open_connection(VsockAddress(PARENT_CID, 8003))
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert relay.failed == 1 and relay.active == 0
        finally:
            await relay.close()

    run(main())


def test_idle_connections_are_closed(sim_dir):
    async def main():
        server, port, _ = await echo_server()
        relay = KmsRelay(
            "127.0.0.1", port, listen=VsockAddress(PARENT_CID, 8004),
            limits=RelayLimits(idle_timeout_s=0.3),
        )
        await relay.start()
        try:
            reader, writer = await open_connection(VsockAddress(PARENT_CID, 8004))
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            t0 = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert 0.2 < time.monotonic() - t0 < 3
        finally:
            await relay.close()
            server.close()

    run(main())


def test_dns_is_re_resolved_after_the_refresh_interval(sim_dir):
    calls = []

    def resolver(host, family):
        calls.append((host, family))
        if len(calls) == 3:
            raise OSError("resolver down")
        return [LOOPBACK]

    async def main():
        server, port, _ = await echo_server()
        relay = KmsRelay(
            "kms.example.test", port, listen=VsockAddress(PARENT_CID, 8005),
            family=IpFamily.IPV4, limits=RelayLimits(dns_refresh_s=0.3), resolver=resolver,
        )
        await relay.start()
        try:
            address = VsockAddress(PARENT_CID, 8005)
            assert await round_trip(address, b"a") == b"a"
            assert await round_trip(address, b"b") == b"b"
            assert len(calls) == 1  # cached
            await asyncio.sleep(0.35)
            assert await round_trip(address, b"c") == b"c"
            assert len(calls) == 2
            await asyncio.sleep(0.35)
            assert await round_trip(address, b"d") == b"d"  # failure: last good IP kept
            assert len(calls) == 3
            assert calls[0] == ("kms.example.test", IpFamily.IPV4)
        finally:
            await relay.close()
            server.close()

    run(main())


# -- command line (real processes) ---------------------------------------------------------------


def _relay_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "parent.kms_relay", *args]


def _env(sim_dir: Path) -> dict[str, str]:
    return {**os.environ, "NITRO_VSOCK_SIM_DIR": str(sim_dir), "PYTHONPATH": str(ROOT)}


def test_cli_refuses_destinations_not_on_the_allowlist(sim_dir, tmp_path):
    cfg = tmp_path / "allow.yaml"
    cfg.write_text("allowlist:\n- {address: localhost, port: 8443}\n")
    p = subprocess.run(
        _relay_cmd("--config", str(cfg), "8000", "evil.example.invalid", "443"),
        env=_env(sim_dir), capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == EXIT_NOT_ALLOWED
    assert "refusing to start" in p.stderr and "not on the allowlist" in p.stderr
    assert not list(sim_dir.iterdir())  # never listened
    p = subprocess.run(  # right host, wrong port
        _relay_cmd("--config", str(cfg), "8000", "localhost", "443"),
        env=_env(sim_dir), capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == EXIT_NOT_ALLOWED


def test_cli_default_allowlist_refuses_non_kms_hosts(sim_dir):
    p = subprocess.run(
        _relay_cmd("8000", "example.com.invalid", "443"),
        env=_env(sim_dir), capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == EXIT_NOT_ALLOWED, p.stderr


def test_cli_bad_config(sim_dir, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("allowlist:\n- {address: localhost}\n")
    p = subprocess.run(
        _relay_cmd("--config", str(cfg), "8000", "localhost", "443"),
        env=_env(sim_dir), capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == EXIT_CONFIG
    assert "no port field" in p.stderr


def test_cli_serves_until_sigterm_and_reports_a_busy_port(sim_dir, tmp_path):
    cfg = tmp_path / "allow.yaml"
    cfg.write_text("allowlist:\n- {address: localhost, port: 9}\n")
    cmd = _relay_cmd("--config", str(cfg), "-w", "4", "8010", "127.0.0.1", "9")
    proc = subprocess.Popen(cmd, env=_env(sim_dir), stderr=subprocess.PIPE, text=True)
    try:
        sock = sim_dir / f"{PARENT_CID}-8010.sock"
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.05)
        assert sock.exists()
        second = subprocess.run(cmd, env=_env(sim_dir), capture_output=True, text=True, timeout=30)
        assert second.returncode == EXIT_LISTEN
        assert "cannot listen" in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "destination allowed by entry localhost:9" in err
    assert "num_workers ignored" in err
