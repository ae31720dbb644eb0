"""Verify AWS Nitro Enclaves attestation documents: COSE, chain to the pinned root, policy.

>>> from attestation import verify, Policy
>>> doc = verify(data, Policy(pcrs={0: "6be4...", 4: b"..."}, nonce=my_nonce))  # doctest: +SKIP
"""

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
