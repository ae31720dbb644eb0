"""The vsock-proxy allowlist: parse the YAML file and check one destination against it.

Same file format and matching rule as AWS vsock-proxy (`check_allowlist`): an entry matches when
its port equals the destination port and its address equals the destination host, or resolves
to the same IP as the destination host. Differences, on purpose: host names compare
case-insensitively and without a trailing dot (DNS names are case-insensitive), and an entry
whose address does not resolve is skipped instead of aborting the whole check (vsock-proxy
stops at the first such entry: aws-nitro-enclaves-cli #648).
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from attestation.errors import CodedError, Kind

DEFAULT_ALLOWLIST = Path(__file__).with_name("vsock-proxy.yaml")
"""The packaged allowlist: KMS endpoints of the main regions (like AWS's default file)."""

MAX_ALLOWLIST_BYTES = 1 << 20
"""A bigger allowlist file is refused unread."""
MAX_ENTRIES = 10_000
"""Entries in one allowlist."""
MAX_HOST_LENGTH = 253
"""Longest DNS name (RFC 1035) or IP literal accepted as an address."""


class AllowlistError(CodedError):
    """The allowlist could not be read, or a destination is not on it. `code` is stable."""

    codes = {
        "allowlist-malformed": Kind.INTERNAL,
        "allowlist-unreadable": Kind.INTERNAL,
        "destination-not-allowed": Kind.FORBIDDEN,
    }
    show_code = True


class IpFamily(enum.Enum):
    """Which addresses resolution may return (vsock-proxy `-4`, `-6`, or neither)."""

    ANY = socket.AF_UNSPEC
    IPV4 = socket.AF_INET
    IPV6 = socket.AF_INET6


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, IpFamily], Sequence[IpAddress]]
"""host, family -> its addresses in resolver order; raises OSError when it does not resolve."""


@dataclass(frozen=True)
class AllowedEndpoint:
    """One allowlist entry."""

    address: str
    port: int


def parse_allowlist(text: str | bytes) -> tuple[AllowedEndpoint, ...]:
    """Parse vsock-proxy YAML (`allowlist: [{address: HOST, port: PORT}, ...]`)."""
    if len(text) > MAX_ALLOWLIST_BYTES:
        raise AllowlistError("allowlist-malformed", f"larger than {MAX_ALLOWLIST_BYTES} bytes")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise AllowlistError("allowlist-malformed", f"bad YAML{where}") from None
    except RecursionError:
        raise AllowlistError("allowlist-malformed", "YAML nests too deeply") from None
    if not isinstance(doc, dict) or "allowlist" not in doc:
        raise AllowlistError("allowlist-malformed", "no 'allowlist' field")
    raw = doc["allowlist"]
    if not isinstance(raw, list):
        raise AllowlistError("allowlist-malformed", "'allowlist' is not a list")
    if len(raw) > MAX_ENTRIES:
        raise AllowlistError("allowlist-malformed", f"more than {MAX_ENTRIES} entries")
    return tuple(_parse_entry(i, item) for i, item in enumerate(raw))


def _parse_entry(index: int, item: object) -> AllowedEndpoint:
    where = f"entry {index}"
    if not isinstance(item, dict):
        raise AllowlistError("allowlist-malformed", f"{where}: not a mapping")
    address, port = item.get("address"), item.get("port")
    if not isinstance(address, str) or not address.strip():
        raise AllowlistError("allowlist-malformed", f"{where}: no address field")
    if len(address) > MAX_HOST_LENGTH:
        raise AllowlistError("allowlist-malformed", f"{where}: address longer than 253 chars")
    if isinstance(port, bool) or not isinstance(port, int):
        raise AllowlistError("allowlist-malformed", f"{where}: no port field or invalid type")
    if not 0 < port < 65536:
        raise AllowlistError("allowlist-malformed", f"{where}: port {port} out of range")
    return AllowedEndpoint(address.strip(), port)


def load_allowlist(path: str | Path | None = None) -> tuple[AllowedEndpoint, ...]:
    """Read and parse an allowlist file (None: the packaged default)."""
    path = Path(path) if path is not None else DEFAULT_ALLOWLIST
    try:
        with path.open("rb") as f:
            data = f.read(MAX_ALLOWLIST_BYTES + 1)
    except OSError as exc:
        raise AllowlistError("allowlist-unreadable", f"{path}: {exc.strerror or exc}") from None
    return parse_allowlist(data)


def resolve(host: str, family: IpFamily = IpFamily.ANY) -> list[IpAddress]:
    """The host's addresses, in resolver order, without duplicates (system resolver)."""
    literal = _ip_literal(host)
    if literal is not None:
        if family is IpFamily.IPV4 and literal.version != 4:
            raise OSError(f"{host} is not an IPv4 address")
        if family is IpFamily.IPV6 and literal.version != 6:
            raise OSError(f"{host} is not an IPv6 address")
        return [literal]
    infos = socket.getaddrinfo(host, None, family.value, socket.SOCK_STREAM)
    out: list[IpAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    if not out:
        raise OSError(f"{host} has no address")
    return out


def same_host(a: str, b: str) -> bool:
    """Host names equal as DNS names (case-insensitive, trailing dot ignored), or equal IPs."""
    ia, ib = _ip_literal(a), _ip_literal(b)
    if ia is not None or ib is not None:
        return ia == ib
    return a.rstrip(".").lower() == b.rstrip(".").lower()


def check_destination(
    allowlist: Sequence[AllowedEndpoint],
    host: str,
    port: int,
    *,
    family: IpFamily = IpFamily.ANY,
    resolver: Resolver = resolve,
) -> AllowedEndpoint:
    """The entry that allows `host:port`, or AllowlistError("destination-not-allowed").

    Name match first (no DNS); then the first address of `host` against every address of
    each same-port entry, as vsock-proxy does.
    """
    same_port = [e for e in allowlist if e.port == port]
    for entry in same_port:
        if same_host(entry.address, host):
            return entry
    refused = AllowlistError(
        "destination-not-allowed", f"{host}:{port} is not on the allowlist"
    )
    if not same_port:
        raise refused
    try:
        target = resolver(host, family)[0]
    except (OSError, IndexError, UnicodeError):
        raise AllowlistError(
            "destination-not-allowed",
            f"{host}:{port} matches no allowlist address by name and does not resolve",
        ) from None
    for entry in same_port:
        try:
            addresses = resolver(entry.address, family)
        except (OSError, UnicodeError):
            continue
        if target in addresses:
            return entry
    raise refused


def _ip_literal(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
