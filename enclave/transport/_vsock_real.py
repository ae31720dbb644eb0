"""Real AF_VSOCK sockets (Linux): creation, buffer sizes, binding, the local CID."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import socket
import struct

from enclave.transport._vsock_address import (
    SIM_DIR_ENV,
    VMADDR_CID_ANY,
    TransportError,
    TransportLimits,
    VsockAddress,
)

VSOCK_DEVICE = "/dev/vsock"
IOCTL_VM_SOCKETS_GET_LOCAL_CID = getattr(socket, "IOCTL_VM_SOCKETS_GET_LOCAL_CID", 0x7B9)


def new_socket(limits: TransportLimits) -> socket.socket:
    """A non-blocking AF_VSOCK stream socket with large buffers."""
    family = getattr(socket, "AF_VSOCK", None)
    try:
        if family is None:
            raise OSError(errno.EAFNOSUPPORT, "AF_VSOCK not supported by this Python")
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise TransportError(
            "vsock-unavailable",
            f"AF_VSOCK is not available here ({exc.strerror}); outside an EC2 instance with "
            f"Nitro Enclaves, run the simulator: set {SIM_DIR_ENV}=DIR (a private directory)",
        ) from None
    sock.setblocking(False)
    set_buffers(sock, limits)
    return sock


def set_buffers(sock: socket.socket, limits: TransportLimits) -> None:
    """vsock keeps its own buffer size (default 256 KiB); raise its maximum, then the size."""
    level = getattr(socket, "AF_VSOCK", 40)
    for name in ("SO_VM_SOCKETS_BUFFER_MAX_SIZE", "SO_VM_SOCKETS_BUFFER_SIZE"):
        option = getattr(socket, name, None)
        if option is None:
            continue
        with contextlib.suppress(OSError):  # older kernels cap it; not an error
            sock.setsockopt(level, option, limits.socket_buffer)


def local_cid() -> int | None:
    """This machine's CID (3 on a parent instance), or None when it cannot be read."""
    try:
        with open(VSOCK_DEVICE, "rb") as device:
            raw = fcntl.ioctl(device, IOCTL_VM_SOCKETS_GET_LOCAL_CID, struct.pack("I", 0))
    except OSError:
        return None
    return int(struct.unpack("I", raw)[0])


def listen(address: VsockAddress, limits: TransportLimits) -> tuple[socket.socket, VsockAddress]:
    """A listening AF_VSOCK socket bound to ``address``, and the effective address."""
    sock = new_socket(limits)
    try:
        try:
            sock.bind((address.cid, address.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise TransportError(
                    "address-in-use",
                    f"cannot listen on {address}: another server holds the port (a running "
                    f"vsock-proxy service takes port 8000 on CID 3)",
                    address=address,
                ) from None
            hint = ""
            if exc.errno == errno.EADDRNOTAVAIL:
                hint = (
                    f"; cid {address.cid} is not this machine's CID (it is {local_cid()}): "
                    f"inside an enclave bind VMADDR_CID_ANY, on the parent bind 3 or "
                    f"VMADDR_CID_ANY"
                )
            raise TransportError(
                "bind-failed", f"cannot listen on {address}: {exc.strerror}{hint}",
                address=address,
            ) from None
        sock.listen(limits.backlog)
        cid, port = sock.getsockname()
    except BaseException:
        sock.close()
        raise
    if cid == VMADDR_CID_ANY:
        own = local_cid()
        cid = own if own is not None else VMADDR_CID_ANY
    return sock, VsockAddress(int(cid), int(port))
