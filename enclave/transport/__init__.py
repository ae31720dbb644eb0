"""vsock transport: one API over real AF_VSOCK or the AF_UNIX simulator.

Simulation is on when a directory is given (``sim_dir=``) or ``NITRO_VSOCK_SIM_DIR`` is set;
then ``(cid, port)`` is the AF_UNIX socket ``<dir>/<cid>-<port>.sock`` and binding
``VMADDR_CID_ANY`` binds as ``sim_cid=`` / ``NITRO_VSOCK_SIM_CID``. Code above this module
cannot tell which backend it runs on: both give asyncio streams with large buffers.

    server = await start_server(handler, VsockAddress(VMADDR_CID_ANY, 5000))
    reader, writer = await open_connection(VsockAddress(PARENT_CID, 8000))
    sock = connect(VsockAddress(16, 5000))           # blocking, for scripts
    stats = await relay(reader_a, writer_a, reader_b, writer_b)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from enclave.retry import backoff
from enclave.transport import _vsock_real, _vsock_sim
from enclave.transport._relay import (
    RELAY_CHUNK,
    RELAY_HALF_CLOSE_TIMEOUT,
    RELAY_HIGH_WATER,
    RELAY_IDLE_TIMEOUT,
    RelayStats,
    relay,
)
from enclave.transport._vsock_address import (
    PARENT_CID,
    SIM_CID_ENV,
    SIM_DIR_ENV,
    VMADDR_CID_ANY,
    VMADDR_CID_HOST,
    VMADDR_CID_HYPERVISOR,
    VMADDR_CID_LOCAL,
    VMADDR_PORT_ANY,
    TransportError,
    TransportLimits,
    VsockAddress,
)

__all__ = [
    "PARENT_CID",
    "RELAY_CHUNK",
    "RELAY_HALF_CLOSE_TIMEOUT",
    "RELAY_HIGH_WATER",
    "RELAY_IDLE_TIMEOUT",
    "SIM_CID_ENV",
    "SIM_DIR_ENV",
    "VMADDR_CID_ANY",
    "VMADDR_CID_HOST",
    "VMADDR_CID_HYPERVISOR",
    "VMADDR_CID_LOCAL",
    "VMADDR_PORT_ANY",
    "RelayStats",
    "TransportError",
    "TransportLimits",
    "VsockAddress",
    "VsockServer",
    "connect",
    "is_simulated",
    "open_connection",
    "relay",
    "start_server",
]

logger = logging.getLogger(__name__)

SERVER_CLOSE_TIMEOUT = 5.0  # seconds wait_closed() waits for connection handlers to end
DEFAULT_IO_TIMEOUT = 30.0  # socket timeout of sockets returned by connect()

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[Any]]
SimDir = str | os.PathLike[str] | None


def is_simulated(sim_dir: SimDir = None) -> bool:
    """True when the transport runs on the AF_UNIX simulator."""
    return _vsock_sim.resolve(sim_dir, None) is not None


def _tune_stream(writer: asyncio.StreamWriter, limits: TransportLimits) -> None:
    writer.transport.set_write_buffer_limits(high=limits.write_high_water)
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    if sock.family == socket.AF_UNIX:
        _vsock_sim.set_buffers(sock, limits)
    else:
        _vsock_real.set_buffers(sock, limits)


class _ServerProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, plus a registry of open transports so that closing the
    server closes every connection, even one whose handler has not started yet."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        callback: StreamHandler,
        registry: set[asyncio.BaseTransport],
        closing: Callable[[], bool],
    ) -> None:
        super().__init__(reader, callback)
        self._registry = registry
        self._closing = closing
        self._my_transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._my_transport = transport
        self._registry.add(transport)
        if self._closing():  # accepted while the server was being closed
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.discard(self._my_transport)
        super().connection_lost(exc)


class VsockServer:
    """A listening vsock server (real or simulated); the asyncio.Server interface plus
    ``address`` (the effective address) and ``path`` (the socket file in simulation).

    ``close()`` stops listening, removes the simulated socket file, cancels the connection
    handlers still running and closes their connections; ``wait_closed()`` waits for that
    (bounded by SERVER_CLOSE_TIMEOUT).
    """

    def __init__(
        self,
        server: asyncio.Server,
        address: VsockAddress,
        path: str | None,
        tasks: set[asyncio.Task[Any]],
        transports: set[asyncio.BaseTransport],
    ) -> None:
        self._server = server
        self.address = address
        self.path = path
        self._tasks = tasks
        self._transports = transports
        self.closing = False
        self._inode: tuple[int, int] | None = None
        if path is not None:
            st = os.lstat(path)
            self._inode = (st.st_dev, st.st_ino)

    @property
    def simulated(self) -> bool:
        return self.path is not None

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets)

    @property
    def active_connections(self) -> int:
        return len(self._transports)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._server.get_loop()

    def is_serving(self) -> bool:
        return self._server.is_serving()

    async def start_serving(self) -> None:
        await self._server.start_serving()

    async def serve_forever(self) -> None:
        await self._server.serve_forever()

    def close(self) -> None:
        self.closing = True
        self._server.close()
        self._unlink()
        for task in list(self._tasks):
            task.cancel()  # the handler's connection is closed as the task ends

    async def wait_closed(self) -> None:
        await self._server.wait_closed()
        loop = asyncio.get_running_loop()
        end = loop.time() + SERVER_CLOSE_TIMEOUT
        for _ in range(3):  # accept -> transport -> connection_made: let those in progress land
            await asyncio.sleep(0)
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=SERVER_CLOSE_TIMEOUT)
        for transport in list(self._transports):  # handlers that never started
            transport.close()
        while self._transports and loop.time() < end:
            await asyncio.sleep(0.005)  # closing transports report connection_lost soon

    async def __aenter__(self) -> VsockServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    def _unlink(self) -> None:
        if self.path is None or self._inode is None:
            return
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        self._inode = None

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"<VsockServer {self.address}{where}>"


async def start_server(
    handler: StreamHandler,
    address: VsockAddress,
    *,
    limits: TransportLimits | None = None,
    sim_dir: SimDir = None,
    sim_cid: int | None = None,
) -> VsockServer:
    """Listen on ``address``; run ``await handler(reader, writer)`` for each connection.

    The writer is closed when the handler returns; an exception in the handler is logged
    (its type only) and closes only that connection.
    """
    limits = limits or TransportLimits()
    if not isinstance(address, VsockAddress):
        raise TransportError("invalid-address", f"expected a VsockAddress, got {address!r}")
    config = _vsock_sim.resolve(sim_dir, sim_cid)
    if config is not None:
        sock, effective, path = _vsock_sim.listen(config, address, limits)
    else:
        sock, effective = _vsock_real.listen(address, limits)
        path = None
    tasks: set[asyncio.Task[Any]] = set()
    transports: set[asyncio.BaseTransport] = set()
    vsock_server: VsockServer | None = None

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
        try:
            _tune_stream(writer, limits)
            await handler(reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # one connection fails, the server goes on
            logger.warning("connection handler on %s failed: %s", effective, type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(SERVER_CLOSE_TIMEOUT):
                    await writer.wait_closed()
            tasks.discard(task)

    def factory() -> _ServerProtocol:
        reader = asyncio.StreamReader(limit=limits.stream_limit)
        return _ServerProtocol(
            reader, on_connection, transports, lambda: vsock_server is None or vsock_server.closing
        )

    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(factory, sock=sock, backlog=limits.backlog)
    except BaseException:
        sock.close()
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    vsock_server = VsockServer(server, effective, path, tasks, transports)
    return vsock_server


# --- connecting -------------------------------------------------------------------------

_NOT_RETRYABLE = {errno.EAFNOSUPPORT, errno.EACCES, errno.EPERM, errno.EINVAL}


def _ensure_connected(sock: socket.socket) -> None:
    """Refuse a socket that never connected.

    A non-blocking AF_UNIX connect to a listener whose backlog is full fails with EAGAIN,
    which asyncio's ``sock_connect`` takes for "in progress" and then reports as success on
    a socket that has no peer. Treat that as a retryable, full backlog.
    """
    try:
        sock.getpeername()
    except OSError:
        raise BlockingIOError(errno.EAGAIN, "the listener's backlog is full") from None


def _classify(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError | FileNotFoundError | ConnectionResetError):
        return "connect-refused"
    if isinstance(exc, TimeoutError | BlockingIOError):
        return "connect-timeout"
    return "connect-failed"


class _Target:
    """Where a connect goes: family, sockaddr and the wording of failures."""

    def __init__(self, address: VsockAddress, sim_dir: SimDir) -> None:
        address.check_connectable()
        self.address = address
        self.config = _vsock_sim.resolve(sim_dir, None)
        if self.config is not None:
            self.sockaddr: Any = _vsock_sim.socket_path(self.config, address)
        else:
            self.sockaddr = (address.cid, address.port)

    def new_socket(self, limits: TransportLimits) -> socket.socket:
        if self.config is None:
            return _vsock_real.new_socket(limits)
        _vsock_sim.check_dir_for_connect(self.config)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        _vsock_sim.set_buffers(sock, limits)
        return sock

    def error(self, exc: BaseException, attempts: int, elapsed: float) -> TransportError:
        code = _classify(exc)
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        where = str(self.address)
        if self.config is not None:
            where += f" (simulated: {self.sockaddr})"
        message = (
            f"could not connect to {where} after {attempts} attempt(s) in {elapsed:.1f} s: "
            f"{reason}"
        )
        cid = self.address.cid
        if self.config is not None:
            own = self.config.cid
            hint = (
                f"; is the server running with the same {SIM_DIR_ENV} ({self.config.directory})"
                f" and listening on port {self.address.port}?"
            )
        else:
            own = _vsock_real.local_cid()
            hint = f"; is a server listening on port {self.address.port} of cid {cid}?"
        if own is not None and cid == own and cid != PARENT_CID:
            hint += (
                f" Note: cid {cid} is this side's own CID; from inside an enclave, the parent "
                f"is CID {PARENT_CID}"
            )
        elif cid != PARENT_CID:
            hint += (
                f" (from inside an enclave, the parent is CID {PARENT_CID}; from the parent, "
                f"use the enclave's CID from `nitro-cli describe-enclaves`)"
            )
        return TransportError(code, message + hint, address=self.address)


def _backoff(limits: TransportLimits, retry: int) -> float:
    return backoff(retry + 1, limits.backoff_initial, limits.backoff_max)


async def open_connection(
    address: VsockAddress,
    *,
    deadline: float | None = None,
    limits: TransportLimits | None = None,
    sim_dir: SimDir = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``address``, retrying with exponential backoff for ``deadline`` seconds.

    ``deadline`` (default ``limits.connect_deadline``) bounds the whole call; 0 means one
    attempt. Raises TransportError (connect-refused, connect-timeout, connect-failed,
    invalid-address, vsock-unavailable).
    """
    limits = limits or TransportLimits()
    if not isinstance(address, VsockAddress):
        raise TransportError("invalid-address", f"expected a VsockAddress, got {address!r}")
    target = _Target(address, sim_dir)
    budget = limits.connect_deadline if deadline is None else max(0.0, float(deadline))
    loop = asyncio.get_running_loop()
    start = loop.time()
    single = budget == 0  # one attempt, bounded by connect_attempt_timeout
    end = start + (limits.connect_attempt_timeout if single else budget)
    attempt = 0
    while True:
        attempt += 1
        sock = target.new_socket(limits)
        try:
            wait = max(0.001, min(limits.connect_attempt_timeout, end - loop.time()))
            async with asyncio.timeout(wait):
                await loop.sock_connect(sock, target.sockaddr)
            _ensure_connected(sock)
            reader, writer = await asyncio.open_connection(sock=sock, limit=limits.stream_limit)
        except OSError as exc:  # TimeoutError included
            sock.close()
            failure: OSError = exc
        except BaseException:
            sock.close()
            raise
        else:
            writer.transport.set_write_buffer_limits(high=limits.write_high_water)
            return reader, writer
        now = loop.time()
        pause = _backoff(limits, attempt - 1)
        if single or failure.errno in _NOT_RETRYABLE or now >= end:
            raise target.error(failure, attempt, now - start) from None
        await asyncio.sleep(min(pause, end - now))


