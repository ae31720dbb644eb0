"""Server-side AWS Signature Version 4 check for the ``Authorization`` header form.

Steps (AWS "Create a signed AWS API request"):
1. parse ``AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
   SignedHeaders=a;b, Signature=hex``;
2. check the scope (date = X-Amz-Date's day, region, service, terminator) and the freshness of
   X-Amz-Date (±15 minutes of the server's clock);
3. look the access key up; a configured session token must equal X-Amz-Security-Token;
4. hand the signed headers, method, path, query and body to botocore's ``SigV4Auth`` (the
   signer every AWS SDK call here uses) to compute the signature; compare in constant time.

botocore signs; it does not check. Steps 1-3, the signed-header list and the body hash a
client may send in ``X-Amz-Content-SHA256`` are checked here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from simulator.kms.credentials import Credential
from simulator.kms.errors import KmsError

__all__ = ["MAX_CLOCK_SKEW", "SignedRequest", "verify_sigv4"]

MAX_CLOCK_SKEW = timedelta(minutes=15)
"""How far X-Amz-Date may be from the server clock."""

MAX_SIGNED_HEADERS = 64
"""More signed headers than this is refused as malformed."""

_ALGORITHM = "AWS4-HMAC-SHA256"
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+"
    r"Credential=(?P<cred>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<headers>[^,\s]+)\s*,\s*"
    r"Signature=(?P<sig>[0-9a-f]{64})\s*$"
)
_DATE_FORMAT = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class SignedRequest:
    """What the signature covers, as received."""

    method: str
    raw_path: str  # path and query, as sent on the request line
    headers: Sequence[tuple[str, str]]  # every header, in order, original names
    body: bytes


def _header_values(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


def _signature(
    request: SignedRequest,
    signed: Sequence[str],
    credential: Credential,
    stamp: str,
    region: str,
    service: str,
) -> str:
    """The SigV4 signature of exactly the signed headers, computed by botocore."""
    aws_request = AWSRequest(
        method=request.method, url="http://signed.invalid" + request.raw_path, data=request.body
    )
    for name in signed:
        for value in _header_values(request.headers, name):
            aws_request.headers[name] = value  # HTTPHeaders: setting again adds a value
    aws_request.context["timestamp"] = stamp
    credentials = Credentials(
        credential.access_key_id, credential.secret_access_key, credential.session_token
    )
    auth = SigV4Auth(credentials, service, region)
    headers_to_sign = auth.headers_to_sign(aws_request)
    if auth.signed_headers(headers_to_sign) != ";".join(signed):  # e.g. a signed user-agent
        raise KmsError(
            "IncompleteSignatureException", "SignedHeaders names a header SigV4 does not sign"
        )
    canonical = auth.canonical_request(aws_request)
    return str(auth.signature(auth.string_to_sign(aws_request, canonical), aws_request))


def verify_sigv4(
    request: SignedRequest,
    *,
    lookup: Callable[[str], Credential | None],
    region: str,
    service: str = "kms",
    now: datetime,
) -> Credential:
    """Return the credential that signed ``request`` or raise the KMS auth error."""
    headers = request.headers
    auth_values = _header_values(headers, "authorization")
    if not auth_values:
        raise KmsError("MissingAuthenticationTokenException", "Missing Authentication Token")
    if len(auth_values) != 1:
        raise KmsError("IncompleteSignatureException", "Multiple Authorization headers")
    auth = auth_values[0]
    if not auth.startswith(_ALGORITHM):
        raise KmsError(
            "IncompleteSignatureException", f"Authorization must use {_ALGORITHM} (SigV4)"
        )
    match = _AUTH_RE.match(auth)
    if not match:
        raise KmsError(
            "IncompleteSignatureException",
            "Authorization header requires Credential, SignedHeaders and Signature",
        )
    scope = match.group("cred").split("/")
    if len(scope) != 5:
        raise KmsError(
            "IncompleteSignatureException", "Credential must be KEY/DATE/REGION/SVC/aws4_request"
        )
    access_key_id, day, scope_region, scope_service, terminator = scope
    signed = match.group("headers").split(";")
    if (
        len(signed) > MAX_SIGNED_HEADERS
        or signed != sorted(set(signed))
        or any(h != h.lower() or not h for h in signed)
    ):
        raise KmsError(
            "IncompleteSignatureException", "SignedHeaders must be sorted lower-case names"
        )
    if "host" not in signed:
        raise KmsError("IncompleteSignatureException", "SignedHeaders must include host")

    date_values = _header_values(headers, "x-amz-date")
    if len(date_values) != 1 or "x-amz-date" not in signed:
        raise KmsError("IncompleteSignatureException", "X-Amz-Date must be sent and signed")
    try:
        stamp = datetime.strptime(date_values[0], _DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise KmsError(
            "IncompleteSignatureException", "X-Amz-Date is not YYYYMMDDTHHMMSSZ"
        ) from None
    if abs(now - stamp) > MAX_CLOCK_SKEW:
        raise KmsError(
            "InvalidSignatureException",
            f"Signature expired: {date_values[0]} is not within 15 minutes of the server time "
            f"{now.strftime(_DATE_FORMAT)}",
        )
    if day != stamp.strftime("%Y%m%d"):
        raise KmsError("InvalidSignatureException", "Credential scope date differs from X-Amz-Date")
    if scope_region != region:
        raise KmsError(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region: expected {region!r}",
        )
    if scope_service != service or terminator != "aws4_request":
        raise KmsError(
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: {service!r}",
        )

    credential = lookup(access_key_id)
    if credential is None:
        raise KmsError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    tokens = _header_values(headers, "x-amz-security-token")
    if len(tokens) > 1:
        raise KmsError("IncompleteSignatureException", "Multiple X-Amz-Security-Token headers")
    if credential.session_token is not None and (
        not tokens or not hmac.compare_digest(tokens[0].encode(), credential.session_token.encode())
    ):
        raise KmsError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )

    for name in signed:
        if not _header_values(headers, name):
            raise KmsError("IncompleteSignatureException", f"signed header {name!r} is missing")
    claimed = _header_values(headers, "x-amz-content-sha256")
    if claimed and (len(claimed) > 1 or claimed[0] != hashlib.sha256(request.body).hexdigest()):
        raise KmsError(
            "InvalidSignatureException", "X-Amz-Content-SHA256 is not the SHA-256 of the body"
        )
    expected = _signature(request, signed, credential, date_values[0], scope_region, service)
    if not hmac.compare_digest(expected, match.group("sig")):
        raise KmsError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
        )
    return credential

