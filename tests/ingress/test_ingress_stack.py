"""Attested HTTPS end to end on the local stack: a Starlette app in the simulated enclave,
reached through `python -m parent ingress` with curl, httpx and `attestation connect`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from attestation import Verifier, load_root_pem
from attestation.connect import Expectations, split_url
from attestation.errors import PublicKeyMismatchError
from simulator.mitm import TlsMitm
from simulator.stack import Stack, StackConfig

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parent / "_apps"
MIB = 1024 * 1024
BIG = 10 * MIB
MARKER = b"ingress-plaintext-marker-7f3a"
PY = sys.executable


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    sys.path.insert(0, str(APPS))  # where `simulator up` would find the module
    state = tmp_path_factory.mktemp("ingress-stack")
    s = Stack(StackConfig(state_dir=state, asgi="ingress_testapp:app"))
    try:
        info = s.start()
        yield s, info
    finally:
        s.stop()
        sys.path.remove(str(APPS))


@pytest.fixture(scope="module")
def expect(stack) -> Expectations:
    _, info = stack
    root = load_root_pem(Path(info["root_pem"]).read_bytes())
    return Expectations(verifier=Verifier([root]),
                        pcrs={i: info["pcrs"][str(i)] for i in (0, 1, 2)})


def curl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return subprocess.run(["curl", "-sS", "-k", "--max-time", str(int(timeout)), *args],
                          capture_output=True, timeout=timeout + 10)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "attestation", *args], capture_output=True, text=True,
                          timeout=120)


def pattern(n: int) -> bytes:
    block = bytes(range(256)) * 256
    return (block * (n // len(block) + 1))[:n]


def test_stack_json_has_ingress_url_and_app_is_measured(stack):
    s, info = stack
    assert info["ingress_url"].startswith("https://127.0.0.1:")
    on_disk = json.loads((s.state / "stack.json").read_text())
    assert on_disk["ingress_url"] == info["ingress_url"]
    from simulator.measure import measure_image_root

    image = measure_image_root(s.run_dir / "enclave-image")
    assert {str(i): v.hex() for i, v in image.pcrs.items()} == {
        k: info["pcrs"][k] for k in ("0", "1", "2")}
    assert "rootfs/app/ingress_testapp/__init__.py" in {e.path for e in image.listing}


def test_curl_reaches_the_app_and_streams_10_mib_both_ways(stack, tmp_path):
    _, info = stack
    url = info["ingress_url"]
    hello = curl(url + "/")
    assert hello.returncode == 0 and MARKER in hello.stdout
    body = tmp_path / "body.bin"
    body.write_bytes(os.urandom(BIG))
    up = curl("--data-binary", f"@{body}", "-H", "content-type: application/octet-stream",
              url + "/upload")
    assert json.loads(up.stdout) == {"size": BIG,
                                     "sha256": hashlib.sha256(body.read_bytes()).hexdigest()}
    echoed = tmp_path / "echoed.bin"
    both = curl("--data-binary", f"@{body}", "-o", str(echoed), url + "/echo")
    assert both.returncode == 0 and echoed.read_bytes() == body.read_bytes()
    down = curl(f"{url}/download?n={BIG}")
    assert down.stdout == pattern(BIG)


def test_the_app_cannot_override_the_attestation_route(stack):
    _, info = stack
    answer = curl("-D", "-", info["ingress_url"] + "/.well-known/nitro-attestation?nonce=0011")
    head, _, body = answer.stdout.partition(b"\r\n\r\n")
    assert b"application/cbor" in head.lower() and body[:1] == b"\x84"


def test_httpx_attested_client_streams_both_ways(stack, expect):
    from attestation.https import attested_client

    _, info = stack
    with attested_client(info["ingress_url"], expect, timeout=120) as client:
        data = os.urandom(BIG)

        def chunks():
            for i in range(0, len(data), MIB):
                yield data[i : i + MIB]

        got = bytearray()
        with client.stream("POST", "/echo", content=chunks()) as response:
            assert response.status_code == 200
            for part in response.iter_bytes():
                got += part
        assert got == data
        assert client.get("/toolkit").json()["app"] == "sealed-secrets"
        assert client.attested.attestations == 1
        assert client.attested.document.pcrs[0].hex() == info["pcrs"]["0"]


def test_an_asgi_handler_decrypts_with_attested_kms(stack, expect):
    import boto3

    from attestation.https import attested_client
    from parent.key_policy import key_policy, select_pcrs

    _, info = stack
    creds = info["credentials"]

    def kms(who: str):
        c = creds[who]
        return boto3.client("kms", endpoint_url=info["kms_url"], region_name=info["region"],
                            aws_access_key_id=c["access_key_id"],
                            aws_secret_access_key=c["secret_access_key"])

    policy = key_policy(pcrs=select_pcrs({int(i): v for i, v in info["pcrs"].items()}, [0, 1, 2]),
                        enclave_role=creds["parent"]["principal"],
                        admin=creds["operator"]["principal"])
    operator = kms("operator")
    key_id = operator.create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
    secret = os.urandom(48)
    blob = operator.encrypt(KeyId=key_id, Plaintext=secret,
                            EncryptionContext={"app": "ingress-test"})["CiphertextBlob"]
    with attested_client(info["ingress_url"], expect, timeout=60) as client:
        answer = client.post("/kms-digest", content=blob)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"sha256": hashlib.sha256(secret).hexdigest()}


def test_async_client_many_connections_one_attestation(stack, expect):
    from attestation.https import attested_async_client

    _, info = stack

    async def scenario():
        async with attested_async_client(info["ingress_url"], expect, timeout=60) as client:
            answers = await asyncio.gather(*[client.get("/") for _ in range(16)])
            return [a.status_code for a in answers], client.attested.attestations

    statuses, attestations = asyncio.run(scenario())
    assert statuses == [200] * 16 and attestations == 1


def test_connect_cli_binds_and_gets(stack):
    _, info = stack
    pcrs = [f"--pcr={i}={info['pcrs'][str(i)]}" for i in (0, 1, 2)]
    ok = cli("connect", info["ingress_url"], "--root", info["root_pem"], *pcrs, "--json",
             "--max-age", "60", "--get", "/")
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["valid"] and result["bound"] and MARKER.decode() in result["response"]["body"]
    wrong = cli("connect", info["ingress_url"], "--root", info["root_pem"], "--pcr",
                "0=" + "00" * 48, "--json")
    assert wrong.returncode == 1 and json.loads(wrong.stdout)["error"]["code"] == "pcr-mismatch"
    assert cli("connect", "http://127.0.0.1:1").returncode == 2
    assert cli("connect", "https://127.0.0.1:1", "--timeout", "2").returncode == 2


def test_mitm_with_another_certificate_is_refused(stack, expect):
    from attestation.https import attested_client

    _, info = stack
    host, port = split_url(info["ingress_url"])
    with TlsMitm(host, port) as mitm:
        refused = cli("connect", mitm.url, "--root", info["root_pem"], "--json")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert json.loads(refused.stdout)["error"]["code"] == "public-key-mismatch"
        with attested_client(mitm.url, expect) as client, pytest.raises(PublicKeyMismatchError):
            client.post("/upload", content=b"secret-request-body-91c2")
        assert b"secret-request-body-91c2" not in mitm.seen  # never sent before the check
        assert b"/upload" not in mitm.seen


def test_pinned_client_refuses_a_later_connection_with_another_cert(stack, expect):
    from attestation.https import attested_client

    _, info = stack
    host, port = split_url(info["ingress_url"])
    with TlsMitm(host, port) as mitm, attested_client(info["ingress_url"], expect) as client:
        assert client.get("/").status_code == 200
        client._transport._pool.close()  # type: ignore[attr-defined]
        client._transport.guard.host = f"127.0.0.1:{mitm.port}"  # type: ignore[attr-defined]
        with pytest.raises(PublicKeyMismatchError):
            client.get(mitm.url + "/upload")
        assert client.attested.attestations == 1


# -- what the parent sees: TLS records only ------------------------------------------------------


class RecordingRelay:
    """Client -> this -> parent ingress: keeps every byte both ways (what the parent sees)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = bytearray()
        self.down = bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib_suppress():
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
                threading.Thread(target=self._pipe, args=(client, upstream, self.up),
                                 daemon=True).start()
                threading.Thread(target=self._pipe, args=(upstream, client, self.down),
                                 daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, log: bytearray) -> None:
        with contextlib_suppress():
            while data := src.recv(65536):
                log += data
                dst.sendall(data)
        with contextlib_suppress():
            dst.shutdown(socket.SHUT_WR)


