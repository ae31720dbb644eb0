"""Certificate path validation for Nitro chains: cryptography's X.509 verifier, plus a cache.

RFC 5280 path validation is cryptography's ``x509.verification`` (``PolicyBuilder``), as
sigstore-python does it: the trust store holds the one pinned root that ``cabundle[0]`` names,
the CA certificates follow the webpki CA profile, and the leaf follows a profile of its own,
because the AWS leaf has neither a subjectAltName nor an AuthorityKeyIdentifier (the webpki
end-entity defaults demand them): keyUsage digitalSignature is required, basicConstraints, if
present, must not say CA, and any other extension is allowed (unknown critical ones are not).

Around it, at ONE reference time:

1. ``cabundle[0]`` is byte-for-byte one of the trusted roots (compared by DER SHA-256):
   ``untrusted-root`` otherwise.
2. A validity pre-check of every certificate, so that time failures keep their own codes
   (``expired`` / ``not-yet-valid``) rather than the verifier's generic one.
3. The path itself: ``bad-chain`` for whatever the verifier refuses, and when the path it
   built is not ``cabundle`` as given (nitro-spec: root first, each issuing the next).
   Issuer and subject names are matched as the verifier does (byte for byte, as webpki).

One cache, keyed by certificate DER SHA-256: for a leaf, its parsed certificate and key, its
validity window and the fingerprints of the chain it was verified with. A later document with
the same leaf and the same chain skips step 3 (nothing in it depends on the time); steps 1
and 2 run on every call, so the cache can never let an expired or untrusted chain pass.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from .errors import (
    BadChainError,
    ExpiredError,
    MalformedError,
    NotYetValidError,
    PolicyError,
    UnsupportedAlgorithmError,
    UntrustedRootError,
)

DEFAULT_CACHE_SIZE = 1024
"""Leaf certificates (with their verified chains) a Verifier remembers."""

K = TypeVar("K")
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A small thread-safe LRU map with a fixed maximum number of entries."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


@dataclass(frozen=True, slots=True)
class Window:
    """A certificate's validity period (POSIX seconds) and who it is, for messages."""

    where: str
    cert: x509.Certificate
    not_before: float
    not_after: float

    @property
    def subject(self) -> str:
        try:
            return self.cert.subject.rfc4514_string()
        except ValueError:
            return "<unprintable subject>"


@dataclass(slots=True)
class LeafEntry:
    """What the cache keeps about one leaf certificate (a pure function of bytes)."""

    cert: x509.Certificate
    public_key: PublicKeyTypes | None
    window: Window
    verified: Verified | None = None  # replaced whole, never changed in place (threads)


@dataclass(frozen=True, slots=True)
class Verified:
    """A cabundle this leaf's path verified with: its DER SHA-256s and validity windows."""

    chain: tuple[bytes, ...]
    windows: tuple[Window, ...]  # root first


def _window(where: str, cert: x509.Certificate) -> Window:
    return Window(
        where, cert, cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class TrustedRoot:
    sha256: bytes
    cert: x509.Certificate
    store: Store


def make_roots(roots: Sequence[x509.Certificate]) -> dict[bytes, TrustedRoot]:
    """Index trust anchors by DER SHA-256, each with a one-certificate trust store."""
    out: dict[bytes, TrustedRoot] = {}
    for cert in roots:
        if not isinstance(cert, x509.Certificate):
            raise PolicyError(
                f"roots must hold x509.Certificate objects, not {type(cert).__name__}"
            )
        digest = cert.fingerprint(hashes.SHA256())
        try:
            out[digest] = TrustedRoot(digest, cert, Store([cert]))
        except (ValueError, TypeError) as exc:
            raise PolicyError(f"a trust root cannot be used: {str(exc)[:120]}") from None
    if not out:
        raise PolicyError("at least one trust root is needed")
    return out


# -- the leaf profile (the CA profile is webpki's) -------------------------------------------


def _leaf_key_usage(_policy: Any, _cert: x509.Certificate, ext: x509.KeyUsage | None) -> None:
    if ext is None or not ext.digital_signature:
        raise ValueError("the signing certificate lacks keyUsage digitalSignature")


def _leaf_not_ca(_policy: Any, _cert: x509.Certificate, ext: x509.BasicConstraints | None) -> None:
    if ext is not None and ext.ca:
        raise ValueError("the signing certificate is a CA")


_CA_POLICY = ExtensionPolicy.webpki_defaults_ca()
_LEAF_POLICY = (
    ExtensionPolicy.permit_all()
    .require_present(x509.KeyUsage, Criticality.AGNOSTIC, _leaf_key_usage)
    .may_be_present(x509.BasicConstraints, Criticality.AGNOSTIC, _leaf_not_ca)
)


def verify_path(
    root: TrustedRoot, intermediates: list[x509.Certificate], leaf: x509.Certificate, at: float
) -> None:
    """RFC 5280 path validation by cryptography; ``bad-chain`` for any refusal."""
    verifier = (
        PolicyBuilder()
        .store(root.store)
        .time(datetime.fromtimestamp(at, UTC))
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_LEAF_POLICY)
        .build_client_verifier()
    )
    try:
        built = verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise BadChainError(f"the certificate path is invalid: {str(exc)[:300]}") from None
    if built.chain != [leaf, *reversed(intermediates), root.cert]:  # Certificate == is DER ==
        raise BadChainError(
            "cabundle is not the certificate path itself (root first, each certificate "
            "issuing the next, nothing extra)"
        )


