"""One bounded HTTP/1.1 GET over an already-open (TLS) stream, without a client library.

Used to fetch the attestation document over the very connection whose certificate is being
checked, before any request of the caller is sent on it. Sans-IO: :class:`ResponseParser`
takes bytes; the callers own the reads and writes. The answer must carry Content-Length
(the toolkit's route does) or end with the connection; sizes are bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import MalformedError

__all__ = ["MAX_BODY", "MAX_HEAD", "Response", "ResponseParser", "get_request"]

MAX_HEAD = 16 * 1024
"""Longest status line plus headers."""
MAX_BODY = 64 * 1024
"""Longest body (a document is at most 16 KiB; base64 or hex of it fits too)."""


class ExchangeError(MalformedError):
    """The server's answer is not a bounded HTTP/1.1 response."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def get_request(host: str, target: str, *, close: bool = False) -> bytes:
    """The bytes of ``GET target`` (keep-alive unless ``close``)."""
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Accept: application/cbor, */*",
        "User-Agent: nitro-toolkit-attestation",
        f"Connection: {'close' if close else 'keep-alive'}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class ResponseParser:
    """Feed bytes until ``done``; then ``response()``. Raises ExchangeError on bad input."""

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self._buffer = bytearray()
        self._max_body = max_body
        self._head: tuple[int, dict[str, str]] | None = None
        self._length: int | None = None
        self.done = False

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        if not data:  # the server closed
            if self._head is not None and self._length is None:
                self.done = True
                return
            raise ExchangeError("the server closed the connection before a full response")
        self._buffer += data
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    raise ExchangeError(f"response head over {MAX_HEAD} bytes")
                return
            self._head = _parse_head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
            length = self._head[1].get("content-length")
            if self._head[1].get("transfer-encoding", "identity").lower() != "identity":
                raise ExchangeError("chunked answers are not accepted here")
            if length is not None:
                if not length.isdigit() or int(length) > self._max_body:
                    raise ExchangeError(f"content-length {length[:20]!r} over {self._max_body}")
                self._length = int(length)
        if len(self._buffer) > self._max_body:
            raise ExchangeError(f"response body over {self._max_body} bytes")
        if self._length is not None and len(self._buffer) >= self._length:
            if len(self._buffer) > self._length:
                raise ExchangeError("bytes after the response (pipelining is not expected)")
            self.done = True

    def response(self) -> Response:
        assert self._head is not None and self.done
        return Response(self._head[0], self._head[1], bytes(self._buffer))


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise ExchangeError("response head is not text") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ExchangeError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ExchangeError(f"bad header line {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers
