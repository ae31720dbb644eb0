"""Server-side SigV4 (checked against requests signed by botocore's own signer) and the model."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.kms._model import validate_input
from simulator.kms._sigv4 import SignedRequest, verify_sigv4
from simulator.kms.credentials import Credential
from simulator.kms.errors import KmsError

HOST = "127.0.0.1:4566"
OPERATOR = Credential(
    "AKIATESTOPERATOR0001", "operator-secret", "arn:aws:iam::111122223333:user/op"
)
SESSION = Credential(
    "ASIATESTSESSION00001",
    "session-secret",
    "arn:aws:sts::111122223333:assumed-role/parent/i-1",
    session_token="token-abc",
)
KNOWN = {c.access_key_id: c for c in (OPERATOR, SESSION)}


def _signed(
    *,
    body: bytes = b'{"KeyId": "alias/x"}',
    key: Credential = OPERATOR,
    secret: str | None = None,
    token: str | None = None,
    region: str = "us-east-1",
    target: str = "TrentService.DescribeKey",
) -> SignedRequest:
    request = AWSRequest(
        method="POST",
        url=f"http://{HOST}/",
        data=body,
        headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"},
    )
    creds = Credentials(key.access_key_id, secret or key.secret_access_key, token)
    SigV4Auth(creds, "kms", region).add_auth(request)
    headers = [("Host", HOST), *request.headers.items()]
    return SignedRequest("POST", "/", headers, body)


def _verify(request: SignedRequest, *, now: datetime | None = None) -> Credential:
    return verify_sigv4(request, lookup=KNOWN.get, region="us-east-1", now=now or datetime.now(UTC))


def _code(request: SignedRequest, **kw) -> str:
    with pytest.raises(KmsError) as info:
        _verify(request, **kw)
    return info.value.code


def test_botocore_signed_request_verifies():
    assert _verify(_signed()) is OPERATOR


def test_wrong_secret_unknown_key_and_tampering_are_refused():
    assert _code(_signed(secret="nope")) == "InvalidSignatureException"
    unknown = Credential("AKIAUNKNOWN000000001", "x", OPERATOR.principal)
    assert _code(_signed(key=unknown)) == "UnrecognizedClientException"
    good = _signed()
    tampered_body = SignedRequest(good.method, good.raw_path, good.headers, b'{"KeyId": "y"}')
    assert _code(tampered_body) == "InvalidSignatureException"
    headers = [
        (k, "TrentService.Decrypt" if k.lower() == "x-amz-target" else v) for k, v in good.headers
    ]
    assert _code(SignedRequest("POST", "/", headers, good.body)) == "InvalidSignatureException"
    assert _code(SignedRequest("PUT", "/", good.headers, good.body)) == "InvalidSignatureException"


def test_freshness_is_fifteen_minutes():
    request = _signed()
    now = datetime.now(UTC)
    assert _verify(request, now=now + timedelta(minutes=14)) is OPERATOR
    assert _code(request, now=now + timedelta(minutes=16)) == "InvalidSignatureException"
    assert _code(request, now=now - timedelta(minutes=16)) == "InvalidSignatureException"


def test_scope_region_and_service_must_match():
    assert _code(_signed(region="eu-west-1")) == "InvalidSignatureException"


def test_missing_and_malformed_authorization():
    good = _signed()
    no_auth = [(k, v) for k, v in good.headers if k.lower() != "authorization"]
    assert _code(SignedRequest("POST", "/", no_auth, good.body)) == (
        "MissingAuthenticationTokenException"
    )
    for bad in ("Bearer abc", "AWS4-HMAC-SHA256 Credential=x", "AWS4-HMAC-SHA256 junk"):
        headers = [*no_auth, ("Authorization", bad)]
        assert _code(SignedRequest("POST", "/", headers, good.body)) == (
            "IncompleteSignatureException"
        )


def test_session_token_must_match_when_configured():
    assert _verify(_signed(key=SESSION, token="token-abc")) is SESSION
    assert _code(_signed(key=SESSION, token="token-xyz")) == "UnrecognizedClientException"
    assert _code(_signed(key=SESSION)) == "UnrecognizedClientException"
    # a key without a configured token accepts any (temporary-credential style) token
    assert _verify(_signed(token="anything")) is OPERATOR


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_mutation_of_a_signed_request_is_refused_with_a_kms_error(data):
    request = _signed()
    headers = list(request.headers)
    body = bytearray(request.body)
    where = data.draw(st.sampled_from(["header", "body"]))
    if where == "body":
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] ^= data.draw(st.integers(1, 255))
    else:
        index = data.draw(st.integers(0, len(headers) - 1))
        name, value = headers[index]
        pos = data.draw(st.integers(0, len(value) - 1))
        replacement = data.draw(st.characters(codec="ascii", exclude_characters="\r\n"))
        mutated = value[:pos] + replacement + value[pos + 1 :]
        if mutated.split() == value.split():
            return  # whitespace-only changes are canonicalized away, as in AWS
        headers[index] = (name, mutated)
    with pytest.raises(KmsError) as info:
        _verify(SignedRequest("POST", "/", headers, bytes(body)))
    assert info.value.status == 400


# ----------------------------------------------------------------------------- request model
def _model_error(operation: str, body) -> KmsError:
    with pytest.raises(KmsError) as info:
        validate_input(operation, body)
    return info.value


def test_model_decodes_blobs_and_checks_constraints():
    params = validate_input(
        "Encrypt", {"KeyId": "alias/x", "Plaintext": base64.b64encode(b"hi").decode()}
    )
    assert params == {"KeyId": "alias/x", "Plaintext": b"hi"}
    assert _model_error("Encrypt", {"KeyId": "k"}).code == "ValidationException"
    too_big = base64.b64encode(b"x" * 4097).decode()
    err = _model_error("Encrypt", {"KeyId": "k", "Plaintext": too_big})
    assert err.code == "ValidationException" and "4096" in err.message
    assert _model_error("GenerateRandom", {"NumberOfBytes": 0}).code == "ValidationException"
    assert _model_error("GenerateRandom", {"NumberOfBytes": "3"}).code == "SerializationException"
    assert _model_error("Encrypt", {"KeyId": "k", "Plaintext": "***"}).code == (
        "SerializationException"
    )
    err = _model_error("GenerateDataKey", {"KeyId": "k", "KeySpec": "AES_512"})
    assert err.code == "ValidationException" and "enum" in err.message
    assert _model_error("Decrypt", {"EncryptionContext": {"a": 1}}).code == "SerializationException"
    assert _model_error("Decrypt", []).code == "SerializationException"


def test_model_ignores_unknown_members_like_aws():
    assert validate_input("ListKeys", {"Limit": 5, "Whatever": [1, 2]}) == {"Limit": 5}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "KeyId",
                    "Plaintext",
                    "CiphertextBlob",
                    "EncryptionContext",
                    "Recipient",
                    "AttestationDocument",
                    "KeyEncryptionAlgorithm",
                    "NumberOfBytes",
                    "GrantTokens",
                    "KeySpec",
                    "Limit",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=15,
)


@settings(max_examples=200, deadline=None)
@given(
    operation=st.sampled_from(
        [
            "Encrypt",
            "Decrypt",
            "GenerateDataKey",
            "GenerateRandom",
            "CreateKey",
            "ListKeys",
            "PutKeyPolicy",
        ]
    ),
    body=_json,
)
def test_model_only_raises_serialization_or_validation(operation, body):
    try:
        result = validate_input(operation, body)
    except KmsError as exc:
        assert exc.code in {"SerializationException", "ValidationException"}
    else:
        assert isinstance(result, dict)
        json.dumps(result, default=lambda b: base64.b64encode(b).decode())
