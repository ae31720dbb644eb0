"""1,000 concurrent requests through HTTP -> proxy -> vsock -> enclave: all answered right."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time

import aiohttp
import pytest
from reliability_support import LiveStack, rss_kib

CONCURRENT = 1000
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_thousand_concurrent_requests_are_all_answered_correctly(live: LiveStack) -> None:
    key, body = live.sealed_hmac_body("load-key")
    messages = [f"message {i} {'x' * (i % 50)}".encode() for i in range(CONCURRENT)]
    rss_before = rss_kib(live.pid("enclave"))

    async def go() -> list[tuple[int, dict]]:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            async with session.post(live.proxy_url + "/v1/seal-load", json=body) as r:
                assert r.status == 200, await r.text()

            async def one(message: bytes) -> tuple[int, dict]:
                payload = {"name": "load-key", "message": base64.b64encode(message).decode()}
                async with session.post(live.proxy_url + "/v1/hmac", json=payload) as r:
                    return r.status, await r.json()

            return await asyncio.gather(*(one(m) for m in messages))

    start = time.monotonic()
    results = asyncio.run(go())
    elapsed = time.monotonic() - start
    failures = [(s, b) for s, b in results if s != 200]
    assert not failures, f"{len(failures)} failed, first: {failures[:3]}"
    for message, (_, answer) in zip(messages, results, strict=True):
        expected = hmac.new(key, message, hashlib.sha256).digest()
        assert base64.b64decode(answer["mac"]) == expected
    growth = rss_kib(live.pid("enclave")) - rss_before
    assert growth < 64 * 1024, f"enclave RSS grew by {growth} KiB"
    print(f"{CONCURRENT} concurrent requests in {elapsed:.2f} s; enclave RSS +{growth} KiB")
