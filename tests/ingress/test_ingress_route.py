"""The attestation route as an ASGI wrapper, called in process: ahead of the app, cached per
nonce, rate limited, bounded input."""

from __future__ import annotations

import asyncio
import json

import pytest

from enclave.ingress import ATTESTATION_PATH, AttestationRoute, RouteLimits


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app:" + scope["path"].encode()})


class FakeNsm:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[bytes] = []
        self.delay = delay

    async def __call__(self, nonce: bytes) -> bytes:
        self.calls.append(nonce)
        await asyncio.sleep(self.delay)
        return b"\x84document-for-" + nonce


async def get(route, path: str, query: bytes = b"", method: str = "GET"):
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": query,
             "headers": []}
    await route(scope, receive, send)
    headers = dict(sent[0].get("headers", []))
    return sent[0]["status"], headers, sent[1]["body"]


def run(coro):
    return asyncio.run(coro)


def test_route_answers_ahead_of_the_app():
    nsm = FakeNsm()
    route = AttestationRoute(app, nsm)
    for path in (ATTESTATION_PATH, ATTESTATION_PATH + "/"):
        status, headers, body = run(get(route, path, b"nonce=00ff"))
        assert status == 200 and headers[b"content-type"] == b"application/cbor"
        assert body == b"\x84document-for-\x00\xff"
    assert run(get(route, "/other"))[2] == b"app:/other"
    assert run(get(route, "/.well-known/nitro-attestation-x"))[2].startswith(b"app:")


@pytest.mark.parametrize("query", [b"", b"nonce=", b"nonce=abc", b"nonce=zz", b"nonce=00&nonce=11",
                                   b"nonce=" + b"00" * 513, b"\xff\xfe", b"x" * 5000])
def test_bad_nonces_are_400(query):
    nsm = FakeNsm()
    status, _, body = run(get(AttestationRoute(app, nsm), ATTESTATION_PATH, query))
    assert status == 400 and json.loads(body)["error"]["code"] == "bad-nonce"
    assert nsm.calls == []


def test_other_methods_are_405():
    status, headers, _ = run(get(AttestationRoute(app, FakeNsm()), ATTESTATION_PATH,
                                 b"nonce=00", method="POST"))
    assert status == 405 and headers[b"allow"] == b"GET"


def test_cache_per_nonce_and_rate_limit():
    nsm = FakeNsm()
    route = AttestationRoute(app, nsm, RouteLimits(rate_per_s=0.001, burst=3))

    async def scenario():
        for _ in range(5):  # one nonce: one NSM call
            assert (await get(route, ATTESTATION_PATH, b"nonce=01"))[0] == 200
        assert (await get(route, ATTESTATION_PATH, b"nonce=02"))[0] == 200
        assert (await get(route, ATTESTATION_PATH, b"nonce=03"))[0] == 200
        status, headers, body = await get(route, ATTESTATION_PATH, b"nonce=04")
        assert status == 429 and b"retry-after" in headers
        assert json.loads(body)["error"]["code"] == "rate-limited"
        assert (await get(route, ATTESTATION_PATH, b"nonce=01"))[0] == 200  # cached: free

    run(scenario())
    assert nsm.calls == [b"\x01", b"\x02", b"\x03"]


def test_concurrent_asks_share_one_call_and_calls_are_capped():
    nsm = FakeNsm(delay=0.05)
    route = AttestationRoute(app, nsm, RouteLimits(max_concurrent=2, burst=100))

    async def scenario():
        same = [get(route, ATTESTATION_PATH, b"nonce=aa") for _ in range(20)]
        many = [get(route, ATTESTATION_PATH, b"nonce=%02x" % i) for i in range(10)]
        results = await asyncio.gather(*same, *many)
        assert all(r[0] == 200 for r in results)

    run(scenario())
    assert nsm.calls.count(b"\xaa") == 1 and len(nsm.calls) == 11


def test_nsm_failure_is_503_and_not_cached():
    class Failing:
        calls = 0

        async def __call__(self, nonce):
            self.calls += 1
            raise RuntimeError("device gone")

    nsm = Failing()
    route = AttestationRoute(app, nsm)
    for _ in range(2):
        status, _, body = run(get(route, ATTESTATION_PATH, b"nonce=00"))
        assert status == 503 and json.loads(body)["error"]["code"] == "unavailable"
    assert nsm.calls == 2
