"""Issue 9 item 20: the enclave measures its clock against the parent's offered time, corrects
it within bounds (refusing big jumps from an untrusted parent), refuses work when the drift is
too large, and health shows the offset."""

from __future__ import annotations

import asyncio
import tempfile
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attestation.e2e import seal_request
from enclave.app import App
from enclave.clock import PARENT_TIME_OP, ClockLimits, EnclaveClock
from enclave.protocol import ProtocolClient, RemoteError
from enclave.transport import VMADDR_CID_ANY, VsockAddress

CID, PORT = 16, 5000
LIMITS = ClockLimits()
pytestmark = pytest.mark.timeout(60)


def at(offset_s: float) -> int:
    return int((time.time() + offset_s) * 1000)


def test_a_small_offset_is_corrected_and_shown() -> None:
    clock = EnclaveClock(source=lambda: 1_000.0)
    state = clock.offer(1_002_500)
    assert state["offset_ms"] == 2500 and state["correction_ms"] == 2500 and state["ok"]
    assert clock.now() == pytest.approx(1_002.5)
    clock.check()


def test_a_big_jump_is_refused_and_the_clock_moves_only_max_jump() -> None:
    clock = EnclaveClock(source=lambda: 1_000.0)
    state = clock.offer((1_000 + 3600) * 1000)  # a hostile parent: one hour ahead
    assert state["refused"] == 1
    assert state["correction_ms"] == LIMITS.max_jump_s * 1000
    with pytest.raises(Exception) as info:
        clock.check()  # an hour from the corrected clock: time-dependent work is refused
    assert getattr(info.value, "code", "") == "clock-drift"


@given(st.lists(st.integers(min_value=-(10**9), max_value=10**9), min_size=1, max_size=50))
def test_property_no_parent_moves_the_clock_beyond_the_bounds(offers_ms: list[int]) -> None:
    base = 1_700_000_000.0
    clock = EnclaveClock(source=lambda: base)
    previous = 0.0
    for offset in offers_ms:
        clock.offer(int(base * 1000) + offset)
        assert abs(clock.correction_s) <= LIMITS.max_correction_s + 1e-9
        assert abs(clock.correction_s - previous) <= LIMITS.max_jump_s + 1e-9
        previous = clock.correction_s


def test_drift_recovers_in_steps_when_the_parent_is_honest() -> None:
    clock = EnclaveClock(source=lambda: 1_000.0)
    for _ in range(3):
        clock.offer((1_000 + 25) * 1000)  # the enclave is 25 s slow
    assert clock.correction_s == pytest.approx(25) and clock.state()["ok"]


def test_enclave_app_corrects_its_clock_from_parent_offers() -> None:
    """A drifted enclave (20 s slow) refuses a client's fresh e2e request as from the future;
    after the parent's offers it accepts it; a hostile parent's jump gets work refused."""
    clock = EnclaveClock(source=lambda: time.time() - 20.0)
    app = App("clock-test", "1", clock=clock)

    @app.operation("ping")
    async def ping(ctx, body):
        return "pong"

    async def go() -> None:
        with tempfile.TemporaryDirectory(prefix="clock-") as d:
            server = await app.serve(VsockAddress(VMADDR_CID_ANY, PORT), sim_dir=d, sim_cid=CID)
            client = await ProtocolClient.connect(VsockAddress(CID, PORT), sim_dir=d, deadline=5)
            try:
                sealed, _ = seal_request(app.e2e_key.public_key_der, b"n" * 32, "ping")
                with pytest.raises(RemoteError) as info:
                    await client.request("e2e", {"sealed": sealed}, timeout=5)
                assert info.value.code == "e2e-stale"
                for _ in range(2):  # 20 s in steps of at most max_jump_s
                    await client.request(PARENT_TIME_OP, {"time_ms": at(0)}, timeout=5)
                health = await client.request("health", {}, timeout=5)
                assert abs(health["clock"]["offset_ms"] - 20_000) < 2_000
                assert health["clock"]["ok"] and health["clock"]["drift_ms"] < 2_000
                sealed, _ = seal_request(app.e2e_key.public_key_der, b"n" * 32, "ping")
                assert "sealed" in await client.request("e2e", {"sealed": sealed}, timeout=5)
                assert await client.request("ping", {}, timeout=5) == "pong"
                # a hostile parent: one day ahead
                await client.request(PARENT_TIME_OP, {"time_ms": at(86_400)}, timeout=5)
                with pytest.raises(RemoteError) as info:
                    await client.request("ping", {}, timeout=5)
                assert info.value.code == "clock-drift"
                health = await client.request("health", {}, timeout=5)  # health still answers
                assert health["clock"]["ok"] is False and health["clock"]["refused"] >= 1
                assert abs(clock.correction_s) <= LIMITS.max_correction_s
                for bad in ({"time_ms": "now"}, {"time_ms": -1}, {}):
                    with pytest.raises(RemoteError) as info:
                        await client.request(PARENT_TIME_OP, bad, timeout=5)
                    assert info.value.code == "bad-request"
            finally:
                await client.close()
                server.close()
                await server.wait_closed()
                app.close()

    asyncio.run(go())


def test_the_credential_hand_off_offers_the_parents_time(monkeypatch) -> None:
    import boto3

    from enclave.protocol import serve
    from parent.credentials import CredentialSender

    clock = EnclaveClock(source=lambda: time.time() - 3.0)  # the enclave runs 3 s slow
    got: list[dict] = []

    async def set_credentials(body):
        got.append(body)
        return {"ok": True}

    async def parent_time(body):
        return clock.offer(body["time_ms"])

    async def go() -> None:
        with tempfile.TemporaryDirectory(prefix="clock-h-") as d:
            monkeypatch.setenv("NITRO_VSOCK_SIM_DIR", d)
            server = await serve(
                VsockAddress(VMADDR_CID_ANY, PORT),
                {"set-credentials": set_credentials, PARENT_TIME_OP: parent_time},
                sim_dir=d, sim_cid=CID,
            )
            try:
                session = boto3.Session(aws_access_key_id="AKIAEXAMPLE", region_name="us-east-1",
                                        aws_secret_access_key="secret")
                await CredentialSender(VsockAddress(CID, PORT), session=session).push_once()
            finally:
                server.close()
                await server.wait_closed()

    asyncio.run(go())
    assert got and clock.offers == 1
    assert abs(clock.state()["offset_ms"] - 3_000) < 1_000 and clock.state()["ok"]
