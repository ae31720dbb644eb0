"""Device transports for the NSM client: ``bytes (CBOR request) -> bytes (CBOR response)``.

* ``DeviceTransport`` — the real ``/dev/nsm``: one ``ioctl(NSM_IOCTL_RAW)`` per request with a
  32-byte ``struct nsm_raw`` pointing at ctypes buffers (nitro-spec §1.1).
* ``SocketTransport`` — the simulated NSM (``python -m simulator.nsm``) over AF_UNIX; each
  request is one connection carrying ``u32 big-endian length ‖ CBOR`` each way.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from enclave.nsm.codec import (
    NSM_REQUEST_MAX_SIZE,
    NSM_RESPONSE_MAX_SIZE,
    SOCKET_FRAME_HEADER,
    NsmError,
)

NSM_DEVICE = "/dev/nsm"
NSM_SOCKET_ENV = "NITRO_NSM_SOCKET"
NSM_SOCKET_TIMEOUT = 30.0
"""Seconds a call to the simulated NSM may take end to end (connect, send, answer)."""
FRAME_HEADER = SOCKET_FRAME_HEADER  # defined once, in enclave.nsm.codec
"""The length prefix of a frame on the simulated-NSM socket."""

UNAVAILABLE_MESSAGE = (
    "no /dev/nsm: not inside a Nitro Enclave; set NITRO_NSM_SOCKET to use the simulator"
)


class NsmUnavailableError(NsmError):
    """Neither the NSM device nor the simulated NSM can be reached (code ``DeviceUnavailable``)."""

    def __init__(self, message: str = UNAVAILABLE_MESSAGE) -> None:
        super().__init__("DeviceUnavailable", message)


# -- /dev/nsm ---------------------------------------------------------------------------------


class _NsmIovec(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _NsmRaw(ctypes.Structure):
    """``struct nsm_raw { struct nsm_iovec request, response; }`` (linux uapi ``nsm.h``)."""

    _fields_ = [("request", _NsmIovec), ("response", _NsmIovec)]


def _iowr(magic: int, nr: int, size: int) -> int:
    """Linux ``_IOWR(magic, nr, size)``: direction read|write (3) in the top two bits."""
    return (3 << 30) | (size << 16) | (magic << 8) | nr


NSM_IOCTL_MAGIC = 0x0A
NSM_IOCTL_RAW = _iowr(NSM_IOCTL_MAGIC, 0, ctypes.sizeof(_NsmRaw))
assert NSM_IOCTL_RAW == 0xC0200A00, "struct nsm_raw must be 32 bytes"

IoctlFunction = Callable[[int, int, Any, bool], Any]


class DeviceTransport:
    """Talks to ``/dev/nsm`` with the raw ioctl; thread-safe (the kernel serializes calls).

    ``ioctl`` is ``fcntl.ioctl``; tests pass a stand-in that behaves like the kernel driver.
    """

    def __init__(self, path: str = NSM_DEVICE, *, ioctl: IoctlFunction = fcntl.ioctl) -> None:
        try:
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NsmUnavailableError() from None
        except OSError as e:
            raise NsmUnavailableError(f"cannot open {path}: {e.strerror}") from None
        self._path = path
        self._ioctl = ioctl
        self._close_lock = threading.Lock()

    def __call__(self, request: bytes) -> bytes:
        if len(request) > NSM_REQUEST_MAX_SIZE:
            raise NsmError("InputTooLarge", f"request of {len(request)} bytes")
        fd = self._fd
        if fd is None:
            raise NsmError("InternalError", f"{self._path} is closed")
        req_buf = ctypes.create_string_buffer(bytes(request), max(len(request), 1))
        resp_buf = ctypes.create_string_buffer(NSM_RESPONSE_MAX_SIZE)
        raw = _NsmRaw(
            _NsmIovec(ctypes.addressof(req_buf), len(request)),
            _NsmIovec(ctypes.addressof(resp_buf), NSM_RESPONSE_MAX_SIZE),
        )
        try:
            self._ioctl(fd, NSM_IOCTL_RAW, raw, True)
        except OSError as e:
            if e.errno == errno.EMSGSIZE:
                raise NsmError("InputTooLarge", "the driver refused the request size") from None
            raise NsmError("InternalError", f"ioctl on {self._path}: {e.strerror}") from None
        length = raw.response.len  # the driver writes the answer's length back
        if length > NSM_RESPONSE_MAX_SIZE:
            raise NsmError("InvalidResponse", f"driver reported {length} response bytes")
        return ctypes.string_at(resp_buf, length)

    def close(self) -> None:
        """Close the device file (idempotent)."""
        with self._close_lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


# -- simulated NSM over AF_UNIX ---------------------------------------------------------------


class SocketTransport:
    """Talks to the simulated NSM on an AF_UNIX socket; one connection per request."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = NSM_SOCKET_TIMEOUT):
        self._path = os.fspath(path)
        self._timeout = timeout

    @property
    def path(self) -> str:
        """The socket path."""
        return self._path

    def __call__(self, request: bytes) -> bytes:
        if len(request) > NSM_REQUEST_MAX_SIZE:
            raise NsmError("InputTooLarge", f"request of {len(request)} bytes")
        deadline = time.monotonic() + self._timeout
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self._timeout)
                try:
                    sock.connect(self._path)
                except (FileNotFoundError, ConnectionRefusedError) as e:
                    raise NsmUnavailableError(
                        f"the simulated NSM at {self._path} is not listening ({e.strerror})"
                    ) from None
                sock.sendall(FRAME_HEADER.pack(len(request)) + bytes(request))
                (length,) = FRAME_HEADER.unpack(_recv_exact(sock, FRAME_HEADER.size, deadline))
                if length > NSM_RESPONSE_MAX_SIZE:
                    raise NsmError("InvalidResponse", f"response frame of {length} bytes")
                return _recv_exact(sock, length, deadline)
        except NsmError:
            raise
        except TimeoutError:
            raise NsmError(
                "InternalError", f"the simulated NSM did not answer within {self._timeout} s"
            ) from None
        except OSError as e:
            raise NsmError("InternalError", f"simulated NSM socket: {e}") from None


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise NsmError("InternalError", "the simulated NSM closed the connection")
        buf += chunk
    return bytes(buf)


def default_transport(device: str = NSM_DEVICE) -> Callable[[bytes], bytes]:
    """``$NITRO_NSM_SOCKET`` if set (the simulator), else the device; else NsmUnavailableError."""
    path = os.environ.get(NSM_SOCKET_ENV)
    if path:
        return SocketTransport(path)
    if not os.path.exists(device):
        raise NsmUnavailableError()
    return DeviceTransport(device)
