"""The vsock simulator: ``(cid, port)`` is an AF_UNIX stream socket in a private directory.

The directory comes from an explicit argument or ``NITRO_VSOCK_SIM_DIR``; the CID that
``VMADDR_CID_ANY`` binds as comes from an explicit argument or ``NITRO_VSOCK_SIM_CID``.
Socket files are named ``<cid>-<port>.sock``. The directory is created with mode 0700 and
refused when other users can reach it; a stale socket file (nobody listening) is removed
before binding, a live one or a non-socket file never is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from enclave.transport._vsock_address import (
    SIM_CID_ENV,
    SIM_DIR_ENV,
    VMADDR_CID_ANY,
    VMADDR_PORT_ANY,
    TransportError,
    TransportLimits,
    VsockAddress,
)

UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
EPHEMERAL_PORTS = (49152, 65535)  # where VMADDR_PORT_ANY picks a free port
EPHEMERAL_ATTEMPTS = 64


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Resolved simulation settings."""

    directory: Path
    cid: int | None  # what VMADDR_CID_ANY binds as; None = not configured


def resolve(sim_dir: str | os.PathLike[str] | None, sim_cid: int | None) -> SimConfig | None:
    """The simulation settings, or None when running on real AF_VSOCK."""
    raw_dir = os.fspath(sim_dir) if sim_dir is not None else os.environ.get(SIM_DIR_ENV, "")
    if not raw_dir:
        return None
    if sim_cid is None:
        raw_cid = os.environ.get(SIM_CID_ENV, "").strip()
        if raw_cid:
            if not raw_cid.isdigit():
                raise TransportError(
                    "invalid-address",
                    f"{SIM_CID_ENV}={raw_cid!r} is not a CID: set it to the simulated "
                    f"enclave's CID, an integer >= 4 (e.g. 16)",
                )
            sim_cid = int(raw_cid)
    if sim_cid is not None:
        VsockAddress(sim_cid, 0)  # validates the range
    return SimConfig(Path(raw_dir).absolute(), sim_cid)


def socket_path(config: SimConfig, address: VsockAddress) -> str:
    """The AF_UNIX path standing for ``address``."""
    path = str(config.directory / f"{address.cid}-{address.port}.sock")
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise TransportError(
            "invalid-address",
            f"simulated vsock path for {address} is {len(os.fsencode(path))} bytes, over "
            f"the AF_UNIX limit of {UNIX_PATH_MAX}: choose a shorter {SIM_DIR_ENV} "
            f"(now {config.directory})",
            address=address,
        )
    return path


def _check_private(directory: Path, st: os.stat_result) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise TransportError(
            "sim-dir-unsafe", f"{SIM_DIR_ENV} {directory} exists and is not a directory"
        )
    if st.st_uid != os.geteuid():
        raise TransportError(
            "sim-dir-unsafe",
            f"simulated vsock directory {directory} belongs to uid {st.st_uid}, not to this "
            f"process (uid {os.geteuid()}); use a directory of your own",
        )
    if st.st_mode & 0o077:
        raise TransportError(
            "sim-dir-unsafe",
            f"simulated vsock directory {directory} has mode {oct(st.st_mode & 0o777)}: other "
            f"users could reach or replace its sockets; use a private directory (mode 0700; "
            f"it is created so when missing)",
        )


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` with mode 0700 if missing; refuse one other users can reach."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(directory, 0o700)
        os.chmod(directory, 0o700)  # in case the umask removed bits we did not want
    except FileExistsError:
        pass
    except OSError as exc:
        raise TransportError(
            "bind-failed", f"cannot create simulated vsock directory {directory}: {exc.strerror}"
        ) from None
    _check_private(directory, os.stat(directory))


def check_dir_for_connect(config: SimConfig) -> None:
    """Refuse to connect through a directory other users control (if it exists yet)."""
    try:
        st = os.stat(config.directory)
    except OSError:
        return  # not there yet: the connect attempt fails and is retried
    _check_private(config.directory, st)


def _remove_if_stale(path: str, address: VsockAddress) -> None:
    """Unlink ``path`` if it is a socket nobody listens on; raise if it is in use."""
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(before.st_mode):
        raise TransportError(
            "address-in-use",
            f"cannot listen on {address}: {path} exists and is not a socket; not removing it",
            address=address,
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # stale: nobody accepts on it
    except FileNotFoundError:
        return
    except BlockingIOError:  # backlog full: someone is listening
        raise TransportError(
            "address-in-use", f"another server is listening on {address} ({path})",
            address=address,
        ) from None
    else:
        raise TransportError(
            "address-in-use", f"another server is listening on {address} ({path})",
            address=address,
        )
    finally:
        probe.close()
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino):
        os.unlink(path)


def _bind(path: str, address: VsockAddress) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        for _ in range(3):
            try:
                sock.bind(path)
                return sock
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise TransportError(
                        "bind-failed", f"cannot listen on {address} ({path}): {exc.strerror}",
                        address=address,
                    ) from None
            _remove_if_stale(path, address)
        raise TransportError(
            "address-in-use", f"{address} ({path}) keeps being taken", address=address
        )
    except BaseException:
        sock.close()
        raise


def listen(
    config: SimConfig, address: VsockAddress, limits: TransportLimits
) -> tuple[socket.socket, VsockAddress, str]:
    """A listening, non-blocking AF_UNIX socket standing for ``address``.

    Returns the socket, the effective address (VMADDR_CID_ANY replaced by the simulated CID,
    VMADDR_PORT_ANY by the chosen port) and the socket path.
    """
    cid = address.cid
    if cid == VMADDR_CID_ANY:
        if config.cid is None:
            raise TransportError(
                "sim-cid-unset",
                f"binding VMADDR_CID_ANY port {address.port} in simulation needs the simulated "
                f"CID of this side: set {SIM_CID_ENV} (e.g. 16 for an enclave) or pass sim_cid=",
                address=address,
            )
        cid = config.cid
    ensure_private_dir(config.directory)
    if address.port != VMADDR_PORT_ANY:
        ports = [address.port]
    else:
        low, high = EPHEMERAL_PORTS
        ports = random.sample(range(low, high + 1), EPHEMERAL_ATTEMPTS)
    error: TransportError | None = None
    for port in ports:
        effective = VsockAddress(cid, port)
        path = socket_path(config, effective)
        try:
            sock = _bind(path, effective)
        except TransportError as exc:
            if exc.code != "address-in-use":
                raise
            error = exc
            continue
        try:
            sock.listen(limits.backlog)
            sock.setblocking(False)
            set_buffers(sock, limits)
        except BaseException:
            sock.close()
            raise
        return sock, effective, path
    assert error is not None
    raise error


def set_buffers(sock: socket.socket, limits: TransportLimits) -> None:
    """Large kernel buffers: the sender's SO_SNDBUF bounds AF_UNIX stream throughput."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):  # capped by the kernel; not an error
            sock.setsockopt(socket.SOL_SOCKET, option, limits.socket_buffer)