def contextlib_suppress():
    import contextlib

    return contextlib.suppress(OSError)


def tls_records(stream: bytes) -> list[int]:
    """Content types of the TLS records making up ``stream`` (AssertionError otherwise)."""
    types, i = [], 0
    while i < len(stream):
        assert len(stream) - i >= 5, "a truncated record header"
        kind, major, minor, length = stream[i], stream[i + 1], stream[i + 2], int.from_bytes(
            stream[i + 3 : i + 5], "big")
        assert kind in (20, 21, 22, 23), f"not a TLS record type: {kind} at {i}"
        assert major == 3 and minor in (1, 3), f"not a TLS version at {i}"
        assert length <= 2**14 + 256, f"record of {length} bytes at {i}"
        types.append(kind)
        i += 5 + length
    return types


def test_the_parent_relays_tls_records_only(stack, expect):
    from attestation.https import attested_client

    _, info = stack
    spy = RecordingRelay(split_url(info["ingress_url"]))
    secret = MARKER + os.urandom(16).hex().encode()
    with attested_client(f"https://127.0.0.1:{spy.port}", expect) as client:
        assert client.post("/echo", content=secret * 1000).content == secret * 1000
        assert MARKER in client.get("/").content
    time.sleep(0.5)
    assert len(spy.up) > 16000 and len(spy.down) > 16000
    assert 23 in tls_records(bytes(spy.up)) and 23 in tls_records(bytes(spy.down))
    for seen in (spy.up, spy.down):
        assert MARKER not in seen and b"HTTP/1.1" not in seen and b"/echo" not in seen


