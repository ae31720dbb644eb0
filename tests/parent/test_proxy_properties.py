"""Property tests of the proxy's HTTP surface: any body on any route gets a JSON answer with a
typed error (never a 500, a traceback or a hang), and the JSON <-> bytes conversions hold."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation import TestPKI
from enclave.app import default_app
from enclave.nsm import NsmClient
from enclave.transport import VMADDR_CID_ANY, VsockAddress
from parent._proxy_http import STATUS_FOR_KIND, ProxyError, b64_field, to_json
from parent._proxy_pool import PoolLimits
from parent.proxy import ProxyConfig, build_app
from simulator.nsm import SimulatedNsm

pytestmark = pytest.mark.timeout(120)
SHARED_FIXTURE = [HealthCheck.function_scoped_fixture]  # the fixture is module-scoped, reused
ROUTES = ["/attestation", "/e2e", "/v1/sign", "/v1/hmac", "/v1/seal-load", "/v1/public-key",
          "/v1/envelope-decrypt", "/v1/seal-list", "/v1/nope", "/health", "/v1"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=15,
)
field_names = st.sampled_from(["name", "message", "nonce", "sealed", "kind", "ciphertext",
                               "public_key", "user_data", "iv", "format", "x"])
bodies = st.one_of(
    json_values,
    st.dictionaries(field_names, json_values | st.text(alphabet="AB+/=", max_size=12),
                    max_size=4),
)


@pytest.fixture(scope="module")
def proxy_url() -> Iterator[str]:
    """The default app (simulated NSM, no KMS needed for these calls) behind the proxy, run
    in a background thread's event loop."""
    tmp = tempfile.TemporaryDirectory(prefix="proxyprop-")
    sim = os.path.join(tmp.name, "v")
    old = os.environ.get("NITRO_VSOCK_SIM_DIR")
    os.environ["NITRO_VSOCK_SIM_DIR"] = sim
    pki = TestPKI.generate()
    nsm = SimulatedNsm(pki, pcrs={0: b"\x01" * 48}, module_id="i-0abc-enc0123")
    app = default_app(nsm=NsmClient(transport=nsm.handle))
    loop = asyncio.new_event_loop()
    state: dict = {}

    async def start() -> str:
        state["server"] = await app.serve(VsockAddress(VMADDR_CID_ANY, 5000), sim_cid=16)
        config = ProxyConfig(enclave=VsockAddress(16, 5000), pool=PoolLimits(size=1))
        runner = web.AppRunner(build_app(config), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        state["runner"] = runner
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    url = asyncio.run_coroutine_threadsafe(start(), loop).result(20)
    for _ in range(100):
        if http("GET", url + "/health", None)[0] == 200:
            break
    try:
        yield url
    finally:
        async def stop() -> None:
            await state["runner"].cleanup()
            state["server"].close()
            await state["server"].wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        app.close()
        if old is None:
            os.environ.pop("NITRO_VSOCK_SIM_DIR", None)
        else:
            os.environ["NITRO_VSOCK_SIM_DIR"] = old
        tmp.cleanup()


def http(method: str, url: str, data: bytes | None) -> tuple[int, object]:
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@settings(max_examples=120, deadline=None, suppress_health_check=SHARED_FIXTURE)
@given(route=st.sampled_from(ROUTES), body=bodies)
def test_any_json_body_gets_a_typed_answer(proxy_url: str, route: str, body: object) -> None:
    method = "GET" if route in ("/health", "/v1") else "POST"
    status, answer = http(method, proxy_url + route, json.dumps(body).encode())
    assert isinstance(answer, dict)
    if status != 200:
        assert status == STATUS_FOR_KIND[answer["error"]["kind"]], (status, answer)
        assert status != 500, answer  # never the proxy's or the enclave's own failure
        assert isinstance(answer["error"]["code"], str) and answer["request_id"]
        if route == "/attestation" and isinstance(body, dict) and (
            "public_key" in body or "user_data" in body
        ):
            assert answer["error"]["code"] == "forbidden-field"


@settings(max_examples=80, deadline=None, suppress_health_check=SHARED_FIXTURE)
@given(route=st.sampled_from(ROUTES[:8]), raw=st.binary(max_size=300))
def test_any_raw_body_gets_a_typed_answer(proxy_url: str, route: str, raw: bytes) -> None:
    status, answer = http("POST", proxy_url + route, raw)
    assert isinstance(answer, dict)
    assert status == 200 or answer["error"]["code"]
    assert status == 200 or status == STATUS_FOR_KIND[answer["error"]["kind"]]
    assert status != 500


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_base64_fields_round_trip(data: bytes) -> None:
    assert b64_field({"f": to_json(data)}, "f") == data


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_bad_base64_is_a_typed_error(text: str) -> None:
    try:
        base64.b64decode(text, validate=True)
    except Exception:
        with pytest.raises(ProxyError) as info:
            b64_field({"f": text}, "f")
        assert info.value.status == 400 and info.value.code == "bad-base64"


cbor_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=20) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(cbor_like)
def test_results_always_become_json(value: object) -> None:
    json.dumps(to_json(value))
