"""vsock addresses, transport limits and the transport's typed error.

Shared by the real AF_VSOCK backend, the AF_UNIX simulator and `enclave.transport`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from attestation.errors import CodedError, Kind
from enclave.wire import PARENT_CID as PARENT_CID  # the parent EC2 instance (NE_PARENT_VM_CID)

VMADDR_CID_HYPERVISOR = 0
VMADDR_CID_LOCAL = 1
VMADDR_CID_HOST = 2
VMADDR_CID_ANY = 0xFFFFFFFF  # bind wildcard: "this machine's CID"
VMADDR_PORT_ANY = 0xFFFFFFFF  # bind wildcard: "any free port"
MAX_U32 = 0xFFFFFFFF

SIM_DIR_ENV = "NITRO_VSOCK_SIM_DIR"
SIM_CID_ENV = "NITRO_VSOCK_SIM_CID"

_CID_HINT = (
    "the parent instance is always CID 3 (PARENT_CID); an enclave's CID is the EnclaveCID "
    "shown by `nitro-cli describe-enclaves` (>= 4)"
)
_RESERVED_CIDS = {
    VMADDR_CID_HYPERVISOR: "CID 0 (VMADDR_CID_HYPERVISOR)",
    VMADDR_CID_LOCAL: "CID 1 (VMADDR_CID_LOCAL)",
    VMADDR_CID_HOST: "CID 2 (VMADDR_CID_HOST)",
}


class TransportError(CodedError):
    """A vsock transport failure with a stable `code` naming what went wrong.

    Codes: invalid-address, connect-refused, connect-timeout, connect-failed, address-in-use,
    bind-failed, vsock-unavailable, sim-dir-unsafe, sim-cid-unset, invalid-limits.
    """

    codes = {
        "invalid-address": Kind.BAD_REQUEST,
        "connect-refused": Kind.UNAVAILABLE,
        "connect-timeout": Kind.UNAVAILABLE,
        "connect-failed": Kind.UNAVAILABLE,
        "address-in-use": Kind.CONFLICT,
        "bind-failed": Kind.UNAVAILABLE,
        "vsock-unavailable": Kind.UNAVAILABLE,
        "sim-dir-unsafe": Kind.INTERNAL,
        "sim-cid-unset": Kind.INTERNAL,
        "invalid-limits": Kind.INTERNAL,
    }
    show_code = True

    def __init__(self, code: str, message: str, *, address: VsockAddress | None = None) -> None:
        super().__init__(code, message)
        self.address = address


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_u32(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            hint = f"pass the number, e.g. {name}={int(value.strip())}"
        elif isinstance(value, str) and name == "cid":
            hint = f"vsock has no hostnames or IP addresses; {_CID_HINT}"
        else:
            hint = f"{name} is an unsigned 32-bit integer"
        raise TransportError(
            "invalid-address", f"{name} must be an integer, not {_describe(value)}: {hint}"
        )
    if not 0 <= value <= MAX_U32:
        raise TransportError(
            "invalid-address",
            f"{name} {value} is out of range: vsock {name}s are 0..{MAX_U32} (unsigned 32-bit)",
        )
    return value


_ADDRESS_RE = re.compile(r"^\s*(?:vsock://)?(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True, slots=True)
class VsockAddress:
    """A vsock endpoint: context id (which VM) and port (which service on it)."""

    cid: int
    port: int

    def __post_init__(self) -> None:
        _check_u32("cid", self.cid)
        _check_u32("port", self.port)

    @classmethod
    def parse(cls, text: str) -> VsockAddress:
        """Parse ``"CID:PORT"`` (optionally ``vsock://CID:PORT``), e.g. ``"3:8000"``."""
        match = _ADDRESS_RE.match(text) if isinstance(text, str) else None
        if match is None:
            raise TransportError(
                "invalid-address",
                f"expected CID:PORT with two unsigned integers (e.g. 3:8000), got "
                f"{_describe(text)}; {_CID_HINT}",
            )
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"cid {self.cid} port {self.port}"

    def check_connectable(self) -> None:
        """Raise `invalid-address` unless a client can connect to this address."""
        if self.cid == VMADDR_CID_ANY:
            raise TransportError(
                "invalid-address",
                f"cannot connect to cid {self.cid} (VMADDR_CID_ANY) port {self.port}: the "
                f"wildcard is for binding a server; connect to the peer's CID instead: "
                f"{_CID_HINT}",
                address=self,
            )
        if self.cid in _RESERVED_CIDS:
            raise TransportError(
                "invalid-address",
                f"cannot connect to cid {self.cid} port {self.port}: "
                f"{_RESERVED_CIDS[self.cid]} does not reach a Nitro parent or enclave; "
                f"{_CID_HINT}",
                address=self,
            )
        if self.port == VMADDR_PORT_ANY:
            raise TransportError(
                "invalid-address",
                f"cannot connect to cid {self.cid} port {self.port} (VMADDR_PORT_ANY): the "
                f"wildcard port is only for binding; name the server's port",
                address=self,
            )


def _positive(name: str, value: float, *, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TransportError("invalid-limits", f"{name} must be a number, not {value!r}")
    if integer and not isinstance(value, int):
        raise TransportError("invalid-limits", f"{name} must be an integer, not {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise TransportError("invalid-limits", f"{name} must be positive and finite, not {value}")


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """Sizes and waits of the transport. Every field is a bound; all are positive."""

    socket_buffer: int = 4 * 1024 * 1024
    """Kernel buffer per socket (SO_SNDBUF/SO_RCVBUF; SO_VM_SOCKETS_BUFFER_SIZE on AF_VSOCK)."""
    stream_limit: int = 1024 * 1024
    """asyncio StreamReader limit: reading pauses when twice this much is buffered."""
    write_high_water: int = 1024 * 1024
    """StreamWriter.drain() waits while more than this is queued in user space."""
    backlog: int = 128
    """listen() backlog."""
    connect_deadline: float = 10.0
    """Default total time for connecting, retries included (seconds)."""
    connect_attempt_timeout: float = 3.0
    """Longest wait for one connect attempt (seconds)."""
    backoff_initial: float = 0.02
    """First pause between connect attempts; doubles each retry (seconds)."""
    backoff_max: float = 1.0
    """Longest pause between connect attempts (seconds)."""

    def __post_init__(self) -> None:
        for name in ("socket_buffer", "stream_limit", "write_high_water", "backlog"):
            _positive(name, getattr(self, name), integer=True)
        for name in ("connect_deadline", "connect_attempt_timeout", "backoff_initial",
                     "backoff_max"):
            _positive(name, getattr(self, name))