# -- hostile clients do not block others --------------------------------------------------------


def test_hostile_clients_do_not_block_others(stack, expect):
    from attestation.https import attested_client

    _, info = stack
    target = split_url(info["ingress_url"])
    hostile: list[socket.socket] = []
    try:
        for _ in range(1000):  # idle: connect, say nothing
            hostile.append(socket.create_connection(target, timeout=10))
        for _ in range(20):  # garbage instead of a ClientHello
            s = socket.create_connection(target, timeout=10)
            s.sendall(os.urandom(4096))
            hostile.append(s)
        slow = []
        for _ in range(20):  # slowloris: a TLS record header, then a byte now and then
            s = socket.create_connection(target, timeout=10)
            s.sendall(b"\x16\x03\x01\x02\x00")
            slow.append(s)
            hostile.append(s)
        start = time.monotonic()
        with attested_client(info["ingress_url"], expect, timeout=60) as client:
            for s in slow:
                s.sendall(b"\x01")
            assert client.get("/").status_code == 200
            data = os.urandom(MIB)
            assert client.post("/echo", content=data).content == data
        assert curl(info["ingress_url"] + "/").returncode == 0
        assert time.monotonic() - start < 60  # generous: the machine is shared
    finally:
        for s in hostile:
            s.close()


def test_garbage_tls_gets_closed_not_hung(stack):
    _, info = stack
    s = socket.create_connection(split_url(info["ingress_url"]), timeout=30)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plaintext HTTP to a TLS port
    answer = b""
    with contextlib_suppress():
        while chunk := s.recv(4096):
            answer += chunk
    s.close()
    assert MARKER not in answer  # closed (or a TLS alert), never served in the clear
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(split_url(info["ingress_url"]), timeout=30) as raw, \
            ctx.wrap_socket(raw) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert MARKER in tls.recv(65536) + tls.recv(65536)
