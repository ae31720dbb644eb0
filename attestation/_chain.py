"""Certificate path validation for Nitro chains, with a cache of verified signatures.

Done with ``cryptography`` primitives rather than ``x509.verification.PolicyBuilder``: the
Nitro chain is fixed (``cabundle`` root first, then the leaf), so no path building is needed,
and checking each RFC 5280 rule here lets every failure map to a precise error code
(``expired`` / ``not-yet-valid`` / ``untrusted-root`` / ``bad-chain``) and lets verified
signatures be cached. The webpki defaults of PolicyBuilder also reject every real chain (the
AWS leaf has no AuthorityKeyIdentifier).

Rules (RFC 5280 §6.1, profile of nitro-spec §2.4), all at ONE reference time:

1. ``cabundle[0]`` is byte-for-byte one of the trusted roots (compared by DER SHA-256).
2. Each certificate is issued by the one before it: issuer name == parent subject (raw DER
   equal, else cryptography's Name comparison) and the signature verifies with the parent's
   key.
3. Every CA (root included) has basicConstraints CA:TRUE and keyUsage keyCertSign, and its
   pathLenConstraint, when present, allows the intermediates below it.
4. The leaf is not a CA, has keyUsage digitalSignature and a P-384 key.
5. No certificate has a critical extension other than basicConstraints and keyUsage.
6. Every certificate, root included, is within its validity period at the reference time.

Only facts that depend on nothing but certificate bytes are cached: a certificate's parsed
profile (keyed by its DER SHA-256) and "signature of child verified with parent's key and
names chain" (keyed by both DER SHA-256s, so no other parent or root can reuse it). Trust in
the root and validity periods are checked on every call, so the cache can never let an expired
or untrusted certificate pass.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

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
"""Entries in each cache (parsed certificates, verified signatures) of a Verifier."""

_UNDERSTOOD_CRITICAL = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})

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
class CertInfo:
    """What one certificate says about itself (a pure function of its DER bytes)."""

    cert: x509.Certificate
    not_before: float  # POSIX seconds
    not_after: float
    is_ca: bool
    path_length: int | None
    key_cert_sign: bool
    digital_signature: bool
    bad_critical: tuple[str, ...]  # critical extensions we do not understand
    public_key: PublicKeyTypes | None  # None when cryptography cannot load it
    issuer_der: bytes | None  # raw DER of the issuer / subject Name (None if not found)
    subject_der: bytes | None

    @property
    def subject(self) -> str:
        """Readable subject, for messages only (computed when needed: it is not free)."""
        try:
            return self.cert.subject.rfc4514_string()
        except ValueError:
            return "<unprintable subject>"


def _inspect(der: bytes) -> CertInfo:
    """Parse a DER certificate; raises ValueError (the caller picks the error code)."""
    cert = x509.load_der_x509_certificate(der)
    is_ca, path_length, kcs, ds = False, None, False, False
    bad_critical: list[str] = []
    for ext in cert.extensions:  # raises ValueError on duplicate or undecodable extensions
        value = ext.value
        if isinstance(value, x509.BasicConstraints):
            is_ca, path_length = value.ca, value.path_length
        elif isinstance(value, x509.KeyUsage):
            kcs, ds = value.key_cert_sign, value.digital_signature
        elif ext.critical and ext.oid not in _UNDERSTOOD_CRITICAL:
            bad_critical.append(ext.oid.dotted_string)
    try:
        public_key: PublicKeyTypes | None = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        public_key = None
    issuer_der, subject_der = _raw_names(der)
    return CertInfo(
        cert=cert,
        public_key=public_key,
        issuer_der=issuer_der,
        subject_der=subject_der,
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        is_ca=is_ca,
        path_length=path_length,
        key_cert_sign=kcs,
        digital_signature=ds,
        bad_critical=tuple(bad_critical),
    )


def _der_element(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, end) of the DER element at ``pos``; ValueError if truncated."""
    tag = buf[pos]
    first = buf[pos + 1]
    if first < 0x80:
        start, length = pos + 2, first
    else:
        n = first & 0x7F
        if not 0 < n <= 4:
            raise ValueError("unsupported DER length")
        start = pos + 2 + n
        length = int.from_bytes(buf[pos + 2 : start], "big")
    end = start + length
    if end > len(buf):
        raise ValueError("truncated DER")
    return tag, start, end


