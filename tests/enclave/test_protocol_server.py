"""enclave.protocol end to end: a server process (tests/enclave/_servers/vsock_server.py)
and clients in this process, over the simulated vsock transport (AF_UNIX)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import cbor2
import pytest
from _servers.harness import ServerProcess
from _servers.vsock_server import SECRET
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave.protocol import (
    ConnectionLostError,
    ProtocolClient,
    ProtocolError,
    ProtocolLimits,
    RemoteError,
    RequestTimeoutError,
)
from enclave.protocol._framing import HEADER, HEADER_SIZE, decode_cbor, frame, parse_reply
from enclave.transport import SIM_CID_ENV, SIM_DIR_ENV, VsockAddress, open_connection, start_server

pytestmark = pytest.mark.timeout(90)

CID, PORT = 16, 5000
ADDRESS = VsockAddress(CID, PORT)


def run(coro, timeout: float = 20.0):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


@pytest.fixture(autouse=True)
def _no_sim_env(monkeypatch):
    for name in (SIM_DIR_ENV, SIM_CID_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server with default limits, shared by the tests that do not change limits."""
    sim_dir = tmp_path_factory.mktemp("proto") / "vsock"
    with ServerProcess("protocol", sim_dir, CID, PORT, read_timeout=2) as process:
        yield process


def start(tmp_path, **limits) -> ServerProcess:
    return ServerProcess("protocol", tmp_path / "vsock", CID, PORT, **limits)


async def client_for(process: ServerProcess, **limits) -> ProtocolClient:
    return await ProtocolClient.connect(
        ADDRESS, sim_dir=process.sim_dir, deadline=5, limits=ProtocolLimits(**limits)
    )


async def raw_exchange(process: ServerProcess, data: bytes, *, eof: bool = True) -> list:
    """Send raw bytes on a fresh connection; return the replies until the server closes."""
    reader, writer = await open_connection(ADDRESS, deadline=5, sim_dir=process.sim_dir)
    writer.write(data)
    if eof:
        writer.write_eof()
    received = b""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(10):
            received = await reader.read()
    writer.close()
    return [parse_reply(decode_cbor(p)) for p in split_frames(received)]


def split_frames(data: bytes) -> list[bytes]:
    """The payloads of a complete recorded stream of well-formed frames."""
    payloads, pos = [], 0
    while pos < len(data):
        length = HEADER.unpack_from(data, pos)[3]
        payloads.append(data[pos + HEADER_SIZE : pos + HEADER_SIZE + length])
        pos += HEADER_SIZE + length
    assert pos == len(data), "the stream ended inside a frame"
    return payloads


def request_frame(rid, op, body=None) -> bytes:
    return b"".join(frame(cbor2.dumps({"id": rid, "op": op, "body": body})))


# --- requests and replies -----------------------------------------------------------------


def test_requests_get_replies_and_typed_errors(server):
    async def scenario():
        async with await client_for(server) as client:
            body = {"text": "héllo", "bytes": b"\x00\xff", "list": [1, -2, 3.5, None, True]}
            assert await client.request("echo", body, timeout=5) == body
            assert await client.request("echo") is None
            with pytest.raises(RemoteError) as caught:
                await client.request("fail", {"code": "no-such-key", "message": "key k1"})
            assert (caught.value.code, caught.value.message) == ("no-such-key", "key k1")
            with pytest.raises(RemoteError) as caught:
                await client.request("nope")
            assert caught.value.code == "unknown-op" and "nope" in caught.value.message
            with pytest.raises(RemoteError) as caught:
                await client.request("crash", "x")
            assert caught.value.code == "internal"
            assert SECRET not in caught.value.message
            with pytest.raises(RemoteError) as caught:
                await client.request("int-keys")
            assert caught.value.code == "bad-response"
            with pytest.raises(ProtocolError) as caught:
                await client.request("echo", {7: "int key"})
            assert caught.value.code == "bad-request"  # refused before sending
            assert await client.request("echo", [b"y" * 3_000_000]) == [b"y" * 3_000_000]
            assert not client.closed

    run(scenario())
    assert SECRET not in server.stderr()  # nor in the server's log
    assert "RuntimeError" in server.stderr()


def test_many_concurrent_requests_on_one_connection_are_answered_out_of_order(server):
    count = 40

    async def scenario():
        async with await client_for(server) as client:
            finished: list[int] = []

            async def one(i):
                # the first requests sleep longest
                tag = await client.request("sleep", {"seconds": (count - i) * 0.02, "tag": i})
                finished.append(tag)

            started = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(count)))
            return finished, time.monotonic() - started

    finished, elapsed = run(scenario())
    assert sorted(finished) == list(range(count))
    assert finished == sorted(finished, reverse=True)  # completion order, not send order
    assert elapsed < sum((count - i) * 0.02 for i in range(count)) / 4  # they ran together


