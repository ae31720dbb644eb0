"""Acceptance: the simulated NSM device runs as its own process; NsmClient talks to it over
NITRO_NSM_SOCKET exactly as it talks to /dev/nsm, and its documents verify with the test root."""

from __future__ import annotations

import asyncio
import json
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.document import parse_document
from attestation.errors import DebugEnclaveError, UntrustedRootError
from attestation.pcr import ZERO_PCR, extend, pcr3_from_role_arn, pcr4_from_instance_id
from attestation.policy import Policy
from attestation.testpki import TestPKI
from attestation.verifier import verify
from enclave.nsm import NSM_SOCKET_ENV, NsmClient, NsmError
from simulator.measure import measure_enclave_code
from simulator.nsm import NsmServerLimits, SimulatedNsm, serve_nsm

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROLE = "arn:aws:iam::123456789012:role/Webserver"
INSTANCE = "i-1234567890abcdef0"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class NsmProcess:
    """``python -m simulator.nsm`` as a child process, stopped with SIGTERM."""

    def __init__(self, workdir: Path, pki_dir: Path, source: Path, *extra: str) -> None:
        self.socket = workdir / f"nsm-{len(list(workdir.iterdir()))}.sock"
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "simulator.nsm",
                "--socket", str(self.socket),
                "--pki", str(pki_dir),
                "--enclave-source", str(source),
                *extra,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self.ready = self._read_ready()

    def _read_ready(self) -> dict:
        deadline = time.monotonic() + READY_TIMEOUT
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if readable:
                line = self.proc.stdout.readline()
                if not line:
                    break
                return json.loads(line)
            if self.proc.poll() is not None:
                break
        self.proc.kill()
        _, err = self.proc.communicate(timeout=STOP_TIMEOUT)
        raise AssertionError(f"simulated NSM did not start: {err.decode(errors='replace')}")

    def client(self) -> NsmClient:
        return NsmClient()

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=STOP_TIMEOUT)
            raise
        return self.proc.returncode, err.decode(errors="replace")


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="nsm", dir="/tmp"))  # short: AF_UNIX paths max 107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(workdir) -> TestPKI:
    pki = TestPKI.generate()
    pki.save(workdir / "pki")
    return pki


@pytest.fixture(scope="module")
def enclave_copy(workdir) -> Path:
    dst = workdir / "src" / "enclave"
    shutil.copytree(REPO / "enclave", dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


@pytest.fixture(scope="module")
def device(workdir, pki, enclave_copy):
    proc = NsmProcess(
        workdir, workdir / "pki", enclave_copy, "--role-arn", ROLE, "--instance-id", INSTANCE
    )
    yield proc
    proc.stop()


@pytest.fixture
def client(device, monkeypatch) -> NsmClient:
    monkeypatch.setenv(NSM_SOCKET_ENV, str(device.socket))
    return NsmClient()


def test_documents_verify_against_the_test_root_only(client, device, pki, enclave_copy):
    raw = client.attestation(nonce=b"fresh nonce", user_data=b"app v1", public_key=b"der key")
    doc = verify(raw, Policy(nonce=b"fresh nonce"), roots=[pki.root_certificate])
    measured = measure_enclave_code(enclave_copy)
    assert [doc.pcrs[i] for i in (0, 1, 2)] == [measured[i] for i in (0, 1, 2)]
    assert doc.pcrs[3] == pcr3_from_role_arn(ROLE)
    assert doc.pcrs[4] == pcr4_from_instance_id(INSTANCE)
    assert sorted(doc.pcrs) == list(range(16))
    assert doc.module_id == device.ready["module_id"] and doc.module_id.startswith(INSTANCE)
    assert device.ready["pcrs"]["0"] == measured[0].hex()
    assert abs(doc.datetime.timestamp() - time.time()) < 60
    with pytest.raises(UntrustedRootError) as info:
        verify(raw)  # the pinned AWS root only
    assert info.value.code == "untrusted-root"


def test_editing_enclave_code_changes_pcr0_and_pcr2_not_pcr1(
    workdir, pki, enclave_copy, client, monkeypatch
):
    before = parse_document(client.attestation()).pcrs
    edited = workdir / "edited" / "enclave"
    shutil.copytree(enclave_copy, edited)
    target = edited / "nsm" / "__init__.py"
    target.write_text(target.read_text().replace("NsmClient", "NsmClient ", 1))
    other = NsmProcess(workdir, workdir / "pki", edited, "--role-arn", ROLE)
    try:
        monkeypatch.setenv(NSM_SOCKET_ENV, str(other.socket))
        after = verify(NsmClient().attestation(), roots=[pki.root_certificate]).pcrs
    finally:
        assert other.stop()[0] == 0
    assert after[0] != before[0] and after[2] != before[2]
    assert after[1] == before[1] and after[3] == before[3]
    assert after[2] == measure_enclave_code(edited)[2]


def test_debug_enclave_has_zero_pcrs_and_is_refused(workdir, pki, enclave_copy, monkeypatch):
    dbg = NsmProcess(workdir, workdir / "pki", enclave_copy, "--debug", "--role-arn", ROLE)
    try:
        monkeypatch.setenv(NSM_SOCKET_ENV, str(dbg.socket))
        raw = NsmClient().attestation()
    finally:
        assert dbg.stop()[0] == 0
    with pytest.raises(DebugEnclaveError) as info:
        verify(raw, roots=[pki.root_certificate])
    assert info.value.code == "debug-enclave"
    doc = verify(raw, Policy(allow_debug=True), roots=[pki.root_certificate])
    assert all(doc.pcrs[i] == ZERO_PCR for i in (0, 1, 2, 3))
    assert doc.pcrs[4] == pcr4_from_instance_id(pki.instance_id)  # default: the PKI's instance


def test_pcr_operations_over_the_socket(client):
    desc = client.describe_nsm()
    assert desc.max_pcrs == 32 and desc.digest == "SHA384"
    value = client.extend_pcr(23, b"config")
    assert value == extend(ZERO_PCR, b"config")
    client.lock_pcr(23)
    assert client.describe_pcr(23).locked
    for index, code in ((23, "ReadOnlyIndex"), (2, "ReadOnlyIndex"), (40, "InvalidIndex")):
        with pytest.raises(NsmError) as info:
            client.extend_pcr(index, b"x")
        assert info.value.nsm_code == code
    assert parse_document(client.attestation()).pcrs[23] == value
    assert len(client.get_random(1000)) == 1000


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def _recv_frame(sock: socket.socket) -> bytes | None:
    header = sock.recv(4, socket.MSG_WAITALL)
    if not header:
        return None
    (n,) = struct.unpack(">I", header)
    return sock.recv(n, socket.MSG_WAITALL)


def _raw_connection(device) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(device.socket))
    return sock