def _raw_names(der: bytes) -> tuple[bytes | None, bytes | None]:
    """Raw issuer and subject Name DER of a certificate (RFC 5280 §4.1), or (None, None)."""
    try:
        _, cert_start, _ = _der_element(der, 0)
        _, pos, _ = _der_element(der, cert_start)  # into TBSCertificate
        tag, _, end = _der_element(der, pos)
        if tag == 0xA0:  # [0] version
            tag, _, end = _der_element(der, end)  # serialNumber
        _, _, end = _der_element(der, end)  # signature AlgorithmIdentifier
        _, _, issuer_end = _der_element(der, end)
        issuer = der[end:issuer_end]
        _, _, validity_end = _der_element(der, issuer_end)
        _, _, subject_end = _der_element(der, validity_end)
        return issuer, der[validity_end:subject_end]
    except (ValueError, IndexError):
        return None, None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class TrustedRoot:
    sha256: bytes
    info: CertInfo


_ROOT_INFOS: LruCache[bytes, CertInfo] = LruCache(64)  # parsed trust anchors, by DER SHA-256


def make_roots(roots: Sequence[x509.Certificate]) -> dict[bytes, TrustedRoot]:
    """Index trust anchors by DER SHA-256."""
    out: dict[bytes, TrustedRoot] = {}
    for cert in roots:
        if not isinstance(cert, x509.Certificate):
            raise PolicyError(
                f"roots must hold x509.Certificate objects, not {type(cert).__name__}"
            )
        der = cert.public_bytes(serialization.Encoding.DER)
        digest = hashlib.sha256(der).digest()
        info = _ROOT_INFOS.get(digest)
        if info is None:
            try:
                info = _inspect(der)
            except ValueError as exc:
                raise PolicyError(f"a trust root cannot be used: {str(exc)[:120]}") from None
            _ROOT_INFOS.put(digest, info)
        out[digest] = TrustedRoot(digest, info)
    if not out:
        raise PolicyError("at least one trust root is needed")
    return out


