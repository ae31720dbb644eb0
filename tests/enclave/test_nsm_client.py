"""NsmClient over its two transports: the /dev/nsm ioctl and the simulated-NSM socket.

There is no Nitro hardware here, so the ioctl is served by a stand-in of the kernel driver that
does what ``drivers/misc/nsm.c`` does with ``struct nsm_raw``: read the request from the user
address, write at most ``response.len`` bytes to the response address and write the length back.
Everything above it (struct layout, buffers, errno mapping) is the production code.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import tempfile
import threading
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation.pcr import ZERO_PCR, extend
from attestation.testpki import TestPKI
from enclave.nsm import (
    NSM_IOCTL_RAW,
    NSM_REQUEST_MAX_SIZE,
    NSM_RESPONSE_MAX_SIZE,
    NSM_SOCKET_ENV,
    DeviceTransport,
    NsmClient,
    NsmError,
    NsmUnavailableError,
    SocketTransport,
)
from enclave.nsm import _device as _nsm_device
from simulator.nsm import SimulatedNsm

_RAW = struct.Struct("=QQQQ")  # struct nsm_raw on a 64-bit kernel


class KernelDriverStandIn:
    """What the NSM driver does with one NSM_IOCTL_RAW call (LKML v7 nsm.c)."""

    def __init__(self, device, *, fail_errno: int | None = None) -> None:
        self.device = device  # callable bytes -> bytes, the virtio device
        self.fail_errno = fail_errno
        self.calls = 0

    def __call__(self, fd: int, request_code: int, arg, mutate: bool) -> int:
        self.calls += 1
        assert isinstance(fd, int) and fd >= 0
        if request_code != 0xC0200A00 or not mutate:
            raise OSError(errno.EINVAL, "bad ioctl")
        view = memoryview(arg).cast("B")
        assert len(view) == 32
        req_addr, req_len, resp_addr, resp_cap = _RAW.unpack(view)
        if req_len > NSM_REQUEST_MAX_SIZE:
            raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
        if self.fail_errno is not None:
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))
        answer = self.device(ctypes.string_at(req_addr, req_len))
        n = min(len(answer), resp_cap)
        ctypes.memmove(resp_addr, answer, n)
        struct.pack_into("=Q", view, 24, n)
        return 0


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.generate()


@pytest.fixture
def nsm(pki) -> SimulatedNsm:
    pcrs = {0: bytes([1]) * 48, 1: bytes([2]) * 48, 2: bytes([3]) * 48, 4: bytes([4]) * 48}
    return SimulatedNsm(pki, pcrs=pcrs, module_id="i-0123456789abcdef0-enc0123456789abcdef")


@pytest.fixture
def device_file(tmp_path) -> str:
    path = tmp_path / "nsm"
    path.write_bytes(b"")
    return str(path)


def test_ioctl_number_is_iowr_0x0a_0_of_a_32_byte_struct():
    assert NSM_IOCTL_RAW == 0xC0200A00
    assert ctypes.sizeof(_nsm_device._NsmRaw) == 32


def test_every_operation_over_the_ioctl(nsm, device_file, pki):
    driver = KernelDriverStandIn(nsm.handle)
    with NsmClient(DeviceTransport(device_file, ioctl=driver)) as client:
        assert client.describe_pcr(0).data == bytes([1]) * 48
        assert client.describe_pcr(16).locked is False
        assert client.extend_pcr(16, b"abc") == extend(ZERO_PCR, b"abc")
        client.lock_pcr(16)
        assert client.describe_pcr(16).locked is True
        client.lock_pcrs(18)
        assert client.describe_nsm().locked_pcrs == tuple(range(18))
        assert len(client.get_random(600)) == 600
        doc = client.attestation(nonce=b"n" * 1024, user_data=b"u" * 1024, public_key=b"k" * 1024)
        assert len(doc) > 6000  # the largest answer still fits the 12288-byte buffer
        with pytest.raises(NsmError) as info:
            client.extend_pcr(0, b"x")
        assert info.value.nsm_code == "ReadOnlyIndex"
    assert driver.calls >= 10


def test_truncated_answer_is_invalid_response(device_file):
    big = cbor2.dumps({"Attestation": {"document": bytes(NSM_RESPONSE_MAX_SIZE)}})
    driver = KernelDriverStandIn(lambda _req: big)
    with pytest.raises(NsmError) as info:
        NsmClient(DeviceTransport(device_file, ioctl=driver)).attestation()
    assert info.value.nsm_code == "InvalidResponse"


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (errno.EMSGSIZE, "InputTooLarge"),
        (errno.EIO, "InternalError"),
        (errno.ETIMEDOUT, "InternalError"),
    ],
)
def test_errno_mapping(device_file, err, code):
    driver = KernelDriverStandIn(lambda _req: b"", fail_errno=err)
    with pytest.raises(NsmError) as info:
        NsmClient(DeviceTransport(device_file, ioctl=driver)).describe_nsm()
    assert info.value.nsm_code == code


def test_oversized_request_never_reaches_the_driver(device_file):
    driver = KernelDriverStandIn(lambda _req: b"")
    transport = DeviceTransport(device_file, ioctl=driver)
    with pytest.raises(NsmError) as info:
        transport(bytes(NSM_REQUEST_MAX_SIZE + 1))
    assert info.value.nsm_code == "InputTooLarge"
    assert driver.calls == 0


def test_real_ioctl_on_a_file_that_is_not_the_device(device_file):
    # the production fcntl.ioctl: a regular file answers ENOTTY, which maps to InternalError
    with pytest.raises(NsmError) as info:
        NsmClient(DeviceTransport(device_file)).describe_nsm()
    assert info.value.nsm_code == "InternalError"


def test_closed_transport(device_file, nsm):
    client = NsmClient(DeviceTransport(device_file, ioctl=KernelDriverStandIn(nsm.handle)))
    client.close()
    client.close()
    with pytest.raises(NsmError) as info:
        client.describe_nsm()
    assert info.value.nsm_code == "InternalError"


# -- choosing the transport -------------------------------------------------------------------


def test_no_device_and_no_socket_gives_the_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(NSM_SOCKET_ENV, raising=False)
    with pytest.raises(NsmUnavailableError) as info:
        _nsm_device.default_transport(str(tmp_path / "nsm"))
    assert info.value.nsm_code == "DeviceUnavailable"
    assert str(info.value.message) == (
        "no /dev/nsm: not inside a Nitro Enclave; set NITRO_NSM_SOCKET to use the simulator"
    )
    if not os.path.exists("/dev/nsm"):
        with pytest.raises(NsmUnavailableError):
            NsmClient()


def test_env_selects_the_socket(monkeypatch, tmp_path):
    monkeypatch.setenv(NSM_SOCKET_ENV, str(tmp_path / "nsm.sock"))
    transport = _nsm_device.default_transport(str(tmp_path / "absent"))
    assert isinstance(transport, SocketTransport)
    assert transport.path == str(tmp_path / "nsm.sock")
    with pytest.raises(NsmUnavailableError) as info:  # nobody listens there
        NsmClient().describe_nsm()
    assert "not listening" in info.value.message


def test_device_present_selects_the_ioctl(monkeypatch, device_file):
    monkeypatch.delenv(NSM_SOCKET_ENV, raising=False)
    transport = _nsm_device.default_transport(device_file)
    assert isinstance(transport, DeviceTransport)
    transport.close()


# -- the socket transport against misbehaving servers -----------------------------------------


class _OneShotServer:
    """An AF_UNIX server thread that does ``behaviour(conn)`` for each connection."""

    def __init__(self, behaviour) -> None:
        self.dir = tempfile.mkdtemp(prefix="nsmt", dir="/tmp")
        self.path = str(Path(self.dir) / "s")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(4)
        self.sock.settimeout(5)
        self.behaviour = behaviour
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            self.behaviour(conn)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)
        os.unlink(self.path)
        os.rmdir(self.dir)


def _read_frame(conn: socket.socket) -> bytes:
    header = conn.recv(4, socket.MSG_WAITALL)
    (n,) = struct.unpack(">I", header)
    return conn.recv(n, socket.MSG_WAITALL) if n else b""


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        (lambda c: (_read_frame(c), c.recv(1)), "InternalError"),  # never answers
        (lambda c: (_read_frame(c), c.sendall(b"\xff\xff\xff\xff")), "InvalidResponse"),
        (lambda c: _read_frame(c), "InternalError"),  # closes without answering
        (lambda c: (_read_frame(c), c.sendall(b"\x00\x00\x00\x10abc")), "InternalError"),
        (
            lambda c: (_read_frame(c), c.sendall(struct.pack(">I", 7) + b"LockPCR")),
            "InvalidResponse",  # not CBOR
        ),
    ],
    ids=["silent", "huge-frame", "hang-up", "short-body", "not-cbor"],
)
def test_socket_transport_survives_bad_servers(behaviour, code):
    server = _OneShotServer(behaviour)
    try:
        client = NsmClient(SocketTransport(server.path, timeout=0.5))
        with pytest.raises(NsmError) as info:
            client.lock_pcr(16)
        assert info.value.nsm_code == code
    finally:
        server.close()


def test_socket_transport_frames_requests_and_answers():
    seen: list[bytes] = []

    def behaviour(conn):
        seen.append(_read_frame(conn))
        answer = cbor2.dumps("LockPCR")
        conn.sendall(struct.pack(">I", len(answer)) + answer)

    server = _OneShotServer(behaviour)
    try:
        NsmClient(SocketTransport(server.path, timeout=5)).lock_pcr(16)
    finally:
        server.close()
    assert seen == [bytes.fromhex("a1674c6f636b504352a165696e64657810")]


def test_socket_transport_refuses_oversized_requests_locally():
    with pytest.raises(NsmError) as info:
        SocketTransport("/nonexistent/socket")(bytes(NSM_REQUEST_MAX_SIZE + 1))
    assert info.value.nsm_code == "InputTooLarge"


# -- get_random --------------------------------------------------------------------------------


def test_get_random_gathers_several_answers(nsm):
    calls = []

    def transport(request: bytes) -> bytes:
        calls.append(request)
        return nsm.handle(request)

    client = NsmClient(transport)
    data = client.get_random(1000)
    assert len(data) == 1000 and len(calls) == 4  # 256 bytes per answer
    assert client.get_random(0) == b"" and len(calls) == 4
    assert len(set(client.get_random(64) for _ in range(3))) == 3


@pytest.mark.parametrize("n", [-1, 1.5, True, (1 << 20) + 1])
def test_get_random_refuses_bad_sizes(nsm, n):
    with pytest.raises(NsmError) as info:
        NsmClient(nsm.handle).get_random(n)
    assert info.value.nsm_code == "InvalidArgument"


def test_get_random_empty_answer_does_not_loop():
    client = NsmClient(lambda _r: cbor2.dumps({"GetRandom": {"random": b""}}))
    with pytest.raises(NsmError) as info:
        client.get_random(8)
    assert info.value.nsm_code == "InvalidResponse"


@settings(max_examples=60, deadline=None)
@given(
    st.binary(max_size=64)
    | st.builds(
        lambda body, extra: struct.pack(">I", len(body)) + body + extra,
        st.binary(max_size=64) | st.just(cbor2.dumps("LockPCR")),
        st.binary(max_size=8),
    )
)
def test_socket_transport_any_answer_only_raises_nsm_error(answer):
    def behaviour(conn):
        _read_frame(conn)
        conn.sendall(answer)

    server = _OneShotServer(behaviour)
    try:
        client = NsmClient(SocketTransport(server.path, timeout=2))
        try:
            client.lock_pcr(16)
        except NsmError as e:
            assert e.nsm_code in {"InvalidResponse", "InternalError"}
        else:
            assert answer[4 : 4 + struct.unpack(">I", answer[:4])[0]] == cbor2.dumps("LockPCR")
    finally:
        server.close()
