"""Verify an attestation document: structure, then authenticity, then policy.

Steps, in order; the first failure is the one reported, so a forged document is never
described by its policy:

1. Structure: strict CBOR, COSE_Sign1, ES384 header, payload schema (``parse_document``).
2. The signing certificate parses and holds a P-384 key.
3. The COSE signature verifies over the original protected and payload bytes.
4. The chain ``cabundle`` (root first) + ``certificate`` leads to a trusted root, under
   RFC 5280 rules, at one reference time (see ``_chain``).
5. The policy: debug mode refused unless allowed (also when ``policy`` is None), freshness,
   PCRs, nonce, user data, public key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ._chain import DEFAULT_CACHE_SIZE, ChainValidator, make_roots
from ._cose import es384_verify
from .document import AttestationDocument, parse_document
from .errors import BadSignatureError, PolicyError
from .policy import DEFAULT_POLICY_CHECKS, Policy
from .roots import AWS_NITRO_ROOT_G1

__all__ = ["At", "Verifier", "policy_has_max_age", "verify"]

At = datetime | Literal["document"] | None
"""Reference time: None = now (the clock is read once), an aware datetime, or "document"."""

_MAX_SHARED_VERIFIERS = 16


def _now() -> datetime:
    return datetime.now(UTC)


class Verifier:
    """Verifies documents against fixed trust roots, caching verified CA signatures.

    ``roots`` defaults to the pinned AWS Nitro Root-G1 alone. The cache holds at most
    ``cache_size`` parsed certificates and as many verified signatures; validity periods and
    the root are re-checked on every call. Thread-safe.
    """

    def __init__(
        self,
        roots: Sequence[x509.Certificate] | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], datetime] = _now,
        _chain: ChainValidator | None = None,
    ) -> None:
        if roots is None:
            roots = (AWS_NITRO_ROOT_G1,)
        elif isinstance(roots, x509.Certificate) or not isinstance(roots, Sequence):
            raise PolicyError("roots must be a sequence of x509.Certificate")
        self._roots = make_roots(roots)
        self._chain = _chain if _chain is not None else ChainValidator(cache_size)
        self._clock = clock

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        return tuple(r.cert for r in self._roots.values())

    def clear_cache(self) -> None:
        """Forget every cached certificate fact (the next documents verify cold)."""
        self._chain.clear()

    def verify(
        self, data: bytes, policy: Policy | None = None, *, at: At = None
    ) -> AttestationDocument:
        """Verify ``data`` and return the document, or raise the first AttestationError."""
        if policy is not None and not isinstance(policy, Policy):
            raise PolicyError(f"policy must be a Policy or None, not {type(policy).__name__}")
        reference = self._reference_time(at)  # validated before any work
        if reference == "document" and policy is not None and policy_has_max_age(policy):
            # The age of a document at its own timestamp is always zero: refuse, never pass.
            raise PolicyError(
                'max_age cannot be checked with at="document" (a document is never old at '
                "its own timestamp); pass a reference time or drop max_age"
            )

        # 1. Structure.
        doc = parse_document(data)
        # 2. The signing certificate and its key (not trusted yet).
        leaf_digest, leaf_info, leaf_key = self._chain.leaf_key(doc.certificate)
        # 3. COSE signature over the original bytes.
        if not es384_verify(leaf_key, doc.protected, doc.payload, doc.signature):
            raise BadSignatureError("COSE_Sign1 signature does not verify with the leaf key")
        # 4. Chain to a trusted root at one reference time.
        when = doc.datetime if reference == "document" else reference
        self._chain.validate((leaf_digest, leaf_info), doc.cabundle, self._roots, when.timestamp())
        # 5. Policy (debug mode is refused even without a policy).
        if policy is None:
            for check in DEFAULT_POLICY_CHECKS:
                check(doc, when)
        else:
            policy.check(doc, when)
        return doc

    def _reference_time(self, at: At) -> datetime | Literal["document"]:
        if at is None:
            return self._clock()
        if at == "document":
            return "document"
        if isinstance(at, datetime):
            if at.tzinfo is None or at.utcoffset() is None:
                raise PolicyError("at must be a timezone-aware datetime (e.g. UTC)")
            return at
        raise PolicyError('at must be None, an aware datetime or "document"')


def policy_has_max_age(policy: Policy) -> bool:
    """True when ``policy`` checks a maximum age (meaningless at the document's own time)."""
    max_age = getattr(policy, "max_age", None)
    if max_age is not None:
        return True
    return any(getattr(c, "max_age", None) is not None for c in policy.checks)


_default: Verifier | None = None
_shared: dict[tuple[bytes, ...], Verifier] = {}
_shared_lock = threading.Lock()


def _verifier_for(roots: Sequence[x509.Certificate] | None) -> Verifier:
    global _default
    with _shared_lock:
        if _default is None:
            _default = Verifier()
        if roots is None:
            return _default
        if (
            isinstance(roots, x509.Certificate)
            or not isinstance(roots, Sequence)
            or not all(isinstance(r, x509.Certificate) for r in roots)
        ):
            raise PolicyError("roots must be a sequence of x509.Certificate")
        key = tuple(r.fingerprint(hashes.SHA256()) for r in roots)
        verifier = _shared.get(key)
        if verifier is None:
            # Same cache as the default verifier: cached facts are keyed by certificate
            # fingerprints and never imply trust, so sharing them across root sets is safe.
            verifier = Verifier(roots, _chain=_default._chain)
            if len(_shared) >= _MAX_SHARED_VERIFIERS:
                _shared.pop(next(iter(_shared)))
            _shared[key] = verifier
        return verifier


def verify(
    data: bytes,
    policy: Policy | None = None,
    *,
    roots: Sequence[x509.Certificate] | None = None,
    at: At = None,
) -> AttestationDocument:
    """Verify an attestation document with a shared :class:`Verifier`.

    ``roots=None`` trusts the pinned AWS root only. ``at=None`` checks at the current time
    (read once), ``at=datetime`` at that time, ``at="document"`` at the document's own signed
    timestamp (for archived documents). ``policy=None`` checks authenticity only, and still
    refuses debug-mode documents.
    """
    return _verifier_for(roots).verify(data, policy, at=at)
