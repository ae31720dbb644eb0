"""PROXY protocol version 2 headers (haproxy's proxy-protocol.txt §2.2): build and parse.

The parent's ingress can put one before the relayed TLS bytes so that the app sees the
client's address (``scope["client"]``), behind an NLB too. Only the binary v2 form: 16 fixed
bytes (signature, version/command, family/protocol, length) then the addresses; TLVs are
skipped. The parser is total: any other input raises ``ProxyHeaderError``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "HEADER_FIXED",
    "MAX_HEADER",
    "SIGNATURE",
    "ProxyHeaderError",
    "ProxyInfo",
    "build_header",
    "parse_header",
    "parse_length",
]

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
HEADER_FIXED = 16
"""Bytes before the address block: signature (12), ver/cmd, fam/proto, length (2)."""
MAX_ADDRESS_BLOCK = 512
"""Longest address block accepted (addresses plus TLVs)."""
MAX_HEADER = HEADER_FIXED + MAX_ADDRESS_BLOCK
_LOCAL, _PROXY = 0x20, 0x21
_TCP4, _TCP6 = 0x11, 0x21


class ProxyHeaderError(ValueError):
    """Not a PROXY v2 header we accept."""

    code = "bad-proxy-header"


@dataclass(frozen=True)
class ProxyInfo:
    """The client (source) and the address it connected to; None for a LOCAL header."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None


def build_header(
    source: tuple[str, int] | None, destination: tuple[str, int] | None
) -> bytes:
    """A PROXY v2 header for a TCP connection (LOCAL when an address is unknown)."""
    if source is None or destination is None:
        return SIGNATURE + bytes([_LOCAL, 0]) + b"\x00\x00"
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:  # e.g. an IPv4 client on a dual-stack listener
        src, dst = _as_v6(src), _as_v6(dst)
    family = _TCP4 if src.version == 4 else _TCP6
    block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return SIGNATURE + bytes([_PROXY, family]) + struct.pack("!H", len(block)) + block


def _as_v6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    return ip if ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{ip}")


def parse_length(fixed: bytes) -> int:
    """From the first 16 bytes, how many address bytes follow (ProxyHeaderError if bad)."""
    if len(fixed) != HEADER_FIXED or fixed[:12] != SIGNATURE:
        raise ProxyHeaderError("missing PROXY v2 signature")
    if fixed[12] not in (_LOCAL, _PROXY):
        raise ProxyHeaderError(f"unsupported version/command 0x{fixed[12]:02x}")
    (length,) = struct.unpack("!H", fixed[14:16])
    if length > MAX_ADDRESS_BLOCK:
        raise ProxyHeaderError(f"address block of {length} bytes (over {MAX_ADDRESS_BLOCK})")
    return length


def parse_header(header: bytes) -> ProxyInfo:
    """Parse one complete header (fixed part plus its address block)."""
    length = parse_length(header[:HEADER_FIXED])
    if len(header) != HEADER_FIXED + length:
        raise ProxyHeaderError(f"header is {len(header)} bytes, expected {HEADER_FIXED + length}")
    command, family, block = header[12], header[13], header[HEADER_FIXED:]
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    if command == _LOCAL:
        return ProxyInfo(None, None)
    if family == _TCP4 and length >= 12:
        src, dst = ipaddress.IPv4Address(block[0:4]), ipaddress.IPv4Address(block[4:8])
        sport, dport = struct.unpack("!HH", block[8:12])
    elif family == _TCP6 and length >= 36:
        src, dst = ipaddress.IPv6Address(block[0:16]), ipaddress.IPv6Address(block[16:32])
        sport, dport = struct.unpack("!HH", block[32:36])
    elif family in (_TCP4, _TCP6):
        raise ProxyHeaderError(f"address block of {length} bytes is too short")
    else:
        return ProxyInfo(None, None)  # UNSPEC / UNIX / UDP: no TCP client address
    return ProxyInfo((str(src), sport), (str(dst), dport))
