"""Verify AWS Nitro Enclaves attestation documents: COSE, chain to the pinned root, policy.

>>> from attestation import verify, Policy
>>> doc = verify(data, Policy(pcrs={0: "6be4...", 4: b"..."}, nonce=my_nonce))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .document import AttestationDocument, parse_document
    from .errors import (
        ALL_ERRORS,
        ERROR_CODES,
        AttestationError,
        BadChainError,
        BadSignatureError,
        CodedError,
        DebugEnclaveError,
        EifError,
        ExpiredError,
        MalformedError,
        NitroTpmDocumentError,
        NonceMismatchError,
        NotYetValidError,
        PcrMismatchError,
        PolicyError,
        PublicKeyMismatchError,
        StaleError,
        UnsupportedAlgorithmError,
        UntrustedRootError,
        UserDataMismatchError,
    )
    from .policy import Policy
    from .roots import AWS_NITRO_ROOT_G1, load_root_pem
    from .testpki import TestPKI
    from .verifier import Verifier, verify

# Imported on first use (PEP 562), so that a process pays only for what it touches: the
# CLI's start-up time, a short-lived worker's, a service that only needs the errors.
_WHERE = {
    "AttestationDocument": "document",
    "parse_document": "document",
    "Policy": "policy",
    "AWS_NITRO_ROOT_G1": "roots",
    "load_root_pem": "roots",
    "TestPKI": "testpki",
    "Verifier": "verifier",
    "verify": "verifier",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name) or ("errors" if name in __all__ else None)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "ALL_ERRORS",
    "AWS_NITRO_ROOT_G1",
    "ERROR_CODES",
    "AttestationDocument",
    "AttestationError",
    "BadChainError",
    "BadSignatureError",
    "CodedError",
    "DebugEnclaveError",
    "EifError",
    "ExpiredError",
    "MalformedError",
    "NitroTpmDocumentError",
    "NonceMismatchError",
    "NotYetValidError",
    "PcrMismatchError",
    "Policy",
    "PolicyError",
    "PublicKeyMismatchError",
    "StaleError",
    "TestPKI",
    "UnsupportedAlgorithmError",
    "UntrustedRootError",
    "UserDataMismatchError",
    "Verifier",
    "load_root_pem",
    "parse_document",
    "verify",
]
