"""Parent ingress and enclave listener in one process (simulated vsock): PROXY v2 gives the app
the client's address, the connection bound holds, and no plaintext path exists."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from enclave.app import App
from enclave.ingress import IngressLimits, make_identity, start_ingress
from enclave.transport import VsockAddress
from parent.ingress import Ingress
from parent.ingress import IngressLimits as ParentLimits

CID = 21


async def client_app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps({"client": list(scope["client"]) if scope.get("client") else None,
                       "scheme": scope["scheme"]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def running(tmp_path, *, proxy_protocol: bool, max_connections: int = 4096,
            limits: IngressLimits | None = None) -> Iterator[Ingress]:
    sim = tmp_path / "vsock"
    sim.mkdir(mode=0o700)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    async def start():
        enclave = await start_ingress(
            client_app, App("relay-test", "1", builtins=False), make_identity(), port=5443,
            limits=limits or IngressLimits(), sim_dir=sim, sim_cid=CID,
            proxy_protocol=proxy_protocol)
        parent = Ingress(VsockAddress(CID, 5443), host="127.0.0.1", port=0,
                         limits=ParentLimits(max_connections=max_connections),
                         proxy_protocol=proxy_protocol, sim_dir=sim)
        await parent.start()
        return enclave, parent

    enclave, parent = run(start())
    try:
        yield parent
    finally:
        run(parent.close())
        run(enclave.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def test_proxy_protocol_gives_the_app_the_client_address(tmp_path):
    with running(tmp_path, proxy_protocol=True) as parent:
        with httpx.Client(verify=False, timeout=30) as client:
            answer = client.get(parent.url + "/client").json()
        assert answer["scheme"] == "https"
        assert answer["client"][0] == "127.0.0.1" and answer["client"][1] > 0


def test_without_proxy_protocol_the_client_is_unknown(tmp_path):
    with running(tmp_path, proxy_protocol=False) as parent, \
            httpx.Client(verify=False, timeout=30) as client:
        assert client.get(parent.url + "/client").json()["client"] in (None, ["", 0])


def test_garbage_instead_of_a_proxy_header_is_cut(tmp_path):
    with running(tmp_path, proxy_protocol=True) as parent:
        host, port = "127.0.0.1", parent.port
        with socket.create_connection((host, port), timeout=30) as s:
            s.sendall(b"\x16\x03\x01\x00\x05hello")  # parent adds a header: the TLS fails
            s.settimeout(30)
            with contextlib.suppress(OSError):  # cut by the enclave: EOF, reset or an alert
                s.recv(100)
        with httpx.Client(verify=False, timeout=30) as client:
            assert client.get(parent.url + "/client").status_code == 200


def test_connections_over_the_bound_are_closed_at_once(tmp_path):
    with running(tmp_path, proxy_protocol=False, max_connections=3) as parent:
        held = [socket.create_connection(("127.0.0.1", parent.port), timeout=10)
                for _ in range(3)]
        time.sleep(0.5)
        extra = socket.create_connection(("127.0.0.1", parent.port), timeout=10)
        extra.settimeout(10)
        with pytest.raises(ConnectionResetError):
            data = extra.recv(10)
            if data == b"":
                raise ConnectionResetError
        assert parent.refused >= 1
        for s in held:
            s.close()
        extra.close()
        time.sleep(0.5)
        with httpx.Client(verify=False, timeout=30) as client:
            assert client.get(parent.url + "/client").status_code == 200


def test_enclave_unreachable_is_counted_not_hung(tmp_path):
    with running(tmp_path, proxy_protocol=False) as parent:
        parent.enclave = VsockAddress(CID + 1, 5443)
        parent.limits = ParentLimits(connect_timeout_s=0.5)
        with socket.create_connection(("127.0.0.1", parent.port), timeout=10) as s:
            s.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(10) == b""
        assert parent.failed == 1


@pytest.mark.parametrize("proxy_protocol", [False, True])
def test_a_stalled_handshake_is_cut_at_the_named_bound(tmp_path, proxy_protocol):
    limits = IngressLimits(handshake_timeout_s=1.0, proxy_header_timeout_s=1.0)
    with running(tmp_path, proxy_protocol=proxy_protocol, limits=limits) as parent, \
            socket.create_connection(("127.0.0.1", parent.port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello that never completes
        s.settimeout(20)
        start = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            while s.recv(4096):
                pass
        assert time.monotonic() - start < 15  # cut by the enclave, not by our timeout