def test_client_timeout_fails_one_request_and_the_connection_goes_on(server):
    async def scenario():
        async with await client_for(server) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(RequestTimeoutError) as caught:
                await client.request("sleep", {"seconds": 5}, timeout=0.3)
            assert caught.value.code == "timeout" and isinstance(caught.value, TimeoutError)
            assert loop.time() - started < 1.5
            assert await client.request("echo", 1) == 1
            # the server got the deadline too: the handler was cancelled, not left running
            await asyncio.sleep(0.2)
            assert (await client.request("stats"))["running"] == 0

    run(scenario())


def test_server_request_timeout_answers_timeout(tmp_path):
    async def scenario(process):
        async with await client_for(process) as client:
            with pytest.raises(RemoteError) as caught:
                await client.request("sleep", {"seconds": 5}, timeout=5)
            assert caught.value.code == "timeout"
            assert await client.request("echo", 2) == 2

    with start(tmp_path, request_timeout=0.2) as process:
        run(scenario(process))


def test_oversized_reply_and_request_fail_alone(tmp_path):
    async def scenario(process):
        async with await client_for(process, max_frame=100_000) as client:
            with pytest.raises(RemoteError) as caught:
                await client.request("big", 200_000)
            assert caught.value.code == "response-too-large"
            with pytest.raises(ProtocolError) as caught:
                await client.request("echo", b"z" * 200_000)
            assert caught.value.code == "frame-too-large"
            assert await client.request("big", 1000) == b"x" * 1000

    with start(tmp_path, max_frame=100_000) as process:
        run(scenario(process))


def test_reusing_an_id_in_flight_is_a_bad_request(server):
    data = request_frame(9, "sleep", {"seconds": 0.3, "tag": "first"}) + request_frame(
        9, "echo", "second"
    )
    replies = run(raw_exchange(server, data))
    assert replies[0].id == 9 and replies[0].error[0] == "bad-request"
    assert replies[1].id == 9 and replies[1].body == "first"


# --- bad input closes only its own connection -----------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad-frame"),
        (b"NE\x01\x00" + (2**31).to_bytes(4, "big"), "frame-too-large"),
        (request_frame(1, "echo", "x")[:-3], "truncated"),
        (b"NE\x01\x00\x00\x00\x00\x02\xff\xff", "bad-cbor"),
        (b"".join(frame(cbor2.dumps(["not", "a", "map"]))), "bad-message"),
        (b"".join(frame(cbor2.dumps({"op": "echo", "id": 1}) + b"\x00")), "bad-cbor"),
    ],
)
def test_bad_input_gets_an_error_frame_and_others_are_still_served(server, data, code):
    async def scenario():
        async with await client_for(server) as bystander:
            pending = asyncio.ensure_future(
                bystander.request("sleep", {"seconds": 0.3, "tag": "kept"})
            )
            replies = await raw_exchange(server, data)
            assert await pending == "kept"  # in flight on another connection all along
            assert await bystander.request("echo", "after") == "after"
            return replies

    replies = run(scenario())
    assert [(r.id, r.error[0]) for r in replies] == [(None, code)]
    assert server.alive


def _deep(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "bad_payload",
    [
        cbor2.dumps({"id": 7, "op": "echo", "body": _deep(200)}),  # deeper than CBOR_MAX_DEPTH
        cbor2.dumps({"id": 7, "op": "echo", "body": "x"}) + b"\x00",  # trailing byte
        cbor2.dumps({"id": 7, "op": "echo", "body": {1.5: "float key"}}),  # refused key type
        cbor2.dumps({"id": 7, "op": "echo", "body": cbor2.CBORTag(2, b"\x01" * 40)}),  # tag
    ],
)
def test_a_bad_frame_is_answered_on_its_id_and_the_shared_connection_goes_on(server, bad_payload):
    """Issue 9 item 3: one client's undecodable frame must not drop the others' requests."""

    async def scenario():
        reader, writer = await open_connection(ADDRESS, deadline=5, sim_dir=server.sim_dir)
        writer.write(request_frame(1, "sleep", {"seconds": 0.3, "tag": "kept"}))
        writer.write(b"".join(frame(bad_payload)))
        writer.write(request_frame(2, "echo", "after"))
        writer.write_eof()
        async with asyncio.timeout(10):
            received = await reader.read()
        writer.close()
        return {r.id: r for r in (parse_reply(decode_cbor(p)) for p in split_frames(received))}

    replies = run(scenario())
    assert replies[7].error[0] == "bad-cbor"
    assert replies[1].body == "kept" and replies[2].body == "after"
    assert None not in replies  # no connection-level error


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    garbage=st.one_of(
        st.binary(min_size=1, max_size=300),
        st.binary(max_size=40).map(lambda b: b"NE\x01\x00" + b),  # plausible headers
        st.binary(min_size=1, max_size=60).map(
            lambda b: b"NE\x01\x00" + len(b).to_bytes(4, "big") + b  # framed junk CBOR
        ),
    )
)
def test_garbage_never_crashes_the_server(server, garbage):
    async def scenario():
        replies = await raw_exchange(server, garbage)
        for reply in replies:  # at most junk requests' answers, then one connection error
            assert reply.error is None or reply.error[0]
        async with await client_for(server) as client:  # a fresh connection is served
            assert await client.request("echo", garbage) == garbage

    run(scenario())
    assert server.alive


