"""How boto3 inside the enclave reaches KMS: a loopback forwarder to the parent's relay.

The enclave has no network, only vsock. boto3 speaks TCP. This module runs a small forwarder
on ``127.0.0.1`` inside the enclave; every TCP connection boto3 opens to it is piped over vsock
to the parent's KMS relay (CID 3, port 8000 by default: ``python -m parent kms-relay``), which
pipes it on to ``kms.<region>.amazonaws.com:443``.

On hardware (``scheme="https"``) boto3 is configured with botocore's standard
``Config(proxies={"https": "http://127.0.0.1:<port>"})``: urllib3 sends
``CONNECT kms.<region>.amazonaws.com:443``, the forwarder accepts only the region's KMS host
names on port 443, answers ``200`` and from then on pipes opaque bytes. TLS runs from botocore
to KMS with the real certificate and host name checks, so the parent sees ciphertext only, and
no ``/etc/hosts`` entry or DNS is needed inside the enclave. In simulation
(``scheme="http"``, only allowed when ``NITRO_VSOCK_SIM_DIR`` is set) the local KMS speaks plain
HTTP, boto3 gets ``endpoint_url=http://127.0.0.1:<port>`` and the same forwarder pipes the bytes
as they come. Everything else (vsock, relay, limits) is the same code.

The forwarder runs its own event loop in a daemon thread, because boto3 is blocking and may be
called from any thread, including an event loop's. On hardware ``lo`` is down:
``bring_up_loopback()`` must run first (the enclave entrypoint does it).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any

from attestation.errors import CodedError, Kind
from enclave.endpoints import dns_suffix, kms_hostnames
from enclave.transport import (
    PARENT_CID,
    SIM_DIR_ENV,
    TransportError,
    VsockAddress,
    open_connection,
    relay,
)
from enclave.wire import KMS_RELAY_PORT

__all__ = [
    "HTTPS_PORT",
    "KMS_RELAY_PORT",
    "KmsTunnel",
    "LoopbackError",
    "TunnelError",
    "TunnelLimits",
    "bring_up_loopback",
    "dns_suffix",
    "kms_hostnames",
]

HTTPS_PORT = 443

log = logging.getLogger("enclave.kms.tunnel")


class TunnelError(CodedError):
    """The forwarder could not start or was misused; `code` is stable."""

    codes = {
        "bad-scheme": Kind.INTERNAL,
        "listen-failed": Kind.UNAVAILABLE,
        "not-started": Kind.INTERNAL,
        "plaintext-outside-simulation": Kind.INTERNAL,
        "start-timeout": Kind.UNAVAILABLE,
        "loopback-unavailable": Kind.UNAVAILABLE,
    }
    show_code = True


class LoopbackError(TunnelError):
    """`lo` could not be brought up (code ``loopback-unavailable``)."""


@dataclass(frozen=True)
class TunnelLimits:
    """Bounds of the forwarder."""

    max_connections: int = 256
    """Connections piped at once; more are answered 503 (CONNECT) or closed."""
    max_head_bytes: int = 8192
    """Longest CONNECT request head."""
    head_timeout_s: float = 5.0
    """Time to receive the CONNECT request head."""
    connect_timeout_s: float = 5.0
    """Time to open the vsock connection to the relay (retries included)."""
    idle_timeout_s: float = 300.0
    """A piped connection with no bytes either way for this long is closed."""
    chunk_bytes: int = 256 * 1024
    """Read size when piping."""
    start_timeout_s: float = 10.0
    """`KmsTunnel.start` waits this long for the listener."""


class KmsTunnel:
    """Loopback TCP forwarder to the parent's KMS relay, in its own thread.

        with KmsTunnel("us-east-1") as tunnel:           # hardware: CONNECT proxy
            client = session.client("kms", **tunnel.client_kwargs())
    """

    def __init__(
        self,
        region: str,
        *,
        relay: VsockAddress | None = None,
        scheme: str = "https",
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        limits: TunnelLimits | None = None,
    ) -> None:
        if scheme not in ("https", "http"):
            raise TunnelError("bad-scheme", f"scheme must be https or http, not {scheme!r}")
        if scheme == "http" and not os.environ.get(SIM_DIR_ENV):
            raise TunnelError(
                "plaintext-outside-simulation",
                f"plain-HTTP KMS is for simulation only ({SIM_DIR_ENV} is not set)",
            )
        self.region = region
        self.relay = relay or VsockAddress(PARENT_CID, KMS_RELAY_PORT)
        self.scheme = scheme
        self.allowed_hosts = kms_hostnames(region)
        self.limits = limits or TunnelLimits()
        self._listen = (listen_host, listen_port)
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._slots = 0
        self.active = 0
        self.total = 0
        self.refused = 0

    # -- what boto3 needs ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise TunnelError("not-started", "the tunnel is not running")
        return self._port

    @property
    def address(self) -> str:
        return f"{self._listen[0]}:{self.port}"

    def client_kwargs(self, **config: Any) -> dict[str, Any]:
        """`endpoint_url`/`config` for `session.client("kms", **...)`; `config` adds
        botocore Config options (timeouts, retries, pool size)."""
        from botocore.config import Config

        if self.scheme == "https":
            # urllib3 tunnels TLS through CONNECT; certificates and host name checked by botocore
            return {"config": Config(proxies={"https": f"http://{self.address}"}, **config)}
        # simulation: plain HTTP to the forwarder; `proxies={}` keeps env proxies out of it
        return {"endpoint_url": f"http://{self.address}", "config": Config(proxies={}, **config)}

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> KmsTunnel:
        """Start listening (in a daemon thread); returns once the port is bound."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="kms-tunnel", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.limits.start_timeout_s):
            raise TunnelError("start-timeout", "the KMS tunnel did not start in time")
        if self._start_error is not None:
            self._thread = None
            raise TunnelError(
                "listen-failed", f"cannot listen on {self._listen[0]}: {self._start_error}"
            )
        log.info(
            "kms tunnel listening",
            extra={"fields": {"port": self._port, "relay": [self.relay.cid, self.relay.port]}},
        )
        return self

    def close(self) -> None:
        """Stop listening and close piped connections."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(self.limits.start_timeout_s)
        self._thread = None

    def __enter__(self) -> KmsTunnel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start() via _start_error
            if not self._ready.is_set():
                self._start_error = exc
                self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks: set[asyncio.Task] = set()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            with contextlib.suppress(asyncio.CancelledError):  # closing: not an error to log
                await self._serve(reader, writer)

        try:
            server = await asyncio.start_server(
                on_connect, *self._listen, limit=self.limits.max_head_bytes
            )
        except OSError as exc:
            self._start_error = exc
            self._ready.set()
            return
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    # -- one connection ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots >= self.limits.max_connections:
            self.refused += 1
            if self.scheme == "https":
                await _answer(writer, 503, "Too many connections")
            await _close(writer)
            return
        self._slots += 1
        self.total += 1
        try:
            if self.scheme == "https" and not await self._accept_connect(reader, writer):
                return
            try:
                up_reader, up_writer = await self._connect_relay()
            except (TransportError, OSError) as exc:
                log.warning("kms relay unreachable: %s", getattr(exc, "code", type(exc).__name__))
                if self.scheme == "https":
                    await _answer(writer, 502, "KMS relay unreachable")
                return
            if self.scheme == "https":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.active += 1
            try:  # relay() owns both connections from here and closes them
                await relay(
                    reader, writer, up_reader, up_writer,
                    idle_timeout=self.limits.idle_timeout_s, chunk_size=self.limits.chunk_bytes,
                )
            finally:
                self.active -= 1
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._slots -= 1
            await _close(writer)

    async def _connect_relay(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """open_connection to the relay, retried until ``connect_timeout_s``."""
        return await open_connection(self.relay, deadline=self.limits.connect_timeout_s)

    async def _accept_connect(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read `CONNECT host:443 HTTP/1.x`; True when allowed (nothing answered yet)."""
        try:
            head = await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), self.limits.head_timeout_s
            )
        except (TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            await _answer(writer, 400, "Bad request")
            return False
        try:
            method, target, version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ")
        except (UnicodeDecodeError, ValueError):
            await _answer(writer, 400, "Bad request")
            return False
        if method != "CONNECT" or not version.startswith("HTTP/1."):
            await _answer(writer, 405, "Only CONNECT")
            return False
        host, _, port = target.rpartition(":")
        if host.lower().rstrip(".") not in self.allowed_hosts or port != str(HTTPS_PORT):
            log.warning("kms tunnel refused a CONNECT to a host that is not this region's KMS")
            await _answer(writer, 403, "Destination not allowed")
            return False
        return True


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await asyncio.wait_for(writer.drain(), 1.0)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


# -- loopback ------------------------------------------------------------------------------------

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22s")  # struct ifreq: name, ifr_flags, rest of the 24-byte union


def bring_up_loopback(interface: str = "lo") -> bool:
    """Set `lo` up (the kernel then gives it 127.0.0.1/8); True if it was down.

    Inside a Nitro enclave `lo` starts down (nitro-spec §4.4); the entrypoint calls this before
    starting the KMS tunnel. Needs CAP_NET_ADMIN (root in the enclave). Same as
    `ip link set dev lo up`, with no `ip` binary needed.
    """
    name = interface.encode()
    if not name or len(name) >= 16:
        raise LoopbackError("loopback-unavailable", f"bad interface name {interface!r}")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            res = fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, _IFREQ.pack(name, 0, b""))
            flags = _IFREQ.unpack(res)[1]
            if flags & _IFF_UP:
                return False
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, _IFREQ.pack(name, flags | _IFF_UP, b""))
            return True
    except OSError as exc:
        raise LoopbackError(
            "loopback-unavailable", f"cannot bring {interface} up: {exc.strerror or exc}"
        ) from None