class ChainValidator:
    """Validates ``certificate`` + ``cabundle`` against trusted roots; caches verified chains."""

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._leaves: LruCache[bytes, LeafEntry] = LruCache(cache_size)

    def clear(self) -> None:
        self._leaves.clear()

    @property
    def cached_chains(self) -> int:
        """Leaves in the cache whose chain has been verified."""
        with self._leaves._lock:
            return sum(1 for e in self._leaves._data.values() if e.verified is not None)

    def leaf_key(self, der: bytes) -> tuple[bytes, LeafEntry, ec.EllipticCurvePublicKey]:
        """Parse the signing certificate and return its P-384 key (before any trust)."""
        digest = hashlib.sha256(der).digest()
        entry = self._leaves.get(digest)
        if entry is None:
            try:
                cert = x509.load_der_x509_certificate(der)
                window = _window("certificate", cert)
            except ValueError:
                raise MalformedError("certificate is not a valid DER X.509 certificate") from None
            try:
                key: PublicKeyTypes | None = cert.public_key()
            except (ValueError, UnsupportedAlgorithm):
                key = None
            entry = LeafEntry(cert, key, window)
            self._leaves.put(digest, entry)
        key = entry.public_key
        if key is None:
            raise UnsupportedAlgorithmError("leaf certificate key type is not supported")
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP384R1
        ):
            raise UnsupportedAlgorithmError(
                "leaf certificate key is not EC P-384 (ES384)",
                expected="secp384r1",
                found=getattr(getattr(key, "curve", None), "name", type(key).__name__),
            )
        return digest, entry, key

    def validate(
        self,
        leaf: tuple[bytes, LeafEntry],
        cabundle: Sequence[bytes],
        roots: dict[bytes, TrustedRoot],
        at: float,
    ) -> None:
        """Raise the first failure of the steps in the module docstring, else return."""
        _, entry = leaf
        chain = tuple(hashlib.sha256(der).digest() for der in cabundle)
        # 1. The bundle starts at a pinned root (compared, not trusted blindly).
        root = roots.get(chain[0])
        if root is None:
            raise UntrustedRootError(
                "cabundle[0] is not a trusted root",
                expected=[r.hex() for r in roots],
                found=chain[0].hex(),
            )
        verified = entry.verified
        if verified is not None and verified.chain == chain:  # warm: this path verified before
            _check_validity((*verified.windows, entry.window), at)
            return
        intermediates: list[x509.Certificate] = []
        windows = [_window("cabundle[0]", root.cert)]
        for i, der in enumerate(cabundle[1:], start=1):
            try:
                cert = x509.load_der_x509_certificate(der)
                windows.append(_window(f"cabundle[{i}]", cert))
            except ValueError:
                raise BadChainError(f"cabundle[{i}] is not a valid DER X.509 certificate") from None
            intermediates.append(cert)
        # 2. Validity first, so expiry keeps its own code.
        _check_validity((*windows, entry.window), at)
        # 3. The path, by cryptography's verifier.
        verify_path(root, intermediates, entry.cert, at)
        entry.verified = Verified(chain, tuple(windows))


def _check_validity(windows: Sequence[Window], at: float) -> None:
    for w in windows:
        if at > w.not_after:
            raise ExpiredError(
                f"{w.where} ({w.subject}) expired at {_iso(w.not_after)}",
                expected=f"<= {_iso(w.not_after)}",
                found=_iso(at),
            )
        if at < w.not_before:
            raise NotYetValidError(
                f"{w.where} ({w.subject}) is not valid before {_iso(w.not_before)}",
                expected=f">= {_iso(w.not_before)}",
                found=_iso(at),
            )