def test_slow_client_is_cut_at_the_read_timeout_while_others_are_served(tmp_path):
    async def slow_loris(process):
        reader, writer = await open_connection(ADDRESS, deadline=5, sim_dir=process.sim_dir)
        loop = asyncio.get_running_loop()
        started = loop.time()
        received = bytearray()

        async def collect():
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(1 << 16):
                    received.extend(data)

        collecting = loop.create_task(collect())
        sent = 0
        with contextlib.suppress(ConnectionError):
            for byte in request_frame(1, "echo", "s" * 40):
                if collecting.done():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                sent += 1
                await asyncio.sleep(0.05)
        await collecting
        writer.close()
        return loop.time() - started, sent, bytes(received)

    async def busy_client(process):
        latencies = []
        async with await client_for(process) as client:
            for i in range(30):
                begun = time.monotonic()
                assert await client.request("echo", i) == i
                latencies.append(time.monotonic() - begun)
                await asyncio.sleep(0.02)
        return latencies

    async def scenario(process):
        return await asyncio.gather(slow_loris(process), busy_client(process))

    with start(tmp_path, read_timeout=0.5) as process:
        (elapsed, sent, received), latencies = run(scenario(process))
        assert process.alive
    frame_size = len(request_frame(1, "echo", "s" * 40))
    assert sent < frame_size  # cut before it could finish
    assert 0.4 < elapsed < 2.5
    replies = [parse_reply(decode_cbor(p)) for p in split_frames(received)]
    assert [(r.id, r.error[0]) for r in replies] == [(None, "read-timeout")]
    assert max(latencies) < 0.5  # the others never waited for the slow one


def test_idle_connection_is_closed_with_a_reason(tmp_path):
    async def scenario(process):
        client = await client_for(process)
        await asyncio.sleep(0.8)
        assert client.closed
        with pytest.raises(ConnectionLostError) as caught:
            await client.request("echo", 1)
        assert caught.value.code == "connection-lost" and "idle-timeout" in caught.value.message
        await client.close()

    with start(tmp_path, idle_timeout=0.3) as process:
        run(scenario(process))


def test_max_connections_refuses_the_one_too_many(tmp_path):
    async def scenario(process):
        first = await client_for(process)
        second = await client_for(process)
        assert await first.request("echo", 1) == 1 and await second.request("echo", 2) == 2
        third = await client_for(process)
        with pytest.raises(ConnectionLostError) as caught:
            await third.request("echo", 3)
        assert "too-many-connections" in caught.value.message
        await first.close()
        await asyncio.sleep(0.1)
        async with await client_for(process) as fourth:
            assert await fourth.request("echo", 4) == 4
        await second.close()
        await third.close()

    with start(tmp_path, max_connections=2) as process:
        run(scenario(process))


def test_server_stops_reading_at_max_in_flight(tmp_path):
    async def scenario(process):
        async with await client_for(process) as client:
            started = time.monotonic()
            tags = await asyncio.gather(
                *(client.request("sleep", {"seconds": 0.2, "tag": i}) for i in range(8))
            )
            elapsed = time.monotonic() - started
            stats = await client.request("stats")
        return tags, elapsed, stats

    with start(tmp_path, max_in_flight=2) as process:
        tags, elapsed, stats = run(scenario(process))
    assert tags == list(range(8))
    assert stats["peak"] == 2  # never more than two handlers at once
    assert elapsed >= 0.75  # 8 requests, 2 at a time, 0.2 s each