def test_protocol_abuse_is_answered_and_bounded(device, client):
    with _raw_connection(device) as sock:  # garbage, then a good request on the same connection
        sock.sendall(_frame(b"\xff\xfe garbage"))
        assert cbor2.loads(_recv_frame(sock)) == {"Error": "InvalidOperation"}
        sock.sendall(_frame(cbor2.dumps("DescribeNSM")))
        assert "DescribeNSM" in cbor2.loads(_recv_frame(sock))
    with _raw_connection(device) as sock:  # a frame over the device limit
        sock.sendall(struct.pack(">I", 1 << 30))
        assert cbor2.loads(_recv_frame(sock)) == {"Error": "InputTooLarge"}
        assert _recv_frame(sock) is None  # and the connection is closed
    stalled = _raw_connection(device)  # half a header, then nothing: must not block others
    try:
        stalled.sendall(b"\x00\x00")
        assert client.describe_nsm().max_pcrs == 32
    finally:
        stalled.close()


def test_concurrent_clients(client, pki):
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(5):
                client.extend_pcr(30, b"t")
            nonce = bytes([i]) * 8
            raw = client.attestation(nonce=nonce)
            verify(raw, Policy(nonce=nonce), roots=[pki.root_certificate])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    expected = ZERO_PCR
    for _ in range(30):
        expected = extend(expected, b"t")
    assert client.describe_pcr(30).data == expected


def test_sigterm_stops_cleanly(workdir, enclave_copy, pki):
    proc = NsmProcess(workdir, workdir / "pki", enclave_copy)
    assert proc.socket.exists()
    code, err = proc.stop()
    assert code == 0 and "Traceback" not in err
    assert not proc.socket.exists()


