"""Parsers on the trust boundary of the ingress: PROXY v2 headers and the bounded HTTP answer
the client reads before trusting a server. Property tests: total, typed errors only."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attestation._http_exchange import MAX_BODY, MAX_HEAD, ExchangeError, ResponseParser
from enclave.ingress.proxy_v2 import (
    HEADER_FIXED,
    SIGNATURE,
    ProxyHeaderError,
    ProxyInfo,
    build_header,
    parse_header,
    parse_length,
)

ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)


@given(st.one_of(st.tuples(v4, v4), st.tuples(v6, v6)), ports, ports)
def test_proxy_v2_round_trip(addresses, sport, dport):
    src, dst = addresses
    info = parse_header(build_header((src, sport), (dst, dport)))
    assert info.source is not None and info.destination is not None
    assert ipaddress.ip_address(info.source[0]) == ipaddress.ip_address(src)
    assert info.source[1] == sport and info.destination[1] == dport


def test_proxy_v2_mixed_families_and_local():
    info = parse_header(build_header(("10.0.0.1", 1), ("::1", 2)))
    assert info.source == ("::ffff:a00:1", 1)
    assert parse_header(build_header(None, None)) == ProxyInfo(None, None)


@given(st.binary(max_size=600))
def test_proxy_v2_parser_is_total(data):
    try:
        length = parse_length(data[:HEADER_FIXED])
        parse_header(data[: HEADER_FIXED + length])
    except ProxyHeaderError as exc:
        assert exc.code == "bad-proxy-header"


@given(st.binary(max_size=40))
def test_proxy_v2_after_signature_is_total(rest):
    with contextlib.suppress(ProxyHeaderError):
        parse_header(SIGNATURE + rest)


def test_proxy_v2_refuses_huge_length():
    with pytest.raises(ProxyHeaderError):
        parse_length(SIGNATURE + b"\x21\x11\xff\xff")


@given(st.lists(st.binary(max_size=300), max_size=8))
def test_response_parser_is_total(chunks):
    parser = ResponseParser()
    try:
        for chunk in chunks:
            parser.feed(chunk)
            if parser.done:
                break
    except ExchangeError as exc:
        assert exc.code == "malformed"


def test_response_parser_reads_a_document_answer():
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Type: application/cbor\r\nContent-Length: 3\r\n\r\nab")
    assert not parser.done
    parser.feed(b"c")
    assert parser.done and parser.response().body == b"abc"


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1),
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"X" * (MAX_HEAD + 1),
    b"SSH-2.0-OpenSSH\r\n\r\n",
])
def test_response_parser_bounds(answer):
    with pytest.raises(ExchangeError):
        ResponseParser().feed(answer)


def test_response_parser_early_close():
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
    with pytest.raises(ExchangeError):
        parser.feed(b"")