def test_client_that_does_not_read_replies_is_aborted_at_the_write_timeout(tmp_path):
    async def scenario(process):
        reader, writer = await open_connection(ADDRESS, deadline=5, sim_dir=process.sim_dir)
        for i in range(64):  # 64 replies of 1 MiB, never read
            writer.write(request_frame(i, "big", 1 << 20))
        await writer.drain()
        await asyncio.sleep(1.5)
        async with await client_for(process) as other:
            assert await other.request("echo", "still serving") == "still serving"
        received = 0
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1 << 20):
                received += len(data)
        writer.close()
        return received

    with start(tmp_path, write_timeout=0.5) as process:
        received = run(scenario(process))
        assert process.alive
        assert "aborting" in process.stderr()
    assert received < 64 * (1 << 20)  # it was cut off, not served in full


FLOOD_DEADLINE_S = 20.0


def test_flood_of_bad_requests_from_a_client_that_never_reads_is_cut_off(tmp_path):
    bad = request_frame(1, "")  # valid frame and id, empty op: answered with bad-request

    async def scenario(process):
        _reader, writer = await open_connection(ADDRESS, deadline=5, sim_dir=process.sim_dir)
        cut = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLOOD_DEADLINE_S):
                try:
                    while True:  # until the server cuts us: however large the socket buffers
                        writer.write(bad * 2000)
                        await writer.drain()
                except ConnectionError:
                    cut = True
        assert cut, f"the server did not cut a never-reading client within {FLOOD_DEADLINE_S} s"
        async with await client_for(process) as other:
            assert await other.request("echo", "fine") == "fine"
        writer.close()
        for _ in range(50):  # the log line may trail the abort by a moment
            if "aborting" in process.stderr():
                break
            await asyncio.sleep(0.1)

    with start(tmp_path, write_timeout=0.5) as process:
        run(scenario(process), timeout=FLOOD_DEADLINE_S + 15)
        assert process.alive
        assert "aborting" in process.stderr()  # replies piled up unread: connection aborted


def test_pending_requests_fail_promptly_when_the_server_dies(tmp_path):
    async def scenario(process):
        client = await client_for(process)
        pending = [
            asyncio.ensure_future(client.request("sleep", {"seconds": 10}, timeout=20))
            for _ in range(5)
        ]
        await asyncio.sleep(0.3)
        killed = time.monotonic()
        process.kill()
        results = await asyncio.gather(*pending, return_exceptions=True)
        waited = time.monotonic() - killed
        with pytest.raises(ConnectionLostError):
            await client.request("echo", 1)
        await client.close()
        return results, waited

    with start(tmp_path) as process:
        results, waited = run(scenario(process))
    assert all(isinstance(r, ConnectionLostError) for r in results)
    assert all(r.code == "connection-lost" for r in results)
    assert waited < 1.0


def test_closing_the_client_fails_its_pending_requests(server):
    async def scenario():
        client = await client_for(server)
        pending = asyncio.ensure_future(client.request("sleep", {"seconds": 5}))
        await asyncio.sleep(0.1)
        await client.close()
        with pytest.raises(ConnectionLostError) as caught:
            await pending
        assert "closed" in caught.value.message

    run(scenario())


def test_client_hangs_up_on_a_server_that_sends_garbage(tmp_path):
    async def liar(reader, writer):
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async def scenario():
        sim_dir = tmp_path / "vsock"
        async with await start_server(liar, ADDRESS, sim_dir=sim_dir):
            client = await ProtocolClient.connect(ADDRESS, sim_dir=sim_dir, deadline=2)
            with pytest.raises(ConnectionLostError) as caught:
                await client.request("echo", 1, timeout=5)
            assert "bad frame" in caught.value.message and "HTTP" in caught.value.message
            await client.close()

    run(scenario())


def test_server_shutdown_tells_connected_clients(tmp_path):
    async def scenario(process):
        client = await client_for(process)
        pending = asyncio.ensure_future(client.request("sleep", {"seconds": 10}))
        await asyncio.sleep(0.2)
        process.stop()  # SIGTERM: the server closes its connections
        with pytest.raises(ConnectionLostError) as caught:
            await pending
        await client.close()
        return caught.value.message

    with start(tmp_path) as process:
        message = run(scenario(process))
    assert "shutting-down" in message


def test_socket_file_is_gone_after_the_server_stops(tmp_path):
    with start(tmp_path):
        path = tmp_path / "vsock" / f"{CID}-{PORT}.sock"
        assert path.exists()
    assert not os.path.exists(path)