def test_bad_arguments_exit_with_a_message(workdir):
    out = subprocess.run(
        [
            sys.executable, "-m", "simulator.nsm",
            "--socket", str(workdir / "x.sock"),
            "--pki", str(workdir / "pki"),
            "--enclave-source", str(workdir / "no-such-dir"),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2
    assert "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_empty_pki_directory_gets_a_fresh_chain(workdir, enclave_copy, monkeypatch):
    fresh = workdir / "fresh-pki"
    proc = NsmProcess(workdir, fresh, enclave_copy)
    try:
        monkeypatch.setenv(NSM_SOCKET_ENV, str(proc.socket))
        raw = NsmClient().attestation()
    finally:
        assert proc.stop()[0] == 0
    loaded = TestPKI.load(fresh)
    assert Path(proc.ready["root_pem"]) == fresh / "root.pem"
    verify(raw, roots=[loaded.root_certificate])


# -- serve_nsm in-process: limits ---------------------------------------------------------------


def _run_with_server(limits: NsmServerLimits, scenario) -> None:
    d = Path(tempfile.mkdtemp(prefix="nsmi", dir="/tmp"))
    path = d / "s"
    nsm = SimulatedNsm(TestPKI.generate(), pcrs={}, module_id="i-0-enc0")

    async def main() -> None:
        server = await serve_nsm(nsm, path, limits=limits)
        try:
            await asyncio.wait_for(scenario(path), 10)
        finally:
            server.close()

    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_slow_request_body_is_dropped_after_the_read_timeout():
    async def scenario(path: Path) -> None:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(struct.pack(">I", 10) + b"ab")
        await writer.drain()
        start = time.monotonic()
        assert await reader.read() == b""  # closed by the server
        assert time.monotonic() - start < 2
        writer.close()

    _run_with_server(NsmServerLimits(read_timeout=0.2), scenario)


def test_an_idle_connection_is_closed():
    async def scenario(path: Path) -> None:
        reader, writer = await asyncio.open_unix_connection(str(path))
        assert await asyncio.wait_for(reader.read(), 3) == b""
        writer.close()

    _run_with_server(NsmServerLimits(idle_timeout=0.2), scenario)


def test_connections_beyond_the_limit_are_closed():
    async def scenario(path: Path) -> None:
        r1, w1 = await asyncio.open_unix_connection(str(path))
        await asyncio.sleep(0.05)
        r2, w2 = await asyncio.open_unix_connection(str(path))
        assert await asyncio.wait_for(r2.read(), 3) == b""
        w1.write(_frame(cbor2.dumps("DescribeNSM")))
        header = await r1.readexactly(4)
        body = await r1.readexactly(struct.unpack(">I", header)[0])
        assert "DescribeNSM" in cbor2.loads(body)
        w1.close()
        w2.close()

    _run_with_server(NsmServerLimits(max_connections=1), scenario)


def test_a_stale_socket_is_replaced_but_other_files_are_not():
    d = Path(tempfile.mkdtemp(prefix="nsms", dir="/tmp"))
    nsm = SimulatedNsm(TestPKI.generate(), pcrs={}, module_id="i-0-enc0")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(d / "s"))
    stale.close()  # leaves the socket file behind
    (d / "f").write_text("not a socket")

    async def main() -> None:
        server = await serve_nsm(nsm, d / "s")
        server.close()
        with pytest.raises(FileExistsError):
            await serve_nsm(nsm, d / "f")

    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- property: any byte stream on the device socket gets well-formed frames or a close ----------


@pytest.fixture(scope="module")
def threaded_server():
    """serve_nsm on a loop in a background thread, for many short blocking-socket examples."""
    d = Path(tempfile.mkdtemp(prefix="nsmh", dir="/tmp"))
    path = d / "s"
    nsm = SimulatedNsm(TestPKI.generate(), pcrs={}, module_id="i-0-enc0")
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    async def start() -> None:
        holder["server"] = await serve_nsm(nsm, path, limits=NsmServerLimits(idle_timeout=2))
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()))
    thread.start()
    assert started.wait(10)
    yield path

    async def stop() -> None:
        holder["server"].close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        loop.stop()

    asyncio.run_coroutine_threadsafe(stop(), loop)
    thread.join(10)
    loop.close()
    shutil.rmtree(d, ignore_errors=True)


_valid_frames = st.sampled_from(
    [cbor2.dumps("DescribeNSM"), cbor2.dumps({"DescribePCR": {"index": 3}}), b"\xff", b""]
).map(_frame)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_valid_frames | st.binary(max_size=40), max_size=5).map(b"".join))
def test_any_byte_stream_gets_frames_then_a_close(threaded_server, stream):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(threaded_server))
        sock.sendall(stream)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    pos = 0
    while pos < len(received):  # every answer is one whole frame of CBOR
        (n,) = struct.unpack(">I", received[pos : pos + 4])
        answer = cbor2.loads(received[pos + 4 : pos + 4 + n])
        assert isinstance(answer, str | dict)
        pos += 4 + n
    assert pos == len(received)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # still serving
        sock.settimeout(5)
        sock.connect(str(threaded_server))
        sock.sendall(_frame(cbor2.dumps("DescribeNSM")))
        assert "DescribeNSM" in cbor2.loads(_recv_frame(sock))