class ChainValidator:
    """Validates ``certificate`` + ``cabundle`` against trusted roots; caches verified facts."""

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._infos: LruCache[bytes, CertInfo] = LruCache(cache_size)
        self._edges: LruCache[tuple[bytes, bytes], bool] = LruCache(cache_size)

    def clear(self) -> None:
        self._infos.clear()
        self._edges.clear()

    @property
    def cached_signatures(self) -> int:
        return len(self._edges)

    def _info(self, der: bytes, digest: bytes) -> CertInfo | None:
        info = self._infos.get(digest)
        if info is None:
            try:
                info = _inspect(der)
            except ValueError:
                return None
            self._infos.put(digest, info)
        return info

    def leaf_key(self, der: bytes) -> tuple[bytes, CertInfo, ec.EllipticCurvePublicKey]:
        """Parse the signing certificate and return its P-384 key (before any trust)."""
        digest = hashlib.sha256(der).digest()
        info = self._info(der, digest)
        if info is None:
            raise MalformedError("certificate is not a valid DER X.509 certificate")
        key = info.public_key
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
        return digest, info, key

    def validate(
        self,
        leaf: tuple[bytes, CertInfo],
        cabundle: Sequence[bytes],
        roots: dict[bytes, TrustedRoot],
        at: float,
    ) -> None:
        """Raise the first failure of the rules in the module docstring, else return."""
        # 1. The bundle starts at a pinned root (compared, not trusted blindly).
        root_digest = hashlib.sha256(cabundle[0]).digest()
        root = roots.get(root_digest)
        if root is None:
            raise UntrustedRootError(
                "cabundle[0] is not a trusted root",
                expected=[r.hex() for r in roots],
                found=root_digest.hex(),
            )
        path: list[tuple[bytes, CertInfo]] = [(root_digest, root.info)]
        for i, der in enumerate(cabundle[1:], start=1):
            digest = hashlib.sha256(der).digest()
            info = self._info(der, digest)
            if info is None:
                raise BadChainError(f"cabundle[{i}] is not a valid DER X.509 certificate")
            path.append((digest, info))
        path.append(leaf)
        n_ca = len(path) - 1

        # 2. Each certificate is issued by the previous one (cached by both fingerprints).
        for i in range(1, len(path)):
            self._check_issued(path[i], path[i - 1])

        # 3.-5. Profile: CA flags, key usage, path length, critical extensions.
        for i, (_, info) in enumerate(path):
            where = f"cabundle[{i}]" if i < n_ca else "certificate"
            if info.bad_critical:
                raise BadChainError(
                    f"{where} ({info.subject}) has unknown critical extension(s) "
                    + ", ".join(info.bad_critical)
                )
            if i < n_ca:
                if not info.is_ca:
                    raise BadChainError(f"{where} ({info.subject}) is not a CA certificate")
                if not info.key_cert_sign:
                    raise BadChainError(f"{where} ({info.subject}) lacks keyUsage keyCertSign")
                below = n_ca - 1 - i  # intermediate CAs under this one
                if info.path_length is not None and info.path_length < below:
                    raise BadChainError(
                        f"{where} ({info.subject}) pathLenConstraint exceeded",
                        expected=f"<= {info.path_length} intermediate(s) below",
                        found=below,
                    )
            else:
                if info.is_ca:
                    raise BadChainError(f"signing certificate ({info.subject}) is a CA")
                if not info.digital_signature:
                    raise BadChainError(
                        f"signing certificate ({info.subject}) lacks keyUsage digitalSignature"
                    )

        # 6. Validity of every certificate at the one reference time.
        for i, (_, info) in enumerate(path):
            where = f"cabundle[{i}]" if i < n_ca else "certificate"
            if at > info.not_after:
                raise ExpiredError(
                    f"{where} ({info.subject}) expired at {_iso(info.not_after)}",
                    expected=f"<= {_iso(info.not_after)}",
                    found=_iso(at),
                )
            if at < info.not_before:
                raise NotYetValidError(
                    f"{where} ({info.subject}) is not valid before {_iso(info.not_before)}",
                    expected=f">= {_iso(info.not_before)}",
                    found=_iso(at),
                )

    def _check_issued(self, child: tuple[bytes, CertInfo], parent: tuple[bytes, CertInfo]) -> None:
        key = (child[0], parent[0])
        if self._edges.get(key):
            return
        try:
            _verify_issued(child[1], parent[1])
        except InvalidSignature:
            raise BadChainError(
                f"signature of {child[1].subject} does not verify with {parent[1].subject}'s key"
            ) from None
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise BadChainError(
                f"{child[1].subject} is not issued by {parent[1].subject}: {str(exc)[:120]}",
                expected=parent[1].subject,
                found=_issuer(child[1].cert),
            ) from None
        self._edges.put(key, True)


_ECDSA_SIGNATURES = frozenset(
    {
        SignatureAlgorithmOID.ECDSA_WITH_SHA256,
        SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        SignatureAlgorithmOID.ECDSA_WITH_SHA512,
    }
)


def _verify_issued(child: CertInfo, parent: CertInfo) -> None:
    """Issuer name == parent subject and the signature verifies with the parent's key.

    The ECDSA case (every Nitro certificate) is done directly, comparing the raw Name bytes
    first (a semantic Name comparison only when they differ), which avoids the re-parsing
    ``verify_directly_issued_by`` does; anything else goes through that method.
    """
    key = parent.public_key
    cert = child.cert
    if isinstance(key, ec.EllipticCurvePublicKey) and (
        cert.signature_algorithm_oid in _ECDSA_SIGNATURES
    ):
        same_bytes = child.issuer_der is not None and child.issuer_der == parent.subject_der
        if not same_bytes and cert.issuer != parent.cert.subject:
            raise ValueError("issuer name does not match the parent's subject")
        hash_algorithm = cert.signature_hash_algorithm
        if hash_algorithm is None:  # not for the three OIDs above; kept for type narrowing
            raise ValueError("certificate signature has no hash algorithm")
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hash_algorithm))
        return
    cert.verify_directly_issued_by(parent.cert)


def _issuer(cert: x509.Certificate) -> str:
    try:
        return cert.issuer.rfc4514_string()
    except ValueError:
        return "<unprintable issuer>"
