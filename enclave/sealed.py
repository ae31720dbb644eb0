"""The sealed-secret store: secrets opened inside the enclave, used there, never handed out.

A secret arrives as a KMS ciphertext whose key policy names the enclave's measurements; the
enclave opens it with attested KMS (``handlers/sealed.py``) and keeps it here as a key object.
The store answers with what a key *does* — a signature, an HMAC, a public key — and has no
method that returns the secret itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attestation.errors import CodedError
from attestation.errors import Kind as ErrorKind

Kind = Literal["ec-p256", "ed25519", "hmac"]
KINDS: tuple[str, ...] = ("ec-p256", "ed25519", "hmac")
SIGNING_KINDS: tuple[str, ...] = ("ec-p256", "ed25519")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MIN_HMAC_KEY_LEN = 16


class SealedError(CodedError):
    """A sealed-secret operation failed; ``code`` is stable (docs/app.md)."""

    codes = {
        "bad-kind": ErrorKind.BAD_REQUEST,
        "bad-name": ErrorKind.BAD_REQUEST,
        "bad-request": ErrorKind.BAD_REQUEST,
        "bad-secret": ErrorKind.BAD_REQUEST,
        "wrong-kind": ErrorKind.BAD_REQUEST,
        "no-such-secret": ErrorKind.NOT_FOUND,
        "store-full": ErrorKind.CONFLICT,
    }
    show_code = True


@dataclass(frozen=True)
class SealedLimits:
    max_secrets: int = 256
    max_secret_len: int = 4096  # KMS Plaintext limit
    max_message_len: int = 256 * 1024  # bytes signed / MACed per request


@dataclass(frozen=True)
class SecretInfo:
    """What may be said about a sealed secret (never its value)."""

    name: str
    kind: str
    public_key: bytes | None  # DER SubjectPublicKeyInfo for signing keys

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "public_key": self.public_key}


@dataclass(frozen=True)
class _Secret:
    info: SecretInfo
    key: object  # ec / ed25519 private key, or HMAC key bytes

    def __repr__(self) -> str:  # never print key material
        return f"_Secret({self.info.name!r}, {self.info.kind!r})"


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise SealedError("bad-name", "name must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
    return name


def _parse_key(kind: str, material: bytes) -> object:
    """Key object from PKCS#8 DER or raw bytes; raises SealedError('bad-secret')."""
    if kind == "hmac":
        if len(material) < MIN_HMAC_KEY_LEN:
            raise SealedError("bad-secret", f"an HMAC key needs >= {MIN_HMAC_KEY_LEN} bytes")
        return bytes(material)
    if len(material) == 32:  # raw: P-256 scalar or Ed25519 seed
        try:
            if kind == "ed25519":
                return ed25519.Ed25519PrivateKey.from_private_bytes(material)
            return ec.derive_private_key(int.from_bytes(material, "big"), ec.SECP256R1())
        except ValueError as exc:
            raise SealedError("bad-secret", f"not a valid raw {kind} private key") from exc
    try:
        key = serialization.load_der_private_key(material, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SealedError("bad-secret", f"not a PKCS#8 DER or raw 32-byte {kind} key") from exc
    if kind == "ed25519" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if (
        kind == "ec-p256"
        and isinstance(key, ec.EllipticCurvePrivateKey)
        and isinstance(key.curve, ec.SECP256R1)
    ):
        return key
    raise SealedError("bad-secret", f"the key inside the secret is not {kind}")


class SealedStore:
    """Named secrets held in enclave memory (bounded count and size)."""

    def __init__(self, limits: SealedLimits | None = None) -> None:
        self.limits = limits or SealedLimits()
        self._secrets: dict[str, _Secret] = {}

    def __len__(self) -> int:
        return len(self._secrets)

    def put(self, name: str, kind: str, material: bytes) -> SecretInfo:
        """Parse and keep ``material`` under ``name`` (replacing one of the same name)."""
        check_name(name)
        if kind not in KINDS:
            raise SealedError("bad-kind", f"kind must be one of {', '.join(KINDS)}")
        if not isinstance(material, bytes) or not 1 <= len(material) <= self.limits.max_secret_len:
            raise SealedError("bad-secret", f"secret must be 1..{self.limits.max_secret_len} bytes")
        if name not in self._secrets and len(self._secrets) >= self.limits.max_secrets:
            raise SealedError("store-full", f"at most {self.limits.max_secrets} sealed secrets")
        key = _parse_key(kind, material)
        public = None
        if kind in SIGNING_KINDS:
            public = key.public_key().public_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        info = SecretInfo(name, kind, public)
        self._secrets[name] = _Secret(info, key)
        return info

    def info(self, name: str) -> SecretInfo:
        return self._get(name).info

    def list(self) -> list[SecretInfo]:
        return [s.info for s in self._secrets.values()]

    def delete(self, name: str) -> bool:
        return self._secrets.pop(check_name(name), None) is not None

    def sign(self, name: str, message: bytes, *, signature_format: str = "der") -> bytes:
        """Sign with a sealed key: ECDSA-SHA256 (DER, or ``raw`` r||s) or Ed25519."""
        secret = self._get(name)
        self._check_message(message)
        key = secret.key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(message)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            der = key.sign(message, ec.ECDSA(hashes.SHA256()))
            if signature_format == "raw":
                r, s = decode_dss_signature(der)
                return r.to_bytes(32, "big") + s.to_bytes(32, "big")
            if signature_format != "der":
                raise SealedError("bad-request", "format must be 'der' or 'raw'")
            return der
        raise SealedError("wrong-kind", f"secret {name!r} is not a signing key")

    def hmac_sha256(self, name: str, message: bytes) -> bytes:
        secret = self._get(name)
        self._check_message(message)
        if not isinstance(secret.key, bytes):
            raise SealedError("wrong-kind", f"secret {name!r} is not an HMAC key")
        return hmac.new(secret.key, message, hashlib.sha256).digest()

    def _check_message(self, message: object) -> None:
        if not isinstance(message, bytes) or len(message) > self.limits.max_message_len:
            raise SealedError(
                "bad-request", f"message must be bytes of at most {self.limits.max_message_len}"
            )

    def _get(self, name: str) -> _Secret:
        secret = self._secrets.get(check_name(name))
        if secret is None:
            raise SealedError("no-such-secret", f"no sealed secret named {name!r}")
        return secret
