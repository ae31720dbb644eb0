"""Garbage, oversized and slow (byte-at-a-time) clients on every listening socket of the
stack — proxy HTTP, enclave vsock, KMS relay vsock, local KMS HTTP — all at once, while normal
traffic goes on. Each abusive client gets a clear error or is cut off at its limit; normal
requests keep working; server memory stays bounded."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from reliability_support import PROXY_BODY_TIMEOUT_S, PROXY_HEADER_TIMEOUT_S, LiveStack, rss_kib

from enclave.protocol._base import PROTOCOL_VERSION, ProtocolLimits
from enclave.protocol._framing import HEADER, MAGIC, encode_request, frame

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ENCLAVE_READ_TIMEOUT_S = ProtocolLimits().read_timeout
KMS_BODY_TIMEOUT_S = 10.0  # simulator.kms KmsLimits.body_read_timeout
SLACK_S = 4.0  # scheduling slack on a loaded 2-core machine
MAX_RSS_GROWTH_KIB = 48 * 1024

Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@dataclass
class Outcome:
    case: str
    reply: bytes
    closed: bool
    elapsed: float


async def _read_until_closed(reader: asyncio.StreamReader, within: float) -> tuple[bytes, bool]:
    got = b""
    try:
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                got += chunk
    except TimeoutError:
        return got, False
    except (ConnectionError, OSError):
        pass
    return got, True


async def blast(case: str, opener: Opener, data: bytes, within: float) -> Outcome:
    """Send ``data`` at once, then wait for the server to answer and close."""
    start = time.monotonic()
    reader, writer = await opener()
    try:
        writer.write(data)
        await writer.drain()
    except (ConnectionError, OSError):
        pass  # the server may cut us off mid-send: that is an answer too
    reply, closed = await _read_until_closed(reader, within)
    writer.close()
    return Outcome(case, reply, closed, time.monotonic() - start)


async def trickle(
    case: str, opener: Opener, data: bytes, interval: float, within: float, prefix: bytes = b""
) -> Outcome:
    """Send ``prefix`` at once, then ``data`` one byte per ``interval`` until the server
    closes (or ``within``)."""
    start = time.monotonic()
    reader, writer = await opener()
    writer.write(prefix)
    reply = b""
    closed = False
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    for byte in data:
        if loop.time() > end:
            break
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except (ConnectionError, OSError):
            closed = True
            break
        try:
            chunk = await asyncio.wait_for(reader.read(65536), interval)
        except TimeoutError:
            continue
        except (ConnectionError, OSError):
            closed = True
            break
        if not chunk:
            closed = True
            break
        reply += chunk
    if not closed:
        more, closed = await _read_until_closed(reader, max(0.1, end - loop.time()))
        reply += more
    writer.close()
    return Outcome(case, reply, closed, time.monotonic() - start)


def tcp(url: str) -> Opener:
    host, port = url.removeprefix("http://").split(":")
    return lambda: asyncio.open_connection(host, int(port))


def unix(path: Path) -> Opener:
    return lambda: asyncio.open_unix_connection(str(path))


def http_head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-amz-json-1.1\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_abusive_clients_on_every_socket(live: LiveStack) -> None:
    vsock = Path(live.info["vsock_dir"])
    proxy, enclave = tcp(live.proxy_url), unix(vsock / "16-5000.sock")
    relay, kms = unix(vsock / "3-8000.sock"), tcp(live.info["kms_url"])
    garbage = b"\xff\xfe" + os.urandom(64 * 1024)
    big = 100 * 1024 * 1024
    # one well-formed frame that takes longer than read_timeout to arrive byte by byte
    slow_frame = b"".join(bytes(b) for b in frame(
        encode_request(1, "health", {"pad": b"p" * 100}, 5000, strict_keys=True)))
    pids = {name: live.pid(name) for name in ("proxy", "enclave", "kms", "kms-relay")}
    rss_before = {name: rss_kib(pid) for name, pid in pids.items()}
    key, seal_body = live.sealed_hmac_body("abuse-key")

    async def normal_traffic(stop: asyncio.Event) -> list[str]:
        problems: list[str] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            async with session.post(live.proxy_url + "/v1/seal-load", json=seal_body) as r:
                assert r.status == 200, await r.text()
            n = 0
            while not stop.is_set():
                n += 1
                message = f"normal {n}".encode()
                body = {"name": "abuse-key", "message": base64.b64encode(message).decode()}
                async with session.post(live.proxy_url + "/v1/hmac", json=body) as r:
                    answer = await r.json()
                    expected = hmac.new(key, message, hashlib.sha256).digest()
                    if r.status != 200 or base64.b64decode(answer["mac"]) != expected:
                        problems.append(f"{r.status} {answer}")
                keys = await asyncio.to_thread(live.kms("operator").list_keys)
                if not keys.get("Keys"):
                    problems.append("KMS ListKeys failed")
                await asyncio.sleep(0.2)
        return problems if n > 5 else [*problems, f"only {n} normal rounds"]

    async def go() -> tuple[list[Outcome], list[str]]:
        stop = asyncio.Event()
        normal = asyncio.ensure_future(normal_traffic(stop))
        await asyncio.sleep(0.5)
        hdr = PROXY_HEADER_TIMEOUT_S
        outcomes = await asyncio.gather(
            # the proxy (HTTP)
            blast("proxy garbage", proxy, garbage, 5),
            blast("proxy oversized body", proxy, http_head("/v1/sign", big) + b"{" * 65536, 5),
            blast("proxy oversized header", proxy,
                  b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 5),
            trickle("proxy slow head", proxy, b"GET /health HTTP/1.1\r\nHost: x\r\n" * 50,
                    0.05, hdr + SLACK_S),
            trickle("proxy slow body", proxy, b"{" * 500, 0.05,
                    PROXY_BODY_TIMEOUT_S + SLACK_S, prefix=http_head("/v1/sign", 500)),
            # the enclave (framed protocol on vsock)
            blast("enclave garbage", enclave, garbage, 5),
            blast("enclave oversized", enclave,
                  HEADER.pack(MAGIC, PROTOCOL_VERSION, 0, 2**31) + b"\x00" * 65536, 5),
            trickle("enclave slow frame", enclave, slow_frame, 0.25,
                    ENCLAVE_READ_TIMEOUT_S + SLACK_S),
            # the KMS relay (vsock -> KMS) and the KMS itself (HTTP)
            blast("relay garbage", relay, garbage, 5),
            blast("relay oversized", relay, http_head("/", big) + b"{" * 65536, 5),
            trickle("relay slow body", relay, b"{" * 2000, 0.05,
                    KMS_BODY_TIMEOUT_S + SLACK_S, prefix=http_head("/", 2000)),
            blast("kms garbage", kms, garbage, 5),
            blast("kms oversized", kms, http_head("/", big) + b"{" * 65536, 5),
            trickle("kms slow body", kms, b"{" * 2000, 0.05,
                    KMS_BODY_TIMEOUT_S + SLACK_S, prefix=http_head("/", 2000)),
        )
        stop.set()
        return list(outcomes), await normal

    outcomes, problems = asyncio.run(go())
    by_case = {o.case: o for o in outcomes}
    for o in outcomes:  # each one was cut off, or at least told clearly why not served
        clear = re.match(rb"HTTP/1\.[01] [45]\d\d ", o.reply) is not None or o.reply[:2] == b"NE"
        assert o.closed or clear, f"{o.case}: no answer, not cut off after {o.elapsed:.1f} s"
    for case in ("proxy garbage", "proxy oversized header", "relay garbage", "kms garbage"):
        reply = by_case[case].reply
        assert re.match(rb"HTTP/1\.[01] 400 ", reply), (case, reply[:80])
    proxy_status = by_case["proxy oversized body"].reply.split(b"\r\n")[0]
    assert b" 400 " in proxy_status, proxy_status  # the proxy: status from the kind
    for case in ("relay oversized", "kms oversized"):
        assert b" 413 " in by_case[case].reply.split(b"\r\n")[0], (case, by_case[case].reply[:80])
    assert b"bad-frame" in by_case["enclave garbage"].reply
    assert b"frame-too-large" in by_case["enclave oversized"].reply
    assert b"read-timeout" in by_case["enclave slow frame"].reply
    assert by_case["proxy slow head"].elapsed < PROXY_HEADER_TIMEOUT_S + SLACK_S
    assert re.match(rb"HTTP/1\.[01] 400 ", by_case["proxy slow body"].reply)  # body-timeout
    assert not problems, problems
    for name, pid in pids.items():
        growth = rss_kib(pid) - rss_before[name]
        assert growth < MAX_RSS_GROWTH_KIB, f"{name} RSS grew by {growth} KiB"
