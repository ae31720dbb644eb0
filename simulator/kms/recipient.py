"""The ``Recipient`` of an attested request: verify its document, extract key and claims.

Steps:
1. ``KeyEncryptionAlgorithm`` must be ``RSAES_OAEP_SHA_256`` and a document must be present
   (else ValidationException);
2. the document must pass :meth:`attestation.Verifier.verify` against the configured trust
   roots at the request's reference time, with a policy that lets debug-mode documents through
   (their PCRs are all zero, so real PCR conditions still fail) and bounds their age
   (else AccessDeniedException naming the attestation error code);
3. its ``public_key`` must be an RSA SubjectPublicKeyInfo (DER), 2048-4096 bits
   (else ValidationException);
4. its PCRs become the condition keys ``kms:RecipientAttestation:ImageSha384`` (PCR0) and
   ``kms:RecipientAttestation:PCR<n>``, lower-case hex.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from attestation import AttestationError, Policy, Verifier
from simulator.kms.errors import KmsError

__all__ = [
    "KEY_ENCRYPTION_ALGORITHM",
    "MAX_RECIPIENT_RSA_BITS",
    "MIN_RECIPIENT_RSA_BITS",
    "VerifiedRecipient",
    "check_recipient",
]

KEY_ENCRYPTION_ALGORITHM = "RSAES_OAEP_SHA_256"
MIN_RECIPIENT_RSA_BITS = 2048
MAX_RECIPIENT_RSA_BITS = 4096

IMAGE_SHA384_KEY = "kms:recipientattestation:imagesha384"
PCR_KEY_PREFIX = "kms:recipientattestation:pcr"


@dataclass(frozen=True)
class VerifiedRecipient:
    """An authentic recipient: where to encrypt to and the claims for key policy conditions."""

    public_key: rsa.RSAPublicKey
    module_id: str
    image_sha384: str
    context: Mapping[str, tuple[str, ...]]


def check_recipient(
    recipient: Mapping[str, Any],
    *,
    verifier: Verifier,
    now: datetime,
    max_age: timedelta | None,
) -> VerifiedRecipient:
    """Run the steps above; raise the KMS error of the first failure."""
    algorithm = recipient.get("KeyEncryptionAlgorithm")
    if algorithm != KEY_ENCRYPTION_ALGORITHM:
        raise KmsError(
            "ValidationException",
            f"Recipient.KeyEncryptionAlgorithm must be {KEY_ENCRYPTION_ALGORITHM}",
        )
    document = recipient.get("AttestationDocument")
    if not document:
        raise KmsError("ValidationException", "Recipient.AttestationDocument is required")
    try:
        doc = verifier.verify(document, Policy(allow_debug=True, max_age=max_age), at=now)
    except AttestationError as exc:
        raise KmsError(
            "AccessDeniedException",
            f"The attestation document in Recipient was rejected ({exc.code}): {exc.message}",
        ) from None
    if doc.public_key is None:
        raise KmsError(
            "ValidationException", "The attestation document in Recipient carries no public_key"
        )
    try:
        public_key = serialization.load_der_public_key(doc.public_key)
    except (ValueError, TypeError):
        public_key = None
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise KmsError(
            "ValidationException",
            "The attestation document's public_key must be an RSA SubjectPublicKeyInfo (DER)",
        )
    if not MIN_RECIPIENT_RSA_BITS <= public_key.key_size <= MAX_RECIPIENT_RSA_BITS:
        raise KmsError(
            "ValidationException",
            f"The recipient RSA key must have {MIN_RECIPIENT_RSA_BITS} to "
            f"{MAX_RECIPIENT_RSA_BITS} bits",
        )
    context: dict[str, tuple[str, ...]] = {
        f"{PCR_KEY_PREFIX}{index}": (value.hex(),) for index, value in doc.pcrs.items()
    }
    image = doc.pcrs.get(0, b"").hex()
    if image:
        context[IMAGE_SHA384_KEY] = (image,)
    return VerifiedRecipient(public_key, doc.module_id, image, context)
