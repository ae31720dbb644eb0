"""Graceful drain: on stop the proxy fails /health first, keeps answering for the grace, lets
an in-flight request finish, then stops listening and returns."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
from test_proxy import CID, PORT, make_app

from attestation import TestPKI
from enclave.transport import VMADDR_CID_ANY, VsockAddress
from parent._drain import DrainLimits
from parent.proxy import PoolLimits, ProxyConfig, run_proxy

GRACE_S = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_fails_health_first_then_finishes_in_flight(pki: TestPKI, sim_dir: str) -> None:
    async def scenario() -> None:
        app = make_app(pki)
        server = await app.serve(VsockAddress(VMADDR_CID_ANY, PORT), sim_dir=sim_dir, sim_cid=CID)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        config = ProxyConfig(enclave=VsockAddress(CID, PORT), port=port,
                             pool=PoolLimits(size=2, backoff_max_s=0.2),
                             drain=DrainLimits(grace_s=GRACE_S, deadline_s=5.0))
        stop = asyncio.Event()
        proxy = asyncio.ensure_future(run_proxy(config, stop))
        async with aiohttp.ClientSession() as session:
            async def status(path: str) -> tuple[int, dict]:
                async with session.get(url + path) as r:
                    return r.status, await r.json()

            for _ in range(100):
                try:
                    if (await status("/health"))[0] == 200:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)

            async def hold() -> int:
                async with session.post(url + "/v1/hold", json={"s": 1.5}) as r:
                    return r.status

            in_flight = asyncio.ensure_future(hold())
            await asyncio.sleep(0.2)
            loop = asyncio.get_running_loop()
            stopped_at = loop.time()
            stop.set()
            await asyncio.sleep(0.1)
            code, body = await status("/health")
            assert code == 503 and body["proxy"] == "draining"
            async with session.post(url + "/v1/echo", json={"data": "aGk="}) as r:
                assert r.status == 200  # still answering during the grace
            assert await in_flight == 200
            assert await asyncio.wait_for(proxy, 15) == 0
            assert loop.time() - stopped_at >= GRACE_S
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # no longer listening
        server.close()
        await server.wait_closed()
        app.close()

    asyncio.run(scenario())
