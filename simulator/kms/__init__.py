"""Local AWS KMS: HTTP JSON 1.1 endpoint, SigV4, key policies with attestation conditions.

Run it with ``python -m simulator.kms --port P --state DIR --trust-root PEM`` (or call
:func:`main` with those arguments); see docs/kms.md.
"""

from simulator.kms._cli import main
from simulator.kms.cms_builder import build_ciphertext_for_recipient
from simulator.kms.credentials import DEFAULT_CREDENTIALS, Credential
from simulator.kms.errors import KmsError
from simulator.kms.server import KmsLimits, KmsServer, create_app

__all__ = [
    "DEFAULT_CREDENTIALS",
    "Credential",
    "KmsError",
    "KmsLimits",
    "KmsServer",
    "build_ciphertext_for_recipient",
    "create_app",
    "main",
]