def connect(
    address: VsockAddress,
    *,
    timeout: float | None = None,
    io_timeout: float | None = DEFAULT_IO_TIMEOUT,
    limits: TransportLimits | None = None,
    sim_dir: SimDir = None,
) -> socket.socket:
    """Blocking connect for simple scripts; same retries and errors as open_connection.

    ``timeout`` (default ``limits.connect_deadline``) bounds the connect, retries included;
    the returned socket has ``io_timeout`` as its timeout (None = blocking forever).
    """
    limits = limits or TransportLimits()
    if not isinstance(address, VsockAddress):
        raise TransportError("invalid-address", f"expected a VsockAddress, got {address!r}")
    target = _Target(address, sim_dir)
    budget = limits.connect_deadline if timeout is None else max(0.0, float(timeout))
    start = time.monotonic()
    single = budget == 0  # one attempt, bounded by connect_attempt_timeout
    end = start + (limits.connect_attempt_timeout if single else budget)
    attempt = 0
    while True:
        attempt += 1
        sock = target.new_socket(limits)
        try:
            sock.settimeout(max(0.001, min(limits.connect_attempt_timeout, end - time.monotonic())))
            sock.connect(target.sockaddr)
        except OSError as exc:
            sock.close()
            failure: OSError = exc
        except BaseException:
            sock.close()
            raise
        else:
            sock.settimeout(io_timeout)
            return sock
        now = time.monotonic()
        pause = _backoff(limits, attempt - 1)
        if single or failure.errno in _NOT_RETRYABLE or now >= end:
            raise target.error(failure, attempt, now - start) from None
        time.sleep(min(pause, end - now))
