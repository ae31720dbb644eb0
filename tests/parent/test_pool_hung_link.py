"""A connection that stays open but never answers (a hung link) is found and replaced.

The pool has no heartbeat: a request that gets no answer in time makes it probe that
connection with a ``health`` request; when the probe gets no answer either, the connection is
dropped and reconnected. Real sockets on the simulated vsock.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from attestation import TestPKI
from enclave.app import App
from enclave.nsm import NsmClient
from enclave.protocol import RemoteError
from enclave.transport import VMADDR_CID_ANY, VsockAddress, start_server
from parent._proxy_pool import EnclavePool, PoolLimits
from simulator.nsm import SimulatedNsm

CID, PORT = 17, 5000
pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def pool_to(
    serve: Callable[[str], Awaitable[Any]], probe_s: float
) -> AsyncIterator[EnclavePool]:
    """A one-connection pool, connected, to the server ``serve(sim_dir)`` starts."""
    with tempfile.TemporaryDirectory(prefix="hung-") as d:
        sim = os.path.join(d, "v")
        server = await serve(sim)
        os.environ["NITRO_VSOCK_SIM_DIR"] = sim
        pool = EnclavePool(VsockAddress(CID, PORT),
                           limits=PoolLimits(size=1, probe_timeout_s=probe_s, backoff_max_s=0.1))
        try:
            await pool.start()
            t0 = time.monotonic()
            while pool.connected < 1:
                assert time.monotonic() - t0 < 10, "the pool never connected"
                await asyncio.sleep(0.02)
            yield pool
        finally:
            await pool.close()
            os.environ.pop("NITRO_VSOCK_SIM_DIR", None)
            server.close()
            await server.wait_closed()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(65536):  # swallow every request, answer none
        pass


def test_a_connection_that_never_answers_is_dropped_and_replaced() -> None:
    async def serve(sim: str) -> Any:
        return await start_server(_silent, VsockAddress(VMADDR_CID_ANY, PORT),
                                  sim_dir=sim, sim_cid=CID)

    async def main() -> None:
        async with pool_to(serve, probe_s=0.3) as pool:
            before = pool.connects
            with pytest.raises(TimeoutError):
                await pool.request("echo", {}, timeout=0.2)
            t0 = time.monotonic()
            while pool.disconnects < 1 or pool.connects <= before:
                assert time.monotonic() - t0 < 10, "the hung connection was never replaced"
                await asyncio.sleep(0.02)

    asyncio.run(main())


def test_a_slow_operation_does_not_drop_a_working_connection() -> None:
    """The enclave answers (deadline-exceeded, or the probe) on a live link: nothing is dropped."""
    nsm = SimulatedNsm(TestPKI.generate(), pcrs={0: bytes(48)}, module_id="i-0abc-enc0123")
    app = App("hung-test", "1", nsm=NsmClient(transport=nsm.handle))

    @app.operation("hold", deadline_s=10)
    async def hold(ctx, body):  # type: ignore[no-untyped-def]
        await asyncio.sleep(2)
        return "held"

    async def serve(sim: str) -> Any:
        return await app.serve(VsockAddress(VMADDR_CID_ANY, PORT), sim_dir=sim, sim_cid=CID)

    async def main() -> None:
        async with pool_to(serve, probe_s=0.5) as pool:
            for _ in range(3):
                with pytest.raises((TimeoutError, RemoteError)):
                    await pool.request("hold", {}, timeout=0.3)
            await asyncio.sleep(1.0)  # any probe has finished by now
            assert pool.disconnects == 0 and pool.connected == 1
            assert await pool.request("health", {}, timeout=5)

    asyncio.run(main())
