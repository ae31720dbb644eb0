"""Issue 9 item 1 on the real processes: an unauthenticated body of colliding big-integer
CBOR keys (about 1 MiB, the review's attack) is refused in well under a second, and the
proxy's /health stays fast while such bodies keep arriving."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
import cbor2
import pytest
from reliability_support import LiveStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ADVERSARIAL_BYTES = (1 << 20) - 1024  # under the e2e size limit, so it reaches the decoder
REFUSED_WITHIN_S = 1.0  # "well under a second": the old decoder needed about a minute
HEALTH_WITHIN_S = 1.0  # generous; /health takes ~10 ms (the review saw 503 for 6.5 s)
ATTACK_S = 4.0
_P61 = 2**61 - 1  # Python hashes an int n as n mod (2**61 - 1): these keys all collide


def colliding_int_map(size: int) -> bytes:
    entries, total, k = [], 0, 1
    while total < size - 64:
        key = cbor2.dumps(7 + k * _P61 * 2**64)  # a tag-2 bignum
        entries.append(key + b"\x00")
        total += len(key) + 1
        k += 1
    return b"\xba" + len(entries).to_bytes(4, "big") + b"".join(entries)


def test_colliding_keys_are_refused_fast_and_health_stays_fast(live: LiveStack) -> None:
    body = {"sealed": base64.b64encode(colliding_int_map(ADVERSARIAL_BYTES)).decode()}
    url = live.proxy_url

    async def go() -> tuple[list[tuple[int, str, float]], list[tuple[int, float]]]:
        refusals: list[tuple[int, str, float]] = []
        health: list[tuple[int, float]] = []
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            stop = time.monotonic() + ATTACK_S

            async def attacker() -> None:
                while time.monotonic() < stop:
                    start = time.perf_counter()
                    async with session.post(url + "/e2e", json=body) as r:
                        answer = await r.json()
                    code = answer.get("error", {}).get("code", "")
                    refusals.append((r.status, code, time.perf_counter() - start))

            async def prober() -> None:
                await asyncio.sleep(0.2)
                while time.monotonic() < stop:
                    start = time.perf_counter()
                    async with session.get(url + "/health") as r:
                        await r.read()
                    health.append((r.status, time.perf_counter() - start))
                    await asyncio.sleep(0.1)

            await asyncio.gather(attacker(), attacker(), prober())
        return refusals, health

    refusals, health = asyncio.run(go())
    assert refusals and health
    assert {(s, c) for s, c, _ in refusals} == {(400, "e2e-malformed")}, refusals[:3]
    slowest = max(t for _, _, t in refusals)
    assert slowest < REFUSED_WITHIN_S, f"refusal took {slowest:.2f} s"
    assert all(s == 200 for s, _ in health), health
    worst = max(t for _, t in health)
    assert worst < HEALTH_WITHIN_S, f"/health took {worst:.2f} s during the attack"
