"""KMS errors by their real exception names, as the JSON 1.1 protocol returns them.

The HTTP body is ``{"__type": NAME, "message": TEXT}``; botocore turns ``__type`` into
``ClientError.response["Error"]["Code"]`` and, for the exceptions the KMS model declares, into
``client.exceptions.<NAME>``. ``AccessDeniedException``, ``ValidationException`` and the
authentication errors are not in the model: botocore raises a plain ``ClientError`` with that code,
as it does against AWS.
"""

from __future__ import annotations

from typing import Any

from attestation.errors import CodedError, Kind

__all__ = ["HTTP_STATUS", "KmsError"]

HTTP_STATUS: dict[str, int] = {
    # request shape and authentication
    "SerializationException": 400,
    "ValidationException": 400,
    "UnknownOperationException": 400,
    "MissingAuthenticationTokenException": 400,
    "IncompleteSignatureException": 400,
    "InvalidSignatureException": 400,
    "UnrecognizedClientException": 400,
    "RequestEntityTooLargeException": 413,
    "ThrottlingException": 400,
    "RequestTimeoutException": 408,
    # authorization
    "AccessDeniedException": 400,
    # modelled KMS exceptions
    "NotFoundException": 400,
    "AlreadyExistsException": 400,
    "InvalidAliasNameException": 400,
    "InvalidArnException": 400,
    "InvalidCiphertextException": 400,
    "IncorrectKeyException": 400,
    "InvalidKeyUsageException": 400,
    "InvalidMarkerException": 400,
    "InvalidGrantTokenException": 400,
    "DisabledException": 400,
    "KMSInvalidStateException": 400,
    "MalformedPolicyDocumentException": 400,
    "LimitExceededException": 400,
    "UnsupportedOperationException": 400,
    "DryRunOperationException": 412,
    "KMSInternalException": 500,
}


_KIND_OF_STATUS = {
    400: Kind.BAD_REQUEST, 408: Kind.UNAVAILABLE, 412: Kind.CONFLICT, 413: Kind.BAD_REQUEST
}
_KINDS = {
    "AccessDeniedException": Kind.FORBIDDEN,
    "NotFoundException": Kind.NOT_FOUND,
    "AlreadyExistsException": Kind.CONFLICT,
    "DisabledException": Kind.CONFLICT,
    "KMSInvalidStateException": Kind.CONFLICT,
    "ThrottlingException": Kind.UNAVAILABLE,
    "LimitExceededException": Kind.UNAVAILABLE,
    "KMSInternalException": Kind.INTERNAL,
}


class KmsError(CodedError):
    """An error answered to the client; ``code`` is the KMS exception name (AWS's own names,
    not toolkit codes: this is the AWS JSON 1.1 contract)."""

    codes = {
        name: _KINDS.get(name) or _KIND_OF_STATUS.get(status, Kind.INTERNAL)
        for name, status in HTTP_STATUS.items()
    }

    def __init__(self, code: str, message: str) -> None:
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown KMS error code {code!r}")
        super().__init__(code, message)

    @property
    def status(self) -> int:
        """HTTP status KMS uses for this exception."""
        return HTTP_STATUS[self.code]

    def body(self) -> dict[str, Any]:
        """The JSON error document."""
        return {"__type": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"KmsError({self.code!r}, {self.message!r})"
