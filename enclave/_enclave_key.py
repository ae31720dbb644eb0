"""The enclave's RSA-2048 recipient key pair for KMS, rotated on a schedule.

KMS encrypts `CiphertextForRecipient` to the public key carried in the attestation document,
so the enclave needs an RSA key pair (nitro-spec §3.1: RSA-2048, e=65537, DER
SubjectPublicKeyInfo). Generating one costs ~70 ms, so it is made once and replaced only every
`KeyLimits.rotate_after_s`; the attestation document naming it is cached too and fetched anew
every `KeyLimits.document_refresh_s` (well inside KMS's age limit and the ~3 h life of the
NSM leaf certificate).
The private key never leaves this object.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

RSA_BITS = 2048
"""KMS Recipient keys: RSA-2048 (what the AWS Nitro Enclaves SDK uses)."""
RSA_PUBLIC_EXPONENT = 65537


@dataclass(frozen=True)
class KeyLimits:
    """When the key pair and its attestation document are replaced (seconds)."""

    rotate_after_s: float = 60 * 60.0
    """A new key pair after this long (keygen ~70 ms; once an hour is negligible)."""
    document_refresh_s: float = 60.0
    """A new attestation document for the current key after this long. KMS judges a
    document's age (the local KMS refuses documents older than 300 s by default) and the NSM
    leaf certificate lives ~3 h; one NSM call a minute costs next to nothing."""

    def __post_init__(self) -> None:
        if not self.rotate_after_s > 0 or not self.document_refresh_s > 0:
            raise ValueError("KeyLimits intervals must be positive")


@dataclass(frozen=True, repr=False)
class RecipientKey:
    """One key pair and the attestation document that binds its public key."""

    private_key: rsa.RSAPrivateKey
    public_key_der: bytes
    """DER SubjectPublicKeyInfo: what goes into the document's `public_key`."""
    document: bytes
    """COSE_Sign1 attestation document with `public_key` = public_key_der."""
    key_created: float
    document_created: float

    def __repr__(self) -> str:  # never shows the private key
        return f"RecipientKey(public_key_der={len(self.public_key_der)} bytes)"


def new_key_pair() -> tuple[rsa.RSAPrivateKey, bytes]:
    """A fresh RSA-2048 key pair: (private key, DER SubjectPublicKeyInfo)."""
    private_key = rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_BITS)
    spki = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_key, spki


class RecipientKeyring:
    """Holds the current `RecipientKey`; thread-safe; at most one key pair and one document.

    `attest(public_key_der) -> document` is the NSM call (e.g. `NsmClient.attestation`
    with `public_key=`). `clock` is monotonic seconds.
    """

    def __init__(
        self,
        attest: Callable[[bytes], bytes],
        *,
        limits: KeyLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._attest = attest
        self.limits = limits or KeyLimits()
        self._clock = clock
        self._lock = threading.Lock()
        self._current: RecipientKey | None = None
        self.rotations = 0
        self.documents = 0

    def current(self) -> RecipientKey:
        """The key and document to use now (rotated / refreshed when due)."""
        now = self._clock()
        key = self._current
        if key is not None and not self._due(key, now):
            return key
        with self._lock:
            key = self._current
            now = self._clock()
            if key is None or now - key.key_created >= self.limits.rotate_after_s:
                private_key, spki = new_key_pair()
                key = self._with_document(private_key, spki, key_created=now)
                self.rotations += 1
            elif now - key.document_created >= self.limits.document_refresh_s:
                key = self._with_document(key.private_key, key.public_key_der, key.key_created)
            self._current = key
            return key

    def _due(self, key: RecipientKey, now: float) -> bool:
        return (
            now - key.key_created >= self.limits.rotate_after_s
            or now - key.document_created >= self.limits.document_refresh_s
        )

    def _with_document(
        self, private_key: rsa.RSAPrivateKey, spki: bytes, key_created: float
    ) -> RecipientKey:
        document = self._attest(spki)
        self.documents += 1
        return RecipientKey(private_key, spki, document, key_created, self._clock())
