"""The parent proxy in process: HTTP routes, JSON/base64, limits and kind-derived statuses, health
telling "enclave down" from "proxy down", reconnect after an enclave restart, request ids and
logs without payloads. The enclave app runs on the simulated vsock (real sockets)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from attestation import Policy, TestPKI, verify
from enclave.app import App, app_user_data
from enclave.nsm import NsmClient
from enclave.transport import VMADDR_CID_ANY, VsockAddress
from parent._proxy_http import STATUS_FOR_KIND
from parent._proxy_pool import PoolLimits
from parent.proxy import HttpLimits, ProxyConfig, build_app
from simulator.nsm import SimulatedNsm

CID, PORT = 16, 5000
PCR0 = bytes(range(48))
pytestmark = pytest.mark.timeout(60)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def make_app(pki: TestPKI) -> App:
    nsm = SimulatedNsm(pki, pcrs={0: PCR0}, module_id="i-0abc-enc0123")
    app = App("proxy-test", "1", nsm=NsmClient(transport=nsm.handle))

    @app.operation("echo", bytes_fields=("data",))
    async def echo(ctx, body):
        return {"data": body.get("data"), "n": body.get("n")}

    @app.operation("hold", deadline_s=10)
    async def hold(ctx, body):
        await asyncio.sleep(body.get("s", 1))
        return "held"

    @app.operation("hidden", http=False)
    async def hidden(ctx, body):
        return "not over http"

    return app


@dataclass
class Running:
    url: str
    session: aiohttp.ClientSession
    app: App
    sim_dir: str
    server: Any = None

    async def start_enclave(self) -> None:
        self.server = await self.app.serve(
            VsockAddress(VMADDR_CID_ANY, PORT), sim_dir=self.sim_dir, sim_cid=CID
        )

    async def stop_enclave(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        self.server = None

    async def get(self, path: str, **kw: Any) -> tuple[int, Any, Any]:
        async with self.session.get(self.url + path, **kw) as r:
            return r.status, await r.json(), r.headers

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, Any]:
        if body is not None:
            kw["json"] = body
        async with self.session.post(self.url + path, **kw) as r:
            return r.status, await r.json(), r.headers


@asynccontextmanager
async def running(
    app: App, sim_dir: str, *, http: HttpLimits | None = None, enclave: bool = True
) -> AsyncIterator[Running]:
    config = ProxyConfig(
        enclave=VsockAddress(CID, PORT),
        http=http or HttpLimits(),
        pool=PoolLimits(size=2, backoff_max_s=0.2),
    )
    runner = web.AppRunner(build_app(config), access_log=None,
                           keepalive_timeout=config.http.header_timeout_s)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    r = Running("", session, app, sim_dir)
    if enclave:
        await r.start_enclave()
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    r.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        if enclave:
            await wait_for_health(r, 200)
        yield r
    finally:
        await session.close()
        await runner.cleanup()
        if r.server is not None:
            await r.stop_enclave()
        app.close()


async def wait_for_health(r: Running, status: int, within: float = 5.0) -> dict:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while True:
        got, body, _ = await r.get("/health")
        if got == status:
            return body
        assert loop.time() < end, f"health stayed {got} {body}"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- routes


def test_health_attestation_routes(pki: TestPKI, sim_dir: str) -> None:
    app = make_app(pki)

    async def go() -> None:
        async with running(app, sim_dir) as r:
            status, health, headers = await r.get("/health")
            assert status == 200
            assert health["proxy"] == "ok" and health["enclave"] == "ok"
            assert health["app"] == "proxy-test" and headers["X-Request-Id"]

            status, body, _ = await r.post("/attestation", {"nonce": b64(b"n" * 32)})
            assert status == 200
            doc = verify(
                base64.b64decode(body["document"]),
                Policy(pcrs={0: PCR0}, nonce=b"n" * 32, user_data=app_user_data("proxy-test", "1"),
                       public_key=app.e2e_key.public_key_der),
                roots=[pki.root_certificate],
            )
            assert doc.module_id == "i-0abc-enc0123"

            status, routes, _ = await r.get("/v1")
            names = [op["route"] for op in routes["operations"]]
            assert names == ["/v1/echo", "/v1/hold"]

            status, body, _ = await r.post("/v1/echo", {"data": b64(b"\x00\x01"), "n": 5})
            assert (status, body) == (200, {"data": b64(b"\x00\x01"), "n": 5})

    asyncio.run(go())


@pytest.mark.parametrize(
    "body",
    [
        {"nonce": b64(b"n" * 16), "public_key": b64(b"parent key")},
        {"nonce": b64(b"n" * 16), "user_data": b64(b"parent data")},
    ],
)
def test_attestation_for_an_outside_key_is_refused(
    pki: TestPKI, sim_dir: str, body: dict
) -> None:
    async def go() -> None:
        async with running(make_app(pki), sim_dir) as r:
            status, answer, _ = await r.post("/attestation", body)
            assert status == 400 and answer["error"]["code"] == "forbidden-field"

    asyncio.run(go())


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "kind", "code"),
    [
        ("POST", "/v1/echo", {"data": b"{not json"}, "bad-request", "bad-json"),
        ("POST", "/v1/echo", {"json": [1, 2]}, "bad-request", "bad-json"),
        ("POST", "/v1/echo", {"data": b"[" * 100_000}, "bad-request", "bad-json"),
        ("POST", "/attestation", {"data": b'{"a":' * 50_000}, "bad-request", "bad-json"),
        ("POST", "/v1/echo", {"json": {"data": "%%%"}}, "bad-request", "bad-base64"),
        ("POST", "/v1/missing", {"json": {}}, "not-found", "unknown-op"),
        ("POST", "/v1/hidden", {"json": {}}, "not-found", "unknown-op"),
        ("POST", "/v1/set-credentials", {"json": {}}, "not-found", "unknown-op"),
        ("POST", "/v1/Bad_Name", {"json": {}}, "not-found", "not-found"),
        ("POST", "/attestation", {"json": {"nonce": 5}}, "bad-request", "bad-request"),
        ("POST", "/attestation", {"json": {"nonce": b64(b"n"), "x": 1}}, "bad-request",
         "bad-request"),
        ("POST", "/e2e", {"json": {"sealed": b64(b"garbage")}}, "bad-request", "e2e-malformed"),
        ("GET", "/nowhere", {}, "not-found", "not-found"),
        ("GET", "/attestation", {}, "bad-request", "method-not-allowed"),
    ],
)
def test_bad_requests_get_typed_json_errors(
    pki: TestPKI, sim_dir: str, method: str, path: str, kwargs: dict, kind: str, code: str
) -> None:
    async def go() -> None:
        async with (
            running(make_app(pki), sim_dir) as r,
            r.session.request(method, r.url + path, **kwargs) as resp,
        ):
            body = await resp.json()
            assert resp.status == STATUS_FOR_KIND[kind], body  # the status comes from the kind
            assert body["error"]["code"] == code and body["error"]["kind"] == kind
            assert body["request_id"] == resp.headers["X-Request-Id"]

    asyncio.run(go())


def test_oversized_bodies_are_bad_requests(pki: TestPKI, sim_dir: str) -> None:
    async def go() -> None:
        async with running(make_app(pki), sim_dir, http=HttpLimits(max_body_bytes=1000)) as r:
            big = {"data": b64(b"x" * 2000)}
            status, body, _ = await r.post("/v1/echo", big)
            assert status == 400 and body["error"]["code"] == "payload-too-large"
            assert body["error"]["kind"] == "bad-request"

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
                yield b'{"data": "'
                for _ in range(20):
                    yield b"A" * 100
                yield b'"}'

            status, body, _ = await r.post("/v1/echo", data=chunks())
            assert status == 400
            assert (await r.get("/health"))[0] == 200  # others unaffected

    asyncio.run(go())


def test_slow_body_is_cut_off_as_a_bad_request(pki: TestPKI, sim_dir: str) -> None:
    async def go() -> None:
        async with running(make_app(pki), sim_dir, http=HttpLimits(body_timeout_s=0.5)) as r:
            host, port = r.url[len("http://"):].split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                         b"\r\nContent-Length: 100\r\n\r\n{")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 400")  # body-timeout: kind bad-request
            assert b"Connection: close" in head
            writer.close()

    asyncio.run(go())


def test_slow_request_head_is_cut_off(pki: TestPKI, sim_dir: str) -> None:
    async def go() -> None:
        async with running(make_app(pki), sim_dir, http=HttpLimits(header_timeout_s=0.5)) as r:
            host, port = r.url[len("http://"):].split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError, OSError)):
                for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n" * 100:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.02)
                    if reader.at_eof():
                        raise ConnectionResetError("closed by the proxy")
            assert loop.time() - start < 5
            writer.close()

    asyncio.run(go())


# ---------------------------------------------------------------- enclave down / restart


def test_health_tells_enclave_down_from_proxy_down(pki: TestPKI, sim_dir: str) -> None:
    async def go() -> None:
        async with running(make_app(pki), sim_dir, enclave=False) as r:
            status, body, _ = await r.get("/health")
            assert status == 503
            assert body["proxy"] == "ok" and body["enclave"] == "down"
            loop = asyncio.get_running_loop()
            start = loop.time()
            status, body, _ = await r.post("/v1/echo", {"n": 1})
            assert status == 503 and body["error"]["code"] == "enclave-unavailable"
            assert loop.time() - start < 3

    asyncio.run(go())


def test_proxy_reconnects_when_the_enclave_restarts(pki: TestPKI, sim_dir: str) -> None:
    async def go() -> None:
        async with running(make_app(pki), sim_dir) as r:
            assert (await r.post("/v1/echo", {"n": 1}))[0] == 200
            await r.stop_enclave()
            down = await wait_for_health(r, 503)
            assert down["enclave"] == "down"
            status, body, _ = await r.post("/v1/echo", {"n": 2})
            assert status == 503 and body["error"]["code"] == "enclave-unavailable"
            await r.start_enclave()
            await wait_for_health(r, 200)
            assert await r.post("/v1/echo", {"n": 3}) is not None
            status, body, _ = await r.post("/v1/echo", {"n": 3})
            assert (status, body["n"]) == (200, 3)

    asyncio.run(go())


def test_backpressure_answers_503_when_saturated(pki: TestPKI, sim_dir: str) -> None:
    limits = HttpLimits(max_in_flight=2, max_waiting=0, queue_timeout_s=0.1)

    async def go() -> None:
        async with running(make_app(pki), sim_dir, http=limits) as r:
            held = [asyncio.ensure_future(r.post("/v1/hold", {"s": 1})) for _ in range(2)]
            await asyncio.sleep(0.2)
            status, body, _ = await r.post("/v1/echo", {"n": 1})
            assert status == 503 and body["error"]["code"] == "proxy-busy"
            assert (await r.get("/health"))[0] == 200  # health is not queued
            assert [h[0] for h in await asyncio.gather(*held)] == [200, 200]
            assert (await r.post("/v1/echo", {"n": 1}))[0] == 200

    asyncio.run(go())


def test_enclave_round_trip_deadline_is_unavailable(pki: TestPKI, sim_dir: str) -> None:
    async def go() -> None:
        async with running(make_app(pki), sim_dir,
                           http=HttpLimits.derived(request_timeout_s=0.3)) as r:
            status, body, _ = await r.post("/v1/hold", {"s": 3})
            assert status == 503 and body["error"]["code"] in (
                "enclave-timeout", "timeout", "deadline-exceeded"  # whichever side fires first
            )
            assert body["error"]["kind"] == "unavailable"
            assert (await r.post("/v1/echo", {"n": 1}))[0] == 200

    asyncio.run(go())


def test_the_enclave_gives_up_before_the_proxy(pki: TestPKI, sim_dir: str) -> None:
    """A handler outlasting the proxy's deadline D: the enclave's typed deadline-exceeded
    arrives first (its deadline is what remains of D minus its reply margin), within D."""
    outer = 1.0

    async def go() -> None:
        async with running(make_app(pki), sim_dir,
                           http=HttpLimits.derived(request_timeout_s=outer)) as r:
            for _ in range(3):
                start = time.monotonic()
                status, body, _ = await r.post("/v1/hold", {"s": 5})
                elapsed = time.monotonic() - start
                assert status == 503 and body["error"]["code"] == "deadline-exceeded", body
                assert elapsed < outer + 0.5  # generous: a shared, loaded machine

    asyncio.run(go())


def test_logs_have_request_ids_and_no_payloads(
    pki: TestPKI, sim_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    marker = b"secret-payload-marker-91c2"

    async def go() -> None:
        async with running(make_app(pki), sim_dir) as r:
            status, _, headers = await r.post(
                "/v1/echo", {"data": b64(marker)}, headers={"X-Request-Id": "abc-123"}
            )
            assert status == 200 and headers["X-Request-Id"] == "abc-123"
            await r.post("/v1/missing", {"data": b64(marker)})
            await r.post("/attestation", {"nonce": b64(marker)})

    with caplog.at_level(logging.DEBUG):
        asyncio.run(go())
    records = [r for r in caplog.records if r.name == "parent.proxy" and r.getMessage() == "http"]
    assert any(getattr(r, "fields", {}).get("rid") == "abc-123" for r in records)
    text = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    for needle in (marker.decode(), b64(marker), marker.hex()):
        assert needle not in text


def test_health_is_not_stuck_behind_a_saturated_pool(pki: TestPKI, sim_dir: str) -> None:
    """Every forwarding connection is full (64 in flight each): health still answers ok."""
    async def go() -> None:
        async with running(make_app(pki), sim_dir) as r:
            held = [asyncio.ensure_future(r.post("/v1/hold", {"s": 1.5})) for _ in range(160)]
            await asyncio.sleep(0.4)
            loop = asyncio.get_running_loop()
            start = loop.time()
            status, body, _ = await r.get("/health")
            assert (status, body["enclave"]) == (200, "ok")
            assert loop.time() - start < 0.5
            answers = await asyncio.gather(*held)
            assert all(h[0] == 200 for h in answers), [h[:2] for h in answers if h[0] != 200][:3]

    asyncio.run(go())


def test_a_request_too_large_for_the_protocol_does_not_break_the_connection(
    pki: TestPKI, sim_dir: str
) -> None:
    async def go() -> None:
        config_pool = PoolLimits(size=1, max_frame=4096, backoff_max_s=0.2)
        config = ProxyConfig(enclave=VsockAddress(CID, PORT), pool=config_pool)
        app = make_app(pki)
        server = await app.serve(VsockAddress(VMADDR_CID_ANY, PORT), sim_dir=sim_dir, sim_cid=CID)
        runner = web.AppRunner(build_app(config), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                async with session.get(url + "/health") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.05)
            slow = asyncio.ensure_future(session.post(url + "/v1/hold", json={"s": 0.5}))
            await asyncio.sleep(0.1)
            async with session.post(url + "/v1/echo", json={"data": b64(b"x" * 8000)}) as r:
                assert r.status == 400 and (await r.json())["error"]["code"] == "frame-too-large"
            held = await slow
            assert held.status == 200  # the same connection carried it on
            held.release()
            async with session.post(url + "/v1/echo", json={"n": 1}) as r:
                assert r.status == 200
        await runner.cleanup()
        server.close()
        await server.wait_closed()

    asyncio.run(go())
