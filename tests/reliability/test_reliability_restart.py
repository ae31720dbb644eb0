"""The enclave is killed (SIGKILL) in the middle of a load and started again: the proxy says
the enclave is down, recovers by itself, and no request ever gets a wrong answer — the ones
that fail get a clear, typed error."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import aiohttp
import pytest
from reliability_support import LiveStack

from parent._proxy_http import STATUS_FOR_KIND

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WORKERS = 32
CLEAR_FAILURES = {
    "enclave-unavailable",  # no connection / it broke under the request
    "enclave-timeout",
    "proxy-busy",
    "no-such-secret",  # the restarted enclave has not been given the secret again yet
}


@dataclass
class Tally:
    ok: int = 0
    wrong: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    unclear: list[str] = field(default_factory=list)
    ok_times: list[float] = field(default_factory=list)


def health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post(url: str, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_health(url: str, status: int, within: float) -> dict:
    end = time.monotonic() + within
    while True:
        got, body = health(url)
        if got == status:
            return body
        assert time.monotonic() < end, f"health stayed {got}: {body}"
        time.sleep(0.05)


def run_load(url: str, key: bytes, stop: threading.Event, tally: Tally) -> None:
    async def worker(session: aiohttp.ClientSession, w: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            message = f"w{w} n{n}".encode()
            body = {"name": "restart-key", "message": base64.b64encode(message).decode()}
            try:
                async with session.post(url + "/v1/hmac", json=body) as r:
                    status, answer = r.status, await r.json()
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.unclear.append(f"transport: {type(exc).__name__}")
                continue
            if status == 200:
                if base64.b64decode(answer["mac"]) == hmac.new(key, message,
                                                               hashlib.sha256).digest():
                    tally.ok += 1
                    tally.ok_times.append(time.monotonic())
                else:
                    tally.wrong.append(f"{message!r}")
            else:
                code = answer.get("error", {}).get("code")
                kind = answer.get("error", {}).get("kind")
                if code in CLEAR_FAILURES and status == STATUS_FOR_KIND.get(kind) in (404, 503):
                    tally.failures[code] = tally.failures.get(code, 0) + 1
                else:
                    tally.unclear.append(f"{status} {answer}")
                await asyncio.sleep(0.02)

    async def main() -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(worker(session, w) for w in range(WORKERS)))

    asyncio.run(main())


def test_enclave_killed_mid_load_and_restarted(live: LiveStack) -> None:
    url = live.proxy_url
    key, seal_body = live.sealed_hmac_body("restart-key")
    assert post(url, "/v1/seal-load", seal_body)[0] == 200
    tally = Tally()
    stop = threading.Event()
    load = threading.Thread(target=run_load, args=(url, key, stop, tally), daemon=True)
    load.start()
    try:
        time.sleep(1.0)
        ok_before_kill = tally.ok
        live.stack.child("enclave").process.kill()  # SIGKILL: no goodbye
        killed_at = time.monotonic()
        down = wait_health(url, 503, within=5)
        assert down["proxy"] == "ok" and down["enclave"] == "down"
        time.sleep(0.5)  # the load keeps hitting the proxy while the enclave is gone
        live.stack.restart_enclave("enclave")  # from this (main) thread
        wait_health(url, 200, within=10)
        # the new enclave lost its memory: seal the key again (credentials come within 5 s)
        deadline = time.monotonic() + 30
        while post(url, "/v1/seal-load", seal_body)[0] != 200:
            assert time.monotonic() < deadline, "could not seal the key into the new enclave"
            time.sleep(0.5)
        recovered_at = time.monotonic()
        time.sleep(1.0)
    finally:
        stop.set()
        load.join(60)
    assert not load.is_alive()
    assert not tally.wrong, f"wrong answers: {tally.wrong[:5]}"
    assert not tally.unclear, f"unclear failures: {tally.unclear[:5]}"
    assert ok_before_kill > 0
    assert any(t > recovered_at for t in tally.ok_times), "no success after recovery"
    assert tally.failures.get("enclave-unavailable", 0) > 0, tally.failures
    print(f"ok={tally.ok} failures={tally.failures} down for "
          f"{recovered_at - killed_at:.1f} s (kill -> secret re-sealed)")
