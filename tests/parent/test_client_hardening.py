"""Issue 9 items 5 and 8 on EnclaveClient: a hostile proxy cannot get a sealed operation run
twice with an unauthenticated answer, and a policy that pins no code is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import aiohttp
import pytest
from aiohttp import web

from attestation import Policy, TestPKI
from attestation import client as client_module
from attestation.client import EnclaveClient, EnclaveClientError
from enclave.app import App, app_user_data
from enclave.nsm import NsmClient
from enclave.transport import VMADDR_CID_ANY, VsockAddress
from parent._proxy_pool import PoolLimits
from parent.proxy import ProxyConfig, build_app
from simulator.nsm import SimulatedNsm

CID, PORT = 16, 5000
PCR0 = bytes(range(48))
PCR8 = bytes(range(1, 49))
pytestmark = pytest.mark.timeout(60)


def make_app(pki: TestPKI, runs: list[int]) -> App:
    nsm = SimulatedNsm(pki, pcrs={0: PCR0}, module_id="i-0abc-enc0123")
    app = App("client-h", "1", nsm=NsmClient(transport=nsm.handle))

    @app.operation("spend")
    async def spend(ctx, body):
        runs.append(1)  # stands for a KMS Decrypt, a payment...: must happen once per call
        return {"spent": len(runs)}

    return app


def policy() -> Policy:
    return Policy(pcrs={0: PCR0}, user_data=app_user_data("client-h", "1"),
                  max_age=timedelta(minutes=5))


@asynccontextmanager
async def real_proxy() -> AsyncIterator[str]:
    config = ProxyConfig(enclave=VsockAddress(CID, PORT),
                         pool=PoolLimits(size=1, backoff_max_s=0.1))
    runner = web.AppRunner(build_app(config), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def hostile_proxy(upstream: str) -> AsyncIterator[str]:
    """Relays everything, but after the enclave ran a sealed request it answers in the clear
    ``400 e2e-decrypt-failed`` (the review's attack)."""

    async def relay(request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as session, session.request(
            request.method, upstream + request.path, data=await request.read(),
            headers={"Content-Type": "application/json"},
        ) as answer:
            body = await answer.read()
        if request.path == "/e2e":
            return web.json_response(
                {"error": {"code": "e2e-decrypt-failed", "message": "sealed to another key"}},
                status=400,
            )
        return web.Response(body=body, status=answer.status, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def test_hostile_proxy_cannot_get_a_sealed_request_run_twice(pki: TestPKI, sim_dir: str) -> None:
    runs: list[int] = []
    app = make_app(pki, runs)

    async def go() -> None:
        server = await app.serve(VsockAddress(VMADDR_CID_ANY, PORT), sim_dir=sim_dir, sim_cid=CID)
        async with real_proxy() as url, hostile_proxy(url) as evil:
            client = EnclaveClient(evil, policy(), roots=[pki.root_certificate])
            for _ in range(100):
                if (await asyncio.to_thread(client.health)).get("enclave") == "ok":
                    break
                await asyncio.sleep(0.05)
            with pytest.raises(EnclaveClientError) as info:
                await asyncio.to_thread(client.call_e2e, "spend", {})
            assert info.value.code == "e2e-decrypt-failed"
            assert "not re-sent" in info.value.message
            assert len(runs) == 1  # run once: the client did not send it again
        server.close()
        await server.wait_closed()

    asyncio.run(go())


@pytest.mark.parametrize(
    "unpinned",
    [
        lambda: Policy(max_age=timedelta(minutes=5)),
        lambda: Policy(pcrs={4: b"\x04" * 48}),  # PCR4 (instance) pins no code
        lambda: Policy(pcrs={1: b"\x01" * 48, 2: b"\x02" * 48}),  # kernel and app, not image
        lambda: Policy(any_of=[{0: PCR0}, {4: b"\x04" * 48}]),  # one set pins nothing
        lambda: Policy(user_data=b"u", allow_debug=False),
    ],
)
def test_a_policy_that_pins_no_code_is_refused(unpinned) -> None:
    with pytest.raises(EnclaveClientError) as info:
        EnclaveClient("http://127.0.0.1:9", unpinned())
    assert info.value.code == "invalid-policy"
    assert "unsafe_allow_unpinned_code" in info.value.message
    client = EnclaveClient("http://127.0.0.1:9", unpinned(), unsafe_allow_unpinned_code=True)
    assert client.policy is not None


@pytest.mark.parametrize(
    "pinned",
    [
        lambda: Policy(pcrs={0: PCR0}),
        lambda: Policy(image_sha384=PCR0),
        lambda: Policy(pcrs={8: PCR8}),
        lambda: Policy(any_of=[{0: PCR0}, {8: PCR8, 4: b"\x04" * 48}]),
    ],
)
def test_a_policy_that_pins_code_is_accepted(pinned) -> None:
    assert client_module.pins_code(pinned())
    EnclaveClient("http://127.0.0.1:9", pinned())
