"""Attested HTTPS: check that a server's TLS certificate is the one its enclave attests.

Over one TLS connection: handshake (any certificate: trust comes from the document, not from
a CA), ``GET /.well-known/nitro-attestation?nonce=<fresh random>`` on that same connection,
verify the document (signature, chain to the pinned root, PCRs, nonce, freshness, not
debug), then check the binding (``attestation.binding``): by default its ``public_key`` must
be the SPKI of the certificate presented on this connection. Nothing of the caller's is sent
before that holds.

    conn = attest_url("https://enclave.example:443", Expectations(pcrs={0: "..."}))
    conn.document.pcrs, conn.cert_der        # the verified document and the pinned cert

For requests, ``attestation.https`` gives httpx clients that do this on their first
connection and then refuse any connection that presents another certificate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

from .binding import ATTESTATION_PATH, Binding, check_binding
from .document import AttestationDocument
from .errors import MalformedError
from .policy import Policy
from .verifier import Verifier

__all__ = [
    "DEFAULT_TIMEOUT",
    "NONCE_BYTES",
    "AttestedConnection",
    "Expectations",
    "attest_url",
    "client_tls_context",
    "split_url",
]

NONCE_BYTES = 32
"""Fresh random bytes per attestation (nitriding's route takes exactly 20)."""
NITRIDING_NONCE_BYTES = 20
EVERVAULT_MAX_AGE = timedelta(seconds=300)
"""evervault caches its document (no nonce): freshness is the only replay bound."""
DEFAULT_TIMEOUT = 10.0
"""Seconds for connecting, the handshake and the document."""
_ROUTES: dict[str, str] = {
    "public-key": ATTESTATION_PATH,
    "nitriding": "/enclave/attestation",
    "evervault": "/.well-known/attestation",
}


def client_tls_context() -> ssl.SSLContext:
    """TLS without CA checks: the certificate is trusted by its attestation, then pinned."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


def split_url(url: str) -> tuple[str, int]:
    """(host, port) of an ``https://`` URL (ValueError otherwise)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"expected an https://HOST[:PORT] URL, got {url[:80]!r}")
    return parts.hostname, parts.port or 443


def _server_name(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None  # no SNI for an IP address


@dataclass(frozen=True)
class Expectations:
    """What the attested server must satisfy; ``verifier`` holds the trusted roots."""

    verifier: Verifier = field(default_factory=Verifier)
    pcrs: Mapping[int, bytes | str] | None = None
    max_age: timedelta | None = None
    allow_debug: bool = False
    binding: Binding = "public-key"

    def new_nonce(self) -> bytes:
        return os.urandom(NITRIDING_NONCE_BYTES if self.binding == "nitriding" else NONCE_BYTES)

    def target(self, nonce: bytes) -> str:
        """The request target that asks for a document with ``nonce``."""
        return f"{_ROUTES[self.binding]}?nonce={nonce.hex()}"

    def check(self, body: bytes, cert_der: bytes, nonce: bytes) -> AttestationDocument:
        """Verify the fetched document, then its binding to ``cert_der`` (AttestationError)."""
        max_age = self.max_age
        if self.binding == "evervault" and max_age is None:
            max_age = EVERVAULT_MAX_AGE
        policy = Policy(
            pcrs=self.pcrs,
            nonce=None if self.binding == "evervault" else nonce,
            max_age=max_age,
            allow_debug=self.allow_debug,
        )
        document = self.verifier.verify(_document_bytes(body), policy)
        check_binding(document, cert_der, self.binding)
        return document


def _document_bytes(body: bytes) -> bytes:
    """Raw CBOR (ours), base64 text (nitriding) or JSON with the document (evervault)."""
    if body[:1] in (b"\x84", b"\xd2"):
        return body
    text = body.strip()
    if text.startswith(b"{"):
        try:
            obj = json.loads(text)
        except ValueError:
            raise MalformedError("the server's answer is neither a document nor JSON") from None
        value = next((obj[k] for k in ("attestation_doc", "document") if k in obj), None)
        if not isinstance(value, str):
            raise MalformedError("the server's JSON answer carries no document")
        text = value.encode()
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedError("the server's answer is not a document (raw CBOR or base64)") from None


@dataclass
class AttestedConnection:
    """An open TLS connection whose certificate is attested; ``close()`` when done."""

    tls: ssl.SSLSocket
    host: str
    document: AttestationDocument
    cert_der: bytes
    nonce: bytes
    seconds: float

    @property
    def cert_sha256(self) -> str:
        return hashlib.sha256(self.cert_der).hexdigest()

    def close(self) -> None:
        self.tls.close()

    def __enter__(self) -> AttestedConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exchange(
    write: Callable[[bytes], object], read: Callable[[], bytes], host: str, target: str
) -> bytes:
    """GET ``target`` on an open stream; the 200 body (MalformedError otherwise)."""
    from ._http_exchange import ResponseParser, get_request

    write(get_request(host, target))
    parser = ResponseParser()
    while not parser.done:
        parser.feed(read())
    response = parser.response()
    if response.status != 200:
        raise MalformedError(
            f"the server answered {response.status} to the attestation request, not a document"
        )
    return response.body


def attest_url(
    url: str, expect: Expectations | None = None, *, timeout: float = DEFAULT_TIMEOUT
) -> AttestedConnection:
    """Connect, fetch and verify the document over that connection, check the binding.

    Raises AttestationError (rejected; ``public-key-mismatch`` when the certificate is not
    the attested one) or OSError/ssl.SSLError (network).
    """
    expect = expect or Expectations()
    host, port = split_url(url)
    start = time.monotonic()
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        tls = client_tls_context().wrap_socket(sock, server_hostname=_server_name(host))
    except BaseException:
        sock.close()
        raise
    try:
        cert = tls.getpeercert(binary_form=True)
        if not cert:
            raise MalformedError("the server presented no certificate")
        nonce = expect.new_nonce()
        host_header = host if port == 443 else f"{host}:{port}"
        body = exchange(tls.sendall, lambda: tls.recv(65536), host_header, expect.target(nonce))
        document = expect.check(body, cert, nonce)
    except BaseException:
        tls.close()
        raise
    return AttestedConnection(tls, host_header, document, cert, nonce, time.monotonic() - start)
