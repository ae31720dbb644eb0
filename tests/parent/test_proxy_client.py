"""attestation.client.EnclaveClient through the real proxy to an enclave app on simulated vsock:
attestation verified against a Policy, end-to-end sealed requests, automatic re-attestation
after an enclave restart, refusal of documents that fail the policy or the nonce."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest
from aiohttp import web

from attestation import Policy, TestPKI
from attestation.client import EnclaveClient, EnclaveClientError, from_b64
from enclave.app import App, HandlerError, app_user_data
from enclave.nsm import NsmClient
from enclave.transport import VMADDR_CID_ANY, VsockAddress
from parent._proxy_pool import PoolLimits
from parent.proxy import ProxyConfig, build_app
from simulator.nsm import SimulatedNsm

CID, PORT = 16, 5000
PCR0 = bytes(range(48))
pytestmark = pytest.mark.timeout(60)


def make_app(pki: TestPKI) -> App:
    nsm = SimulatedNsm(pki, pcrs={0: PCR0}, module_id="i-0abc-enc0123")
    app = App("client-test", "3", nsm=NsmClient(transport=nsm.handle))

    @app.operation("reverse", bytes_fields=("data",))
    async def reverse(ctx, body):
        if not isinstance(body, dict) or not isinstance(body.get("data"), bytes):
            raise HandlerError("bad-request", "data must be bytes")
        return {"data": body["data"][::-1], "e2e": ctx.end_to_end}

    return app


@asynccontextmanager
async def proxy(sim_dir: str) -> AsyncIterator[str]:
    config = ProxyConfig(
        enclave=VsockAddress(CID, PORT),
        pool=PoolLimits(size=1, backoff_max_s=0.1),
    )
    runner = web.AppRunner(build_app(config), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def serve(app: App, sim_dir: str):
    return await app.serve(VsockAddress(VMADDR_CID_ANY, PORT), sim_dir=sim_dir, sim_cid=CID)


def policy(**kw) -> Policy:
    return Policy(pcrs={0: PCR0}, user_data=app_user_data("client-test", "3"),
                  max_age=timedelta(minutes=5), **kw)


async def wait_up(client: EnclaveClient) -> None:
    for _ in range(100):
        if (await asyncio.to_thread(client.health)).get("enclave") == "ok":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("enclave never came up behind the proxy")


def test_attest_and_call_end_to_end(pki: TestPKI, sim_dir: str) -> None:
    app = make_app(pki)

    async def go() -> None:
        server = await serve(app, sim_dir)
        async with proxy(sim_dir) as url:
            client = EnclaveClient(url, policy(), roots=[pki.root_certificate])
            await wait_up(client)
            session = await asyncio.to_thread(client.attest)
            assert session.public_key == app.e2e_key.public_key_der
            assert session.document.user_data == app_user_data("client-test", "3")
            result = await asyncio.to_thread(client.call_e2e, "reverse", {"data": b"\x01\x02"})
            assert result == {"data": b"\x02\x01", "e2e": True}
            with pytest.raises(EnclaveClientError) as info:
                await asyncio.to_thread(client.call_e2e, "reverse", {"data": "text"})
            assert info.value.code == "bad-request"  # the typed error came back sealed
            assert info.value.kind == "bad-request"  # with its kind
            plain = await asyncio.to_thread(client.call, "reverse", {"data": b"\x01\x02"})
            assert from_b64(plain["data"]) == b"\x02\x01" and plain["e2e"] is False
        server.close()
        await server.wait_closed()

    asyncio.run(go())


@pytest.mark.parametrize(
    ("make_policy", "use_roots"),
    [
        (lambda: Policy(pcrs={0: b"\x07" * 48}), True),  # another image
        (lambda: policy(), False),  # the AWS root does not sign test documents
        (lambda: Policy(pcrs={0: PCR0}, user_data=app_user_data("other-app", "3")), True),
    ],
)
def test_documents_failing_the_policy_are_refused(
    pki: TestPKI, sim_dir: str, make_policy, use_roots: bool
) -> None:
    app = make_app(pki)

    async def go() -> None:
        server = await serve(app, sim_dir)
        async with proxy(sim_dir) as url:
            client = EnclaveClient(url, make_policy(),
                                   roots=[pki.root_certificate] if use_roots else None)
            await wait_up(client)
            with pytest.raises(EnclaveClientError) as info:
                await asyncio.to_thread(client.call_e2e, "reverse", {"data": b"x"})
            assert info.value.code == "attestation-failed"
        server.close()
        await server.wait_closed()

    asyncio.run(go())


def test_a_replayed_document_is_refused(pki: TestPKI) -> None:
    """A parent answering with an old (valid) document for another nonce is caught."""
    nsm = SimulatedNsm(pki, pcrs={0: PCR0}, module_id="i-0abc-enc0123")
    # a real document, but for a nonce this client did not send
    stale = NsmClient(transport=nsm.handle).attestation(nonce=b"old nonce")

    async def lying_proxy(request: web.Request) -> web.Response:
        return web.json_response({"document": base64.b64encode(stale).decode()})

    async def go() -> None:
        app = web.Application()
        app.router.add_post("/attestation", lying_proxy)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        client = EnclaveClient(url, Policy(pcrs={0: PCR0}), roots=[pki.root_certificate])
        with pytest.raises(EnclaveClientError) as info:
            await asyncio.to_thread(client.attest)
        assert info.value.code == "attestation-failed"
        await runner.cleanup()

    asyncio.run(go())


@pytest.mark.parametrize("answer", [b"[" * 100_000, b'{"document":' * 50_000, b"\xff\xfe"])
def test_a_hostile_parent_answer_is_a_typed_error(answer: bytes) -> None:
    """Whatever the parent sends back, the client raises EnclaveClientError only."""

    async def hostile_proxy(request: web.Request) -> web.Response:
        return web.Response(body=answer, content_type="application/json")

    async def go() -> None:
        app = web.Application()
        app.router.add_post("/attestation", hostile_proxy)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        client = EnclaveClient(url, Policy(pcrs={0: PCR0}))
        with pytest.raises(EnclaveClientError) as info:
            await asyncio.to_thread(client.attest)
        assert info.value.code == "bad-response"
        await runner.cleanup()

    asyncio.run(go())


def test_client_re_attests_after_an_enclave_restart(pki: TestPKI, sim_dir: str) -> None:
    first, second = make_app(pki), make_app(pki)  # a restart: same code, new HPKE key
    assert first.e2e_key.public_key_der != second.e2e_key.public_key_der

    async def go() -> None:
        server = await serve(first, sim_dir)
        async with proxy(sim_dir) as url:
            client = EnclaveClient(url, policy(), roots=[pki.root_certificate])
            await wait_up(client)
            assert await asyncio.to_thread(client.call_e2e, "reverse", {"data": b"ab"})
            server.close()
            await server.wait_closed()
            server = await serve(second, sim_dir)
            await asyncio.sleep(0.5)  # the proxy notices and reconnects
            await wait_up(client)
            result = await asyncio.to_thread(client.call_e2e, "reverse", {"data": b"ab"})
            assert result["data"] == b"ba"
            assert client.session is not None
            assert client.session.public_key == second.e2e_key.public_key_der
        server.close()
        await server.wait_closed()

    asyncio.run(go())


def test_client_reports_an_unreachable_proxy() -> None:
    client = EnclaveClient("http://127.0.0.1:9", Policy(pcrs={0: PCR0}))
    with pytest.raises(EnclaveClientError) as info:
        client.attest()
    assert info.value.code == "unreachable"


def test_client_requires_a_policy() -> None:
    with pytest.raises(TypeError):
        EnclaveClient("http://127.0.0.1:9", None)  # type: ignore[arg-type]
