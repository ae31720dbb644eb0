"""The enclave app framework over the real protocol and simulated vsock: registry, context,
deadlines, concurrency, typed errors, the attestation operation (and the attack on it), e2e."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from attestation import Policy, TestPKI, verify
from enclave import e2e
from enclave.app import App, AppLimits, HandlerError, app_user_data, default_app, load_app
from enclave.nsm import NsmClient
from enclave.protocol import ProtocolClient, RemoteError
from enclave.transport import VMADDR_CID_ANY, VsockAddress
from simulator.nsm import SimulatedNsm

CID, PORT = 16, 5000
PCR0 = bytes(range(48))
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.generate()


@pytest.fixture
def nsm(pki: TestPKI) -> SimulatedNsm:
    return SimulatedNsm(pki, pcrs={0: PCR0, 1: b"\x01" * 48}, module_id="i-0abc-enc0123")


@asynccontextmanager
async def serving(app: App) -> AsyncIterator[ProtocolClient]:
    """Serve ``app`` on a simulated vsock address and yield a connected client."""
    with tempfile.TemporaryDirectory(prefix="app-") as d:
        server = await app.serve(VsockAddress(VMADDR_CID_ANY, PORT), sim_dir=d, sim_cid=CID)
        client = await ProtocolClient.connect(VsockAddress(CID, PORT), sim_dir=d, deadline=5)
        try:
            yield client
        finally:
            await client.close()
            server.close()
            await server.wait_closed()
            app.close()


def run(coro_factory: Callable[[], Any]) -> Any:
    return asyncio.run(coro_factory())


def make_app(nsm: SimulatedNsm, **kwargs: Any) -> App:
    return App("test-app", "2.1", nsm=NsmClient(transport=nsm.handle), **kwargs)


# ---------------------------------------------------------------- registry and dispatch


def test_operations_get_a_context_and_typed_errors(nsm: SimulatedNsm) -> None:
    app = make_app(nsm)
    seen: dict[str, Any] = {}

    @app.operation("echo", bytes_fields=("data",))
    async def echo(ctx, body):
        seen.update(op=ctx.op, rid=ctx.request_id, e2e=ctx.end_to_end, left=ctx.remaining())
        return {"data": body["data"], "secrets": len(ctx.secrets)}

    @app.operation("fail")
    async def fail(ctx, body):
        raise HandlerError("my-code", "what went wrong")

    @app.operation("crash")
    async def crash(ctx, body):
        raise KeyError("internal detail that must not leak")

    async def go() -> None:
        async with serving(app) as client:
            assert await client.request("echo", {"data": b"\x00"}, timeout=5) == {
                "data": b"\x00",
                "secrets": 0,
            }
            assert seen["op"] == "echo" and seen["e2e"] is False and 0 < seen["left"] <= 15
            with pytest.raises(RemoteError) as info:
                await client.request("fail", None, timeout=5)
            assert (info.value.code, info.value.message) == ("my-code", "what went wrong")
            with pytest.raises(RemoteError) as info:
                await client.request("crash", None, timeout=5)
            assert info.value.code == "internal" and "detail" not in info.value.message
            with pytest.raises(RemoteError) as info:
                await client.request("no-such-op", None, timeout=5)
            assert info.value.code == "unknown-op"

    run(go)


def test_duplicate_and_bad_names_are_refused(nsm: SimulatedNsm) -> None:
    app = make_app(nsm)
    with pytest.raises(ValueError):
        app.operation("health")(lambda ctx, body: None)
    for bad in ("", "Sign", "seal_load", "a/b", "x" * 65, "-leading"):
        with pytest.raises(ValueError, match="bad operation name"):
            app.operation(bad)(lambda ctx, body: None)
    app.operation("x" * 64)(lambda ctx, body: None)  # the format's limit is allowed


def test_builtins_are_described(nsm: SimulatedNsm) -> None:
    app = default_app(nsm=NsmClient(transport=nsm.handle))
    names = {op["name"]: op for op in app.describe()["operations"]}
    for builtin in ("health", "describe", "attestation", "e2e", "set-credentials"):
        assert builtin in names
    for sealed in ("seal-load", "sign", "hmac", "envelope-decrypt", "public-key"):
        assert names[sealed]["http"] is True and names[sealed]["e2e"] is True
    assert names["set-credentials"]["http"] is False and names["set-credentials"]["e2e"] is False
    assert names["sign"]["bytes_fields"] == ["message"]


def test_deadline_exceeded_is_a_typed_error(nsm: SimulatedNsm) -> None:
    app = make_app(nsm)

    @app.operation("slow", deadline_s=0.2)
    async def slow(ctx, body):
        await asyncio.sleep(5)

    async def go() -> None:
        async with serving(app) as client:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(RemoteError) as info:
                await client.request("slow", None, timeout=5)
            assert info.value.code == "deadline-exceeded"
            assert loop.time() - start < 2
            assert (await client.request("health", {}, timeout=5))["status"] == "ok"

    run(go)


def test_concurrency_limit_answers_busy_and_health_still_works(nsm: SimulatedNsm) -> None:
    app = make_app(nsm, limits=AppLimits(max_concurrent=2, queue_timeout_s=0.2))
    release = asyncio.Event()

    @app.operation("hold")
    async def hold(ctx, body):
        await release.wait()
        return "done"

    async def go() -> None:
        async with serving(app) as client:
            held = [asyncio.ensure_future(client.request("hold", None, timeout=10))
                    for _ in range(2)]
            await asyncio.sleep(0.1)
            with pytest.raises(RemoteError) as info:
                await client.request("hold", None, timeout=5)
            assert info.value.code == "busy"
            health = await client.request("health", {}, timeout=5)  # not limited
            assert health["in_flight"] >= 2
            release.set()
            assert await asyncio.gather(*held) == ["done", "done"]

    run(go)


def test_many_concurrent_requests_are_all_answered(nsm: SimulatedNsm) -> None:
    app = make_app(nsm)

    @app.operation("double")
    async def double(ctx, body):
        await asyncio.sleep(0.001)
        return body * 2

    async def go() -> None:
        async with serving(app) as client:
            results = await asyncio.gather(
                *(client.request("double", i, timeout=20) for i in range(500))
            )
            assert results == [i * 2 for i in range(500)]

    run(go)


def test_load_app_by_module_path(nsm: SimulatedNsm) -> None:
    app = load_app("enclave.app:default_app")
    assert app.name == "sealed-secrets" and "sign" in app.operations
    with pytest.raises(ValueError):
        load_app("no-colon")
    with pytest.raises(TypeError):
        load_app("enclave.app:app_user_data")


def test_logs_carry_codes_not_payloads(nsm: SimulatedNsm, caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(nsm)
    marker = b"payload-marker-7f3a9c"

    @app.operation("fail")
    async def fail(ctx, body):
        raise HandlerError("refused", "no")

    async def go() -> None:
        async with serving(app) as client:
            with pytest.raises(RemoteError):
                await client.request("fail", {"x": marker}, timeout=5)

    with caplog.at_level(logging.DEBUG):
        run(go)
    text = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert "refused" in text
    assert marker.decode() not in text and marker.hex() not in text


# ---------------------------------------------------------------- attestation


def test_attestation_binds_nonce_enclave_key_and_app_identity(
    nsm: SimulatedNsm, pki: TestPKI
) -> None:
    app = make_app(nsm)

    async def go() -> bytes:
        async with serving(app) as client:
            return (await client.request("attestation", {"nonce": b"N" * 32}, timeout=5))[
                "document"
            ]

    document = run(go)
    doc = verify(
        document,
        Policy(pcrs={0: PCR0}, nonce=b"N" * 32, user_data=app_user_data("test-app", "2.1"),
               public_key=app.e2e_key.public_key_der),
        roots=[pki.root_certificate],
    )
    assert isinstance(serialization.load_der_public_key(doc.public_key), x25519.X25519PublicKey)


@pytest.mark.parametrize(
    "body",
    [
        {"nonce": b"N" * 16, "public_key": b"parent-chosen-key"},
        {"nonce": b"N" * 16, "user_data": b"parent-chosen-data"},
        {"public_key": b"k"},
    ],
)
def test_a_caller_cannot_get_a_document_for_its_own_key(
    nsm: SimulatedNsm, body: dict
) -> None:
    """The attack: the parent asks for a document carrying a key it holds. Refused."""
    app = make_app(nsm)
    attacker = x25519.X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if "public_key" in body:
        body = {**body, "public_key": attacker}

    async def go() -> None:
        async with serving(app) as client:
            with pytest.raises(RemoteError) as info:
                await client.request("attestation", body, timeout=5)
            assert info.value.code == "forbidden-field"

    run(go)


@pytest.mark.parametrize("body", [None, {}, {"nonce": b""}, {"nonce": "text"},
                                  {"nonce": b"x" * 513}, {"nonce": b"x", "extra": 1}, [1]])
def test_attestation_body_is_checked(nsm: SimulatedNsm, body: Any) -> None:
    app = make_app(nsm)

    async def go() -> None:
        async with serving(app) as client:
            with pytest.raises(RemoteError) as info:
                await client.request("attestation", body, timeout=5)
            assert info.value.code == "bad-request"

    run(go)


# ---------------------------------------------------------------- end to end


def test_e2e_dispatch_seals_results_and_errors(nsm: SimulatedNsm) -> None:
    app = make_app(nsm)

    @app.operation("add")
    async def add(ctx, body):
        assert ctx.end_to_end
        return body["a"] + body["b"]

    @app.operation("plain-only", e2e=False)
    async def plain_only(ctx, body):
        return "never through e2e"

    async def go() -> None:
        async with serving(app) as client:
            key = app.e2e_key.public_key_der
            sealed, opener = e2e.seal_request(key, b"nonce", "add", {"a": 2, "b": 3})
            reply = await client.request("e2e", {"sealed": sealed}, timeout=5)
            assert opener.open(reply["sealed"]) == {"ok": True, "result": 5}
            for op in ("plain-only", "set-credentials", "attestation", "e2e", "missing"):
                sealed, opener = e2e.seal_request(key, b"nonce", op, {})
                reply = await client.request("e2e", {"sealed": sealed}, timeout=5)
                assert opener.open(reply["sealed"])["error"]["code"] == "unknown-op"
            with pytest.raises(RemoteError) as info:  # replay: refused in the clear
                await client.request("e2e", {"sealed": sealed}, timeout=5)
            assert info.value.code == "e2e-replay"
            with pytest.raises(RemoteError) as info:
                await client.request("e2e", {"sealed": b"garbage"}, timeout=5)
            assert info.value.code == "e2e-malformed"

    run(go)


def test_bad_codes_and_stray_timeouts_become_internal(nsm: SimulatedNsm) -> None:
    app = make_app(nsm)

    @app.operation("bad-code")
    async def bad_code(ctx, body):
        raise HandlerError("Not A Code!", "x")

    @app.operation("own-timeout")
    async def own_timeout(ctx, body):
        await asyncio.wait_for(asyncio.sleep(1), 0.01)  # its own TimeoutError, not the deadline

    async def go() -> None:
        async with serving(app) as client:
            for op in ("bad-code", "own-timeout"):
                with pytest.raises(RemoteError) as info:
                    await client.request(op, None, timeout=5)
                assert info.value.code == "internal", op
            key = app.e2e_key.public_key_der
            sealed, opener = e2e.seal_request(key, b"nonce", "bad-code", None)
            reply = await client.request("e2e", {"sealed": sealed}, timeout=5)
            assert opener.open(reply["sealed"])["error"]["code"] == "internal"

    run(go)


def test_handler_deadline_derives_from_the_callers(tmp_path) -> None:
    """A request's timeout_ms (the caller's remaining budget) bounds the handler's deadline:
    the app answers deadline-exceeded within it, not after its own longer default."""
    import time

    from enclave.app import App
    from enclave.protocol import ProtocolClient, RemoteError, serve
    from enclave.transport import VMADDR_CID_ANY, VsockAddress

    app = App("deadline", "1", builtins=False)
    seen: list[float] = []

    @app.operation("hold", deadline_s=30.0)
    async def hold(ctx, body):  # type: ignore[no-untyped-def]
        seen.append(ctx.remaining())
        await asyncio.sleep(10)

    async def go() -> None:
        sim = {"sim_dir": str(tmp_path), "sim_cid": 16}
        server = await serve(VsockAddress(VMADDR_CID_ANY, 7001), app.protocol_handlers(), **sim)
        try:
            client = await ProtocolClient.connect(VsockAddress(16, 7001), sim_dir=str(tmp_path))
            async with client:
                start = time.monotonic()
                with pytest.raises((RemoteError, TimeoutError)) as info:
                    await client.request("hold", {}, timeout=0.5)
                assert time.monotonic() - start < 5
                if isinstance(info.value, RemoteError):
                    assert info.value.code in ("deadline-exceeded", "timeout")
                    assert info.value.kind == "unavailable"
        finally:
            server.close()
            app.close()

    asyncio.run(go())
    assert seen and seen[0] <= 0.5  # not the operation's 30 s
