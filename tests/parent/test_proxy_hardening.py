"""Issue 9 item 3 on the proxy: one client's hostile JSON never costs other clients their
requests (the proxy refuses it before forwarding, with named limits)."""

from __future__ import annotations

import asyncio

import pytest
from test_proxy import make_app, running

from attestation import TestPKI

pytestmark = pytest.mark.timeout(90)
VICTIMS = 20


def nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = {"a": [value]}
    return value


@pytest.mark.parametrize(
    "hostile",
    [
        {"n": nested(50)},  # 100 levels: deeper than the enclave's CBOR limit (64)
        {"n": nested(32)},  # just over the proxy's own limit, HttpLimits.max_json_depth
        {"n": [0] * (65_536 + 1)},  # too many values (HttpLimits.max_json_items)
    ],
    ids=["depth-100", "depth-65", "values-65537"],
)
def test_hostile_json_is_refused_and_no_concurrent_victim_fails(
    pki: TestPKI, sim_dir: str, hostile: dict
) -> None:
    app = make_app(pki)
    hostile_copy = [hostile]

    async def go() -> None:
        hostile = hostile_copy[0]
        async with running(app, sim_dir) as r:
            victims = [
                asyncio.ensure_future(r.post("/v1/hold", {"s": 0.8})) for _ in range(VICTIMS)
            ]
            await asyncio.sleep(0.2)  # the victims are in flight on the pooled connections
            status, body, _ = await r.post("/v1/echo", hostile)
            code = body.get("error", {}).get("code") if isinstance(body, dict) else None
            del hostile_copy[:]  # keep pytest's failure report away from the deep value
            assert (status, code) == (400, "bad-json")
            results = await asyncio.gather(*victims)
            failed = [(s, b) for s, b, _ in results if s != 200]
            assert failed == [], f"{len(failed)} of {VICTIMS} victims failed: {failed[:3]}"
            status, body, _ = await r.post("/v1/echo", {"n": nested(10)})
            assert status == 200  # ordinary nesting still passes

    asyncio.run(go())


def test_health_shows_the_enclave_clock(pki: TestPKI, sim_dir: str) -> None:
    """Issue 9 item 20: /health carries the enclave's clock offset (null before any offer)."""
    app = make_app(pki)

    async def go() -> None:
        async with running(app, sim_dir) as r:
            status, health, _ = await r.get("/health")
            assert status == 200
            assert set(health["clock"]) >= {"offset_ms", "correction_ms", "drift_ms", "ok"}
            assert health["clock"]["ok"] is True

    asyncio.run(go())
