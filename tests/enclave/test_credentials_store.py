"""enclave.kms.credentials: validation, bounded waits, and boto3 using the store over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.kms.credentials import (
    SET_CREDENTIALS_OP,
    AwsCredentials,
    CredentialLimits,
    CredentialsError,
    CredentialStore,
    parse_credentials,
)

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLETOKEN//////////wEaDEXAMPLE"


def body(**over):
    b = {
        "access_key_id": "ASIAEXAMPLEEXAMPLE01",
        "secret_access_key": SECRET,
        "session_token": TOKEN,
        "expiration": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        "region": "eu-west-1",
    }
    b.update(over)
    return b


# -- validation ----------------------------------------------------------------------------------


def test_valid_body_parses():
    c = parse_credentials(body(expiration="2099-01-01T00:00:00Z"))
    assert c.access_key_id == "ASIAEXAMPLEEXAMPLE01"
    assert c.expiration == datetime(2099, 1, 1, tzinfo=UTC)
    assert c.region == "eu-west-1"
    assert SECRET not in repr(c) and TOKEN not in repr(c)


def test_optional_fields_may_be_null():
    c = parse_credentials(body(session_token=None, expiration=None, region=None))
    assert c.session_token is None and c.expiration is None and c.region is None


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"access_key_id": None}, "access_key_id is missing"),
        ({"access_key_id": "short"}, "access_key_id is malformed"),
        ({"access_key_id": 1234567890123456789}, "access_key_id must be a string"),
        ({"secret_access_key": ""}, "secret_access_key is malformed"),
        ({"secret_access_key": "has space"}, "secret_access_key is malformed"),
        ({"session_token": b"bytes"}, "session_token must be a string"),
        ({"session_token": "x" * 20_000}, "session_token is malformed"),
        ({"expiration": "yesterday"}, "ISO 8601"),
        ({"expiration": "2099-01-01T00:00:00"}, "time zone"),
        ({"expiration": []}, "ISO 8601"),
        ({"region": "Moon-1"}, "region is malformed"),
        ({"colour": "blue"}, "unknown fields"),
    ],
)
def test_bad_fields_are_refused_with_a_clear_error(over, needle):
    with pytest.raises(CredentialsError) as info:
        parse_credentials(body(**over))
    assert info.value.code == "bad-credentials"
    assert needle in info.value.message
    assert SECRET not in str(info.value)


def test_non_map_body():
    with pytest.raises(CredentialsError, match="map"):
        parse_credentials([1, 2])


secretish = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=12, max_size=60)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["access_key_id", "secret_access_key", "session_token", "expiration", "region", "x"]
        ),
        st.none() | st.integers() | secretish | st.binary(max_size=10) | st.datetimes(),
    )
)
def test_any_body_gives_credentials_or_a_typed_error_without_echoing_values(b):
    try:
        c = parse_credentials(b)
    except CredentialsError as exc:
        assert exc.code == "bad-credentials"
        for v in b.values():
            if isinstance(v, str) and len(v) >= 12:
                assert v not in str(exc)
    else:
        assert isinstance(c, AwsCredentials)
        assert c.expiration is None or c.expiration.tzinfo is not None


# -- the store -----------------------------------------------------------------------------------


def test_expired_credentials_are_not_accepted():
    store = CredentialStore()
    with pytest.raises(CredentialsError) as info:
        store.set(parse_credentials(body(expiration=datetime.now(UTC).isoformat())))
    assert info.value.code == "credentials-expired"
    assert store.get() is None


def test_wait_then_fail_when_nothing_arrives():
    store = CredentialStore(CredentialLimits(wait_s=0.3))
    t0 = time.monotonic()
    with pytest.raises(CredentialsError) as info:
        store.wait_usable()
    elapsed = time.monotonic() - t0
    assert info.value.code == "credentials-unavailable"
    assert "never received" in info.value.message
    assert 0.25 <= elapsed < 2.0


def test_wait_returns_as_soon_as_the_parent_pushes():
    store = CredentialStore(CredentialLimits(wait_s=5.0))
    threading.Timer(0.2, store.set, [parse_credentials(body())]).start()
    t0 = time.monotonic()
    c = store.wait_usable()
    assert c.access_key_id == "ASIAEXAMPLEEXAMPLE01"
    assert time.monotonic() - t0 < 2.0


def test_credentials_close_to_expiry_make_requests_wait_for_fresh_ones():
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    store = CredentialStore(CredentialLimits(wait_s=0.2, min_validity_s=60), clock=lambda: now[0])
    store.set(parse_credentials(body(expiration="2030-01-01T00:05:00Z")))
    assert store.wait_usable().access_key_id == "ASIAEXAMPLEEXAMPLE01"
    now[0] += timedelta(minutes=4, seconds=30)  # 30 s left < min_validity
    with pytest.raises(CredentialsError) as info:
        store.wait_usable()
    assert "expired" in info.value.message


def test_protocol_handler():
    store = CredentialStore()
    out = asyncio.run(store.handle_set_credentials(body(region="us-west-2")))
    assert out["region"] == "us-west-2" and out["expiration"]
    assert store.region == "us-west-2"
    assert SET_CREDENTIALS_OP == "set-credentials"
    with pytest.raises(CredentialsError):
        asyncio.run(store.handle_set_credentials({"access_key_id": "x"}))


# -- boto3 over real HTTP ------------------------------------------------------------------------


class _KmsStub(BaseHTTPRequestHandler):
    """Answers GenerateRandom and records the access key of each request's SigV4 header."""

    seen: list[str] = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        auth = self.headers.get("Authorization", "")
        self.seen.append(auth.split("Credential=", 1)[1].split("/", 1)[0] if auth else "")
        out = json.dumps({"Plaintext": "AAAA"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def kms_stub():
    _KmsStub.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KmsStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _KmsStub.seen
    server.shutdown()
    server.server_close()


def _client(store, url):
    return store.boto3_session("us-east-1").client("kms", endpoint_url=url)


def test_boto3_waits_for_the_first_push_then_signs_with_it(kms_stub, monkeypatch, caplog):
    url, seen = kms_stub
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT0")  # must be ignored
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    caplog.set_level(logging.DEBUG)
    store = CredentialStore(CredentialLimits(wait_s=5.0))
    client = _client(store, url)
    threading.Timer(0.3, store.set, [parse_credentials(body())]).start()
    t0 = time.monotonic()
    client.generate_random(NumberOfBytes=3)
    assert time.monotonic() - t0 >= 0.25
    assert seen == ["ASIAEXAMPLEEXAMPLE01"]
    assert SECRET not in caplog.text and TOKEN not in caplog.text


def test_boto3_fails_with_a_typed_error_when_no_credentials_come(kms_stub):
    url, seen = kms_stub
    store = CredentialStore(CredentialLimits(wait_s=0.3))
    client = _client(store, url)
    t0 = time.monotonic()
    with pytest.raises(CredentialsError) as info:
        client.generate_random(NumberOfBytes=3)
    assert info.value.code == "credentials-unavailable"
    assert time.monotonic() - t0 < 3.0
    assert seen == []


def test_boto3_picks_up_pushed_credentials_before_the_old_ones_expire(kms_stub):
    url, seen = kms_stub
    store = CredentialStore(CredentialLimits(wait_s=1.0))
    soon = (datetime.now(UTC) + timedelta(seconds=120)).isoformat()  # inside botocore's window
    store.set(parse_credentials(body(expiration=soon)))
    client = _client(store, url)
    client.generate_random(NumberOfBytes=3)
    store.set(parse_credentials(body(access_key_id="ASIANEWEREXAMPLE0002")))
    client.generate_random(NumberOfBytes=3)
    assert seen == ["ASIAEXAMPLEEXAMPLE01", "ASIANEWEREXAMPLE0002"]


def test_boto3_session_uses_only_the_store():
    session = CredentialStore().boto3_session("us-east-1")
    assert isinstance(session, boto3.Session)
    resolver = session._session.get_component("credential_provider")
    assert [p.METHOD for p in resolver.providers] == ["nitro-parent"]
