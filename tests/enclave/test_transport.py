"""enclave.transport: addresses, the AF_UNIX simulator, connecting with retries, errors.

Servers run as separate processes (tests/enclave/_servers/vsock_server.py) where the test is
about talking across processes; in-process servers where it is about one call's behaviour.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time

import pytest
from _servers.harness import ServerProcess

from enclave import transport
from enclave.transport import (
    PARENT_CID,
    SIM_CID_ENV,
    SIM_DIR_ENV,
    VMADDR_CID_ANY,
    VMADDR_PORT_ANY,
    TransportError,
    TransportLimits,
    VsockAddress,
    connect,
    is_simulated,
    open_connection,
    start_server,
)

pytestmark = pytest.mark.timeout(60)


def run(coro, timeout: float = 20.0):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


@pytest.fixture
def sim_dir(tmp_path, monkeypatch):
    for name in (SIM_DIR_ENV, SIM_CID_ENV):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "vsock"


async def _noop(reader, writer):
    await reader.read()


# --- addresses -------------------------------------------------------------------------


def test_address_accepts_u32_cid_and_port():
    assert VsockAddress(3, 8000) == VsockAddress.parse("3:8000") == VsockAddress.parse("vsock://3:8000")
    assert VsockAddress(0xFFFFFFFF, 0xFFFFFFFF).cid == VMADDR_CID_ANY
    assert str(VsockAddress(16, 5000)) == "cid 16 port 5000"


@pytest.mark.parametrize(
    ("cid", "port", "needle"),
    [
        ("localhost", 5000, "no hostnames"),
        ("10.0.0.1", 5000, "no hostnames"),
        ("16", 5000, "pass the number"),
        (-1, 5000, "out of range"),
        (2**32, 5000, "out of range"),
        (True, 5000, "must be an integer"),
        (16, 2**32, "0..4294967295"),
        (16, -5, "out of range"),
        (16, 5.0, "must be an integer"),
    ],
)
def test_bad_address_is_a_typed_error_with_a_hint(cid, port, needle):
    with pytest.raises(TransportError) as caught:
        VsockAddress(cid, port)
    assert caught.value.code == "invalid-address"
    assert needle in caught.value.message


@pytest.mark.parametrize("text", ["localhost:5000", "3", "3:", ":5", "3:8000:1", "", "-1:5"])
def test_parse_rejects_non_cid_port_text(text):
    with pytest.raises(TransportError) as caught:
        VsockAddress.parse(text)
    assert caught.value.code == "invalid-address"
    assert "CID:PORT" in caught.value.message


@pytest.mark.parametrize(
    ("cid", "port", "needle"),
    [
        (VMADDR_CID_ANY, 5000, "VMADDR_CID_ANY"),
        (0, 5000, "VMADDR_CID_HYPERVISOR"),
        (1, 5000, "VMADDR_CID_LOCAL"),
        (2, 5000, "VMADDR_CID_HOST"),
        (16, VMADDR_PORT_ANY, "VMADDR_PORT_ANY"),
    ],
)
def test_wildcards_and_reserved_cids_are_not_connectable(sim_dir, cid, port, needle):
    address = VsockAddress(cid, port)
    for attempt in (
        lambda: connect(address, timeout=0, sim_dir=sim_dir),
        lambda: run(open_connection(address, deadline=0, sim_dir=sim_dir)),
    ):
        started = time.monotonic()
        with pytest.raises(TransportError) as caught:
            attempt()
        assert time.monotonic() - started < 1  # refused up front, no retries
        error = caught.value
        assert error.code == "invalid-address"
        assert f"cid {cid} " in error.message and f"port {port}" in error.message
        assert needle in error.message
        assert port == VMADDR_PORT_ANY or "CID 3" in error.message


# --- the simulator ---------------------------------------------------------------------


def test_simulation_is_chosen_by_one_environment_variable(sim_dir, monkeypatch):
    assert not is_simulated()
    assert is_simulated(sim_dir)
    monkeypatch.setenv(SIM_DIR_ENV, str(sim_dir))
    monkeypatch.setenv(SIM_CID_ENV, "21")
    assert is_simulated()

    async def scenario():
        async with await start_server(_noop, VsockAddress(VMADDR_CID_ANY, 7000)) as server:
            assert server.simulated
            assert server.address == VsockAddress(21, 7000)  # VMADDR_CID_ANY bound as the sim CID
            assert server.path == str(sim_dir / "21-7000.sock")
            assert stat.S_ISSOCK(os.lstat(server.path).st_mode)
            _, writer = await open_connection(VsockAddress(21, 7000), deadline=1)
            writer.close()
        assert not os.path.exists(server.path)  # closing removes the socket file

    run(scenario())


def test_explicit_sim_cid_wins_over_the_environment(sim_dir, monkeypatch):
    monkeypatch.setenv(SIM_CID_ENV, "21")

    async def scenario():
        server = await start_server(
            _noop, VsockAddress(VMADDR_CID_ANY, 7001), sim_dir=sim_dir, sim_cid=42
        )
        async with server:
            assert server.address == VsockAddress(42, 7001)

    run(scenario())


def test_binding_cid_any_in_simulation_needs_the_sim_cid(sim_dir):
    with pytest.raises(TransportError) as caught:
        run(start_server(_noop, VsockAddress(VMADDR_CID_ANY, 7002), sim_dir=sim_dir))
    assert caught.value.code == "sim-cid-unset"
    assert SIM_CID_ENV in caught.value.message and "port 7002" in caught.value.message


def test_bad_sim_cid_environment_is_a_typed_error(sim_dir, monkeypatch):
    monkeypatch.setenv(SIM_CID_ENV, "enclave")
    with pytest.raises(TransportError) as caught:
        run(start_server(_noop, VsockAddress(VMADDR_CID_ANY, 7003), sim_dir=sim_dir))
    assert caught.value.code == "invalid-address" and SIM_CID_ENV in caught.value.message


def test_port_any_picks_a_free_port(sim_dir):
    async def scenario():
        a = await start_server(_noop, VsockAddress(16, VMADDR_PORT_ANY), sim_dir=sim_dir)
        b = await start_server(_noop, VsockAddress(16, VMADDR_PORT_ANY), sim_dir=sim_dir)
        async with a, b:
            assert a.address.port != b.address.port
            assert 49152 <= a.address.port <= 65535
            _, writer = await open_connection(b.address, deadline=1, sim_dir=sim_dir)
            writer.close()

    run(scenario())


def test_socket_directory_is_created_private(sim_dir):
    async def scenario():
        async with await start_server(_noop, VsockAddress(3, 7004), sim_dir=sim_dir):
            assert stat.S_IMODE(os.stat(sim_dir).st_mode) == 0o700

    old = os.umask(0)
    try:
        run(scenario())
    finally:
        os.umask(old)


def test_a_directory_other_users_can_reach_is_refused(sim_dir):
    sim_dir.mkdir(mode=0o755)
    os.chmod(sim_dir, 0o755)
    with pytest.raises(TransportError) as caught:
        run(start_server(_noop, VsockAddress(3, 7005), sim_dir=sim_dir))
    assert caught.value.code == "sim-dir-unsafe" and "0o755" in caught.value.message
    with pytest.raises(TransportError) as caught:
        connect(VsockAddress(3, 7005), timeout=0, sim_dir=sim_dir)
    assert caught.value.code == "sim-dir-unsafe"
    assert stat.S_IMODE(os.stat(sim_dir).st_mode) == 0o755  # left as it was


def test_too_long_socket_path_is_a_typed_error(tmp_path):
    deep = tmp_path / ("d" * 100)
    with pytest.raises(TransportError) as caught:
        run(start_server(_noop, VsockAddress(3, 7006), sim_dir=deep))
    assert caught.value.code == "invalid-address" and "AF_UNIX" in caught.value.message


def test_stale_socket_file_is_removed_live_one_and_other_files_are_not(sim_dir):
    sim_dir.mkdir(mode=0o700)
    stale = sim_dir / "3-7007.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(stale))  # a crashed server's file: bound, never unlinked
    leftover.close()
    plain = sim_dir / "3-7008.sock"
    plain.write_text("not a socket")

    async def scenario():
        server = await start_server(_noop, VsockAddress(3, 7007), sim_dir=sim_dir)
        async with server:
            with pytest.raises(TransportError) as caught:
                await start_server(_noop, VsockAddress(3, 7007), sim_dir=sim_dir)
            assert caught.value.code == "address-in-use"
            assert "cid 3 port 7007" in caught.value.message
            # the live server still works
            _, writer = await open_connection(VsockAddress(3, 7007), deadline=1, sim_dir=sim_dir)
            writer.close()
        with pytest.raises(TransportError) as caught:
            await start_server(_noop, VsockAddress(3, 7008), sim_dir=sim_dir)
        assert caught.value.code == "address-in-use" and "not a socket" in caught.value.message

    run(scenario())
    assert plain.read_text() == "not a socket"


def test_close_leaves_a_socket_file_it_does_not_own(sim_dir):
    async def scenario():
        server = await start_server(_noop, VsockAddress(3, 7009), sim_dir=sim_dir)
        os.unlink(server.path)  # someone replaced the file meanwhile
        other = socket.socket(socket.AF_UNIX)
        other.bind(server.path)
        try:
            server.close()
            await server.wait_closed()
            assert os.path.exists(server.path)
        finally:
            other.close()

    run(scenario())


# --- connecting ------------------------------------------------------------------------


def test_connect_refused_names_cid_port_and_hints(sim_dir):
    limits = TransportLimits(backoff_initial=0.01, backoff_max=0.05)
    started = time.monotonic()
    with pytest.raises(TransportError) as caught:
        run(open_connection(VsockAddress(16, 5999), deadline=0.4, limits=limits, sim_dir=sim_dir))
    elapsed = time.monotonic() - started
    error = caught.value
    assert error.code == "connect-refused"
    assert error.address == VsockAddress(16, 5999)
    assert "cid 16 port 5999" in error.message
    assert "parent is CID 3" in error.message and SIM_DIR_ENV in error.message
    assert 0.35 <= elapsed < 2.0  # retried until the deadline, not past it
    attempts = int(error.message.split(" attempt")[0].rsplit(" ", 1)[1])
    assert attempts >= 4  # exponential backoff from 10 ms, capped at 50 ms


def test_connecting_to_own_sim_cid_hints_at_the_parent_cid(sim_dir, monkeypatch):
    monkeypatch.setenv(SIM_CID_ENV, "16")
    with pytest.raises(TransportError) as caught:
        connect(VsockAddress(16, 5998), timeout=0.1, sim_dir=sim_dir)
    assert "this side's own CID" in caught.value.message
    assert f"parent is CID {PARENT_CID}" in caught.value.message


def test_a_full_backlog_never_yields_a_dead_stream(sim_dir):
    """AF_UNIX EAGAIN (backlog full) is retried, not returned as a connected stream."""
    sim_dir.mkdir(mode=0o700)
    path = str(sim_dir / "16-5996.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    fillers = []
    try:
        while True:  # fill the backlog: the next non-blocking connect gets EAGAIN
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            try:
                filler.connect(path)
            except BlockingIOError:
                break
            if len(fillers) > 64:
                pytest.fail("could not fill an AF_UNIX backlog")

        async def scenario():
            with pytest.raises(TransportError) as info:
                await open_connection(VsockAddress(16, 5996), deadline=0.5, sim_dir=sim_dir)
            assert "16" in str(info.value) and "5996" in str(info.value)

            loop = asyncio.get_running_loop()

            async def drain_later():
                await asyncio.sleep(0.3)
                listener.setblocking(False)
                accepted = []
                for _ in range(len(fillers)):  # the queued fillers (all but the last), then us
                    conn, _ = await loop.sock_accept(listener)
                    accepted.append(conn)
                return accepted

            drainer = loop.create_task(drain_later())
            address = VsockAddress(16, 5996)
            _reader, writer = await open_connection(address, deadline=5, sim_dir=sim_dir)
            accepted = await drainer
            writer.write(b"ping")
            await writer.drain()
            accepted[-1].setblocking(True)
            assert accepted[-1].recv(4) == b"ping"
            writer.close()
            for c in accepted:
                c.close()

        run(scenario())
    finally:
        for f in fillers:
            f.close()
        listener.close()


def test_open_connection_waits_for_a_server_that_starts_late(sim_dir):
    async def scenario():
        loop = asyncio.get_running_loop()
        servers = []

        async def start_later():
            await asyncio.sleep(0.3)
            servers.append(await start_server(_noop, VsockAddress(16, 5997), sim_dir=sim_dir))

        starter = loop.create_task(start_later())
        started = loop.time()
        _, writer = await open_connection(VsockAddress(16, 5997), deadline=5, sim_dir=sim_dir)
        assert 0.25 < loop.time() - started < 3
        writer.close()
        await starter
        servers[0].close()
        await servers[0].wait_closed()

    run(scenario())


def test_blocking_connect_talks_to_a_server_process(sim_dir):
    with ServerProcess("echo", sim_dir, 16, 5001):
        sock = connect(VsockAddress(16, 5001), timeout=5, sim_dir=sim_dir)
        with sock:
            assert sock.gettimeout() == transport.DEFAULT_IO_TIMEOUT
            payload = os.urandom(300_000)
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            received = bytearray()
            while chunk := sock.recv(1 << 20):
                received += chunk
        assert bytes(received) == payload


def test_streams_carry_large_transfers_between_processes(sim_dir):
    payload = os.urandom(8 * 1024 * 1024)

    async def scenario():
        reader, writer = await open_connection(VsockAddress(16, 5001), deadline=5, sim_dir=sim_dir)
        sock = writer.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 1024 * 1024  # large buffers

        async def send():
            view = memoryview(payload)
            for offset in range(0, len(view), 1 << 20):
                writer.write(view[offset : offset + (1 << 20)])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.get_running_loop().create_task(send())
        received = await reader.read()  # until EOF
        await sender
        writer.close()
        return received

    with ServerProcess("echo", sim_dir, 16, 5001):
        assert run(scenario()) == payload


def test_handler_failure_closes_only_its_connection(sim_dir):
    async def handler(reader, writer):
        line = await reader.readline()
        if line == b"fail\n":
            raise RuntimeError("boom")
        writer.write(line)
        await writer.drain()

    async def scenario():
        async with await start_server(handler, VsockAddress(3, 7010), sim_dir=sim_dir):
            r1, w1 = await open_connection(VsockAddress(3, 7010), deadline=1, sim_dir=sim_dir)
            w1.write(b"fail\n")
            assert await r1.read() == b""  # closed
            r2, w2 = await open_connection(VsockAddress(3, 7010), deadline=1, sim_dir=sim_dir)
            w2.write(b"ok\n")
            assert await r2.readline() == b"ok\n"
            w1.close()
            w2.close()

    run(scenario())


def test_server_close_cancels_open_connections(sim_dir):
    async def scenario():
        server = await start_server(_noop, VsockAddress(3, 7011), sim_dir=sim_dir)
        reader, writer = await open_connection(VsockAddress(3, 7011), deadline=1, sim_dir=sim_dir)
        for _ in range(100):
            if server.active_connections:
                break
            await asyncio.sleep(0.01)
        assert server.active_connections == 1
        server.close()
        await server.wait_closed()
        assert server.active_connections == 0
        assert await reader.read() == b""
        writer.close()

    run(scenario())


# --- real AF_VSOCK ---------------------------------------------------------------------


def test_without_simulation_the_real_af_vsock_is_used(sim_dir):
    if not hasattr(socket, "AF_VSOCK"):
        pytest.skip("this Python has no AF_VSOCK")
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError:
        pytest.skip("no vsock driver on this machine")

    async def scenario():
        server = await start_server(_noop, VsockAddress(VMADDR_CID_ANY, VMADDR_PORT_ANY))
        async with server:
            assert not server.simulated and server.path is None
            assert server.sockets[0].family == socket.AF_VSOCK
            assert server.address.port != VMADDR_PORT_ANY

    run(scenario())


def test_missing_af_vsock_says_how_to_simulate(sim_dir, monkeypatch):
    monkeypatch.delattr(socket, "AF_VSOCK", raising=False)
    with pytest.raises(TransportError) as caught:
        connect(VsockAddress(16, 5000), timeout=0)
    assert caught.value.code == "vsock-unavailable"
    assert SIM_DIR_ENV in caught.value.message


def test_limits_are_validated():
    with pytest.raises(TransportError) as caught:
        TransportLimits(socket_buffer=0)
    assert caught.value.code == "invalid-limits"
    with pytest.raises(TransportError):
        TransportLimits(connect_deadline=float("inf"))
