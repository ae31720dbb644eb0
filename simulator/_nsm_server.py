"""The simulated ``/dev/nsm`` as an AF_UNIX server: ``u32 big-endian length ‖ CBOR`` each way.

A connection may carry any number of requests, one at a time (the client in
``enclave.nsm._device`` opens one per request). Requests over ``NSM_REQUEST_MAX_SIZE`` get
``{"Error": "InputTooLarge"}`` (what the client sees from the kernel's EMSGSIZE) and the
connection is closed, since the rest of the frame is not read. Every read and write has a
deadline; a misbehaving client only loses its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from enclave.nsm.codec import (
    NSM_REQUEST_MAX_SIZE,
    NSM_RESPONSE_MAX_SIZE,
    ErrorResponse,
    encode_response,
)
from enclave.nsm.codec import SOCKET_FRAME_HEADER as FRAME_HEADER

log = logging.getLogger("simulator.nsm")


class _Handles(Protocol):
    def handle(self, request: bytes) -> bytes: ...


@dataclass(frozen=True)
class NsmServerLimits:
    """Sizes and deadlines of the simulated-NSM socket."""

    max_request: int = NSM_REQUEST_MAX_SIZE
    max_response: int = NSM_RESPONSE_MAX_SIZE
    idle_timeout: float = 60.0
    """Seconds a connection may wait before sending the next request's header."""
    read_timeout: float = 10.0
    """Seconds to receive a request's body once its header arrived."""
    write_timeout: float = 10.0
    """Seconds to hand a response to the client."""
    max_connections: int = 64
    """Connections served at once; more are closed at once."""


_TOO_LARGE = encode_response(ErrorResponse("InputTooLarge"))
_INTERNAL = encode_response(ErrorResponse("InternalError"))


async def serve_nsm(
    nsm: _Handles,
    socket_path: str | os.PathLike[str],
    *,
    limits: NsmServerLimits | None = None,
) -> asyncio.Server:
    """Start serving ``nsm.handle`` on the AF_UNIX ``socket_path``; returns the server.

    A stale socket file at ``socket_path`` is replaced; any other file there is an error. The
    socket is mode 0600 whatever the umask: it is bound in a private directory, restricted,
    then renamed into place, so no other user can ever connect (``/dev/nsm`` is the enclave's).
    """
    lim = limits or NsmServerLimits()
    path = Path(socket_path)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        path.unlink()
    active = 0

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        if active >= lim.max_connections:
            writer.close()
            return
        active += 1
        try:
            await _serve_connection(nsm, reader, writer, lim)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # never let one connection take the server down
            log.exception("simulated NSM connection failed")
        finally:
            active -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), lim.write_timeout)

    sock = bind_private_unix_socket(path)
    try:
        return await asyncio.start_unix_server(on_connection, sock=sock)
    except BaseException:
        sock.close()
        raise


def bind_private_unix_socket(path: str | os.PathLike[str], mode: int = 0o600) -> socket.socket:
    """An AF_UNIX socket bound at ``path`` with ``mode``, never reachable with a looser one.

    bind() creates the file with the umask's mode; binding inside a fresh 0700 directory,
    chmod-ing, then renaming into place leaves no moment where another user could connect.
    """
    target = Path(path)
    staging = Path(tempfile.mkdtemp(prefix=".bind-", dir=target.parent))  # mode 0700
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        staged = staging / "s"
        sock.bind(os.fspath(staged))
        os.chmod(staged, mode)
        os.replace(staged, target)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            for leftover in staging.iterdir():
                leftover.unlink()
            staging.rmdir()
    return sock


async def _serve_connection(
    nsm: _Handles,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    lim: NsmServerLimits,
) -> None:
    while True:
        try:
            header = await asyncio.wait_for(reader.readexactly(FRAME_HEADER.size), lim.idle_timeout)
        except asyncio.IncompleteReadError:
            return  # the client closed between requests
        (length,) = FRAME_HEADER.unpack(header)
        if length > lim.max_request:
            await _send(writer, _TOO_LARGE, lim)
            return
        request = await asyncio.wait_for(reader.readexactly(length), lim.read_timeout)
        response = await asyncio.to_thread(nsm.handle, request)
        if len(response) > lim.max_response:
            log.error("simulated NSM response of %d bytes exceeds the limit", len(response))
            response = _INTERNAL
        await _send(writer, response, lim)


async def _send(writer: asyncio.StreamWriter, payload: bytes, lim: NsmServerLimits) -> None:
    writer.write(FRAME_HEADER.pack(len(payload)) + payload)
    await asyncio.wait_for(writer.drain(), lim.write_timeout)
