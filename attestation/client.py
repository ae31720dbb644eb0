"""Client of the parent proxy for services outside the enclave, with end-to-end encryption.

It speaks the proxy's HTTP API (docs/proxy.md) and trusts only the enclave, never the parent::

    from attestation import Policy
    from attestation.client import EnclaveClient

    policy = Policy(pcrs={0: PCR0_HEX}, max_age=timedelta(minutes=5))
    with EnclaveClient("http://parent:8080", policy) as client:
        session = client.attest()               # fresh nonce, document verified
        result = client.call_e2e("sign", {"name": "k1", "message": b"..."})

``attest()`` asks the enclave (through the proxy) for an attestation document over a fresh
random nonce, verifies it with :func:`attestation.verify` — chain to the pinned AWS root (or
``roots``), the caller's :class:`~attestation.Policy`, then the nonce and the freshness bound
here — and keeps the enclave's HPKE public key from it. ``call_e2e`` seals each request to that
key (``attestation.e2e``); the proxy relays ciphertext; only this client can open the reply. If
the proxy says the sealed request could not be opened, the client re-attests and re-sends it
only when the enclave's key changed (a restarted enclave can never have run a request sealed
to its predecessor); that answer is unauthenticated, so with an unchanged key the request is
never re-sent (it may have run). The policy must pin the enclave's code (PCR0/ImageSha384 or
PCR8, or an ``any_of`` whose every set does), unless ``unsafe_allow_unpinned_code=True``.
``call`` is the plain (not end-to-end) route ``POST /v1/<op>``.

Only the standard library's ``urllib`` is used for HTTP (blocking; one client per thread is
fine, or share one: it is thread-safe).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509

from attestation import AttestationDocument, AttestationError, Policy, verify
from attestation.e2e import E2EError, load_public_key, seal_request
from attestation.errors import CodedError, Kind
from attestation.policy import AnyOfPcrs, PcrsMatch

__all__ = [
    "NONCE_LEN",
    "AttestedSession",
    "ClientLimits",
    "EnclaveClient",
    "EnclaveClientError",
    "from_b64",
    "pins_code",
    "to_jsonable",
]

NONCE_LEN = 32
CODE_PCRS = frozenset({0, 8})
"""PCRs that pin the enclave's code: PCR0 (= KMS ImageSha384) or PCR8 (the signing cert)."""


def pins_code(policy: Policy) -> bool:
    """True when every document ``policy`` accepts has a pinned PCR0 or PCR8."""
    for check in policy.checks:
        if isinstance(check, PcrsMatch) and CODE_PCRS & set(check.expected):
            return True
        if isinstance(check, AnyOfPcrs) and all(CODE_PCRS & set(o) for o in check.options):
            return True
    return False


class EnclaveClientError(CodedError):
    """A call failed. ``code`` is stable: the enclave's or proxy's error code, or one of
    ``http-error``, ``unreachable``, ``bad-response``, ``attestation-failed``."""

    codes = {
        "http-error": Kind.INTERNAL,
        "unreachable": Kind.UNAVAILABLE,
        "bad-response": Kind.INTERNAL,
        "attestation-failed": Kind.FORBIDDEN,
        "e2e-decrypt-failed": Kind.BAD_REQUEST,
        "invalid-policy": Kind.BAD_REQUEST,
    }
    show_code = True

    def __init__(
        self, code: str, message: str, *, status: int | None = None, kind: str | None = None
    ) -> None:
        super().__init__(code, message, kind=kind)
        self.status = status


@dataclass(frozen=True)
class ClientLimits:
    timeout_s: float = 15.0  # one HTTP exchange
    max_response_bytes: int = 4 << 20
    max_session_age: timedelta = timedelta(minutes=10)  # re-attest after this long


@dataclass(frozen=True)
class AttestedSession:
    """A verified attestation: the enclave's HPKE key and the nonce that made it fresh."""

    document: AttestationDocument
    nonce: bytes
    public_key: bytes  # DER SPKI, from the verified document
    verified_at: datetime


def from_b64(text: str) -> bytes:
    """Decode a base64 field of a proxy answer."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise EnclaveClientError("bad-response", "a field is not valid base64") from exc


def to_jsonable(value: Any) -> Any:
    """bytes -> base64 text, recursively (what the proxy expects in JSON bodies)."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


class EnclaveClient:
    """Talks to the enclave through the parent proxy at ``proxy_url``."""

    def __init__(
        self,
        proxy_url: str,
        policy: Policy,
        *,
        roots: Sequence[x509.Certificate] | None = None,
        limits: ClientLimits | None = None,
        unsafe_allow_unpinned_code: bool = False,
    ) -> None:
        if not isinstance(policy, Policy):
            raise TypeError("policy must be an attestation.Policy (name the PCRs you trust)")
        if not pins_code(policy) and unsafe_allow_unpinned_code is not True:
            raise EnclaveClientError(
                "invalid-policy",
                "the policy pins no enclave code (PCR0/image_sha384, PCR8, or an any_of whose "
                "every set names one): a hostile parent could run any genuine enclave image and "
                "read your requests. Pin the image, or pass unsafe_allow_unpinned_code=True",
            )
        self.base_url = proxy_url.rstrip("/")
        self.policy = policy
        self.roots = roots
        self.limits = limits or ClientLimits()
        self._session: AttestedSession | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> EnclaveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session = None

    # ------------------------------------------------------------ HTTP

    def _http(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.limits.timeout_s) as response:
                status, raw = response.status, response.read(self.limits.max_response_bytes + 1)
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read(self.limits.max_response_bytes + 1)
        except (urllib.error.URLError, OSError) as exc:
            raise EnclaveClientError(
                "unreachable", f"cannot reach the proxy at {self.base_url}: {exc}"
            ) from exc
        if len(raw) > self.limits.max_response_bytes:
            raise EnclaveClientError("bad-response", "answer larger than max_response_bytes")
        try:
            payload = json.loads(raw) if raw else None
        except (ValueError, RecursionError) as exc:  # a hostile parent may send anything
            raise EnclaveClientError(
                "bad-response", f"HTTP {status}: not JSON", status=status
            ) from exc
        return status, payload

    def _post(self, path: str, body: Any) -> dict[str, Any]:
        status, payload = self._http("POST", path, body)
        if status != 200:
            error = payload.get("error") if isinstance(payload, dict) else None
            if isinstance(error, dict) and isinstance(error.get("code"), str):
                raise EnclaveClientError(
                    error["code"], str(error.get("message", "")), status=status,
                    kind=error.get("kind") if isinstance(error.get("kind"), str) else None,
                )
            raise EnclaveClientError("http-error", f"HTTP {status}", status=status)
        if not isinstance(payload, dict):
            raise EnclaveClientError("bad-response", "answer is not a JSON object")
        return payload

    # ------------------------------------------------------------ API

    def health(self) -> dict[str, Any]:
        """``GET /health`` -> ``{"proxy": "ok", "enclave": "ok"|"down", ...}`` (any status)."""
        _, payload = self._http("GET", "/health")
        if not isinstance(payload, dict):
            raise EnclaveClientError("bad-response", "health answer is not a JSON object")
        return payload

    def attest(self) -> AttestedSession:
        """Fetch and verify a fresh attestation document; keep its HPKE key."""
        nonce = os.urandom(NONCE_LEN)
        answer = self._post("/attestation", {"nonce": to_jsonable(nonce)})
        document = answer.get("document")
        if not isinstance(document, str):
            raise EnclaveClientError("bad-response", "attestation answer lacks 'document'")
        now = datetime.now(UTC)
        max_age = self.limits.max_session_age
        if self.policy.max_age is not None:
            max_age = min(max_age, self.policy.max_age)
        policy = dataclasses.replace(self.policy, nonce=nonce, max_age=max_age)
        try:
            doc = verify(from_b64(document), policy, roots=self.roots, at=now)
        except AttestationError as exc:
            raise EnclaveClientError("attestation-failed", f"{exc.code}: {exc.message}") from exc
        if doc.public_key is None:
            raise EnclaveClientError("attestation-failed", "document carries no public key")
        try:
            load_public_key(doc.public_key)
        except E2EError as exc:
            raise EnclaveClientError("attestation-failed", exc.message) from exc
        session = AttestedSession(doc, nonce, doc.public_key, now)
        with self._lock:
            self._session = session
        return session

    @property
    def session(self) -> AttestedSession | None:
        return self._session

    def _current_session(self) -> AttestedSession:
        with self._lock:
            session = self._session
        if session is None or datetime.now(UTC) - session.verified_at > self.limits.max_session_age:
            session = self.attest()
        return session

    def call(self, op: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Plain ``POST /v1/<op>``: bytes in ``body`` are sent base64; answer is JSON
        (bytes come back as base64 text: decode with :func:`from_b64`)."""
        return self._post(f"/v1/{op}", to_jsonable(dict(body or {})))

    def call_e2e(self, op: str, body: Any = None) -> Any:
        """Run ``op`` end-to-end encrypted; returns the enclave's result (bytes stay bytes).

        Raises ``EnclaveClientError`` with the enclave's error code on failure.
        """
        for attempt in range(2):
            session = self._current_session()
            try:
                sealed, opener = seal_request(session.public_key, session.nonce, op, body)
            except E2EError as exc:
                raise EnclaveClientError(exc.code, exc.message) from exc
            try:
                answer = self._post("/e2e", {"sealed": to_jsonable(sealed)})
            except EnclaveClientError as exc:
                if exc.code != "e2e-decrypt-failed" or attempt:
                    raise
                # Unauthenticated: the parent may say this after the enclave ran the request.
                if self.attest().public_key == session.public_key:
                    raise EnclaveClientError(
                        exc.code,
                        "the proxy says the enclave could not open the request, but the "
                        "enclave's key is unchanged: not re-sent (it may have run)",
                        status=exc.status,
                    ) from exc
                continue  # sealed to a key the (restarted) enclave no longer has: never ran
            reply_text = answer.get("sealed")
            if not isinstance(reply_text, str):
                raise EnclaveClientError("bad-response", "e2e answer lacks 'sealed'")
            try:
                reply = opener.open(from_b64(reply_text))
            except E2EError as exc:
                raise EnclaveClientError(exc.code, exc.message) from exc
            if reply["ok"]:
                return reply.get("result")
            error = reply.get("error")
            if not isinstance(error, dict):
                error = {}
            kind = error.get("kind")
            raise EnclaveClientError(
                str(error.get("code", "remote-error")), str(error.get("message", "")),
                kind=kind if isinstance(kind, str) else None,
            )
        raise EnclaveClientError("e2e-decrypt-failed", "the enclave refused the sealed request")
