"""Attested KMS: boto3 calls with ``Recipient``, answers only this enclave can open.

``AttestedKms`` wraps a stock boto3 KMS client (no botocore patching). Each call adds
``Recipient={"AttestationDocument": doc, "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"}``
where ``doc`` is an NSM attestation document whose ``public_key`` is the enclave's RSA-2048
key (DER SubjectPublicKeyInfo). KMS checks the key policy's
``kms:RecipientAttestation:ImageSha384`` / ``PCRn`` conditions against the document and
answers with ``CiphertextForRecipient`` (CMS EnvelopedData to that key), which
``enclave.kms.cms`` opens here. The key pair and its document are cached and renewed on a
schedule (``enclave._enclave_key``), not per call. Plaintexts stay in memory and are never
logged; failures raise ``KmsError`` with a stable ``code``.

    kms = AttestedKms.for_enclave(credential_store)   # tunnel to the parent's relay, NSM
    secret = kms.decrypt(ciphertext, encryption_context={"app": "demo"})

``for_enclave`` builds what the enclave app needs: the loopback tunnel to the parent's KMS
relay (``enclave.kms.tunnel``), a boto3 session fed by the parent's credentials
(``enclave.kms.credentials``) and the NSM client. See docs/attested-kms.md.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from attestation.errors import CodedError, Kind
from enclave._enclave_key import KeyLimits, RecipientKey, RecipientKeyring
from enclave.kms.cms import CmsError, decrypt_enveloped_data

if TYPE_CHECKING:
    from enclave.kms.credentials import CredentialStore
    from enclave.kms.tunnel import KmsTunnel, TunnelLimits
    from enclave.transport import VsockAddress

__all__ = [
    "KEY_ENCRYPTION_ALGORITHM",
    "KMS_ERROR_CODES",
    "KMS_SCHEME_ENV",
    "AttestedKms",
    "DataKey",
    "DataKeyPair",
    "KeyLimits",
    "KmsError",
    "KmsLimits",
]

KEY_ENCRYPTION_ALGORITHM = "RSAES_OAEP_SHA_256"
"""The only KeyEncryptionAlgorithm KMS accepts in Recipient."""
KMS_SCHEME_ENV = "NITRO_KMS_SCHEME"
"""``http`` selects plain HTTP to a simulated KMS (refused unless NITRO_VSOCK_SIM_DIR is set)."""
MAX_CIPHERTEXT_BLOB = 6144
"""KMS CiphertextBlob limit (bytes)."""
MAX_RANDOM_BYTES = 1024
"""KMS GenerateRandom limit (bytes)."""
MAX_ERROR_MESSAGE = 300
"""AWS error messages are cut to this length."""

KMS_ERROR_CODES: Mapping[str, str] = {
    "AccessDeniedException": "kms-access-denied",
    "NotFoundException": "kms-not-found",
    "InvalidCiphertextException": "kms-invalid-ciphertext",
    "IncorrectKeyException": "kms-incorrect-key",
    "InvalidKeyUsageException": "kms-invalid-key-usage",
    "DisabledException": "kms-key-disabled",
    "KMSInvalidStateException": "kms-invalid-state",
    "KeyUnavailableException": "kms-unavailable",
    "DependencyTimeoutException": "kms-unavailable",
    "KMSInternalException": "kms-unavailable",
    "ThrottlingException": "kms-throttled",
    "LimitExceededException": "kms-throttled",
    "ValidationException": "kms-invalid-request",
    "InvalidGrantTokenException": "kms-invalid-request",
    "InvalidArnException": "kms-invalid-request",
    "UnsupportedOperationException": "kms-unsupported",
    "UnrecognizedClientException": "kms-bad-credentials",
    "InvalidSignatureException": "kms-bad-credentials",
    "IncompleteSignature": "kms-bad-credentials",
    "ExpiredTokenException": "kms-bad-credentials",
    "InvalidClientTokenId": "kms-bad-credentials",
}
"""AWS error code -> our stable code. Anything else: ``kms-error``.

Other codes: ``kms-unreachable`` (no connection to KMS through the relay),
``kms-tls-failed`` (KMS's certificate or host name did not verify),
``credentials-unavailable`` (no credentials from the parent in time), ``attestation-failed``
(the NSM gave no document), ``kms-bad-response`` (CiphertextForRecipient missing or not
decodable), ``kms-recipient-ignored`` (KMS answered in plaintext: it ignored Recipient),
``bad-request`` (arguments refused before any call).
"""

_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ProxyConnectionError,
    botocore.exceptions.HTTPClientError,
)


class KmsError(CodedError):
    """A failed attested KMS call. `code` is stable; `aws_code` is KMS's own, if any."""

    codes = {
        "kms-access-denied": Kind.FORBIDDEN,
        "kms-not-found": Kind.NOT_FOUND,
        "kms-invalid-ciphertext": Kind.BAD_REQUEST,
        "kms-incorrect-key": Kind.BAD_REQUEST,
        "kms-invalid-key-usage": Kind.BAD_REQUEST,
        "kms-key-disabled": Kind.CONFLICT,
        "kms-invalid-state": Kind.CONFLICT,
        "kms-unavailable": Kind.UNAVAILABLE,
        "kms-throttled": Kind.UNAVAILABLE,
        "kms-invalid-request": Kind.BAD_REQUEST,
        "kms-unsupported": Kind.BAD_REQUEST,
        "kms-bad-credentials": Kind.UNAVAILABLE,
        "kms-error": Kind.UNAVAILABLE,
        "kms-unreachable": Kind.UNAVAILABLE,
        "kms-tls-failed": Kind.UNAVAILABLE,
        "kms-bad-response": Kind.UNAVAILABLE,
        "kms-recipient-ignored": Kind.INTERNAL,
        "credentials-unavailable": Kind.UNAVAILABLE,
        "credentials-expired": Kind.UNAVAILABLE,
        "attestation-failed": Kind.UNAVAILABLE,
        "bad-request": Kind.BAD_REQUEST,
    }
    show_code = True

    def __init__(
        self,
        code: str,
        message: str,
        *,
        aws_code: str | None = None,
        operation: str = "",
        kind: str | None = None,
    ) -> None:
        super().__init__(code, message, kind=kind)
        self.aws_code = aws_code
        self.operation = operation

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code, "kind": self.kind, "message": self.message,
            "aws_code": self.aws_code,
        }


@dataclass(frozen=True)
class KmsLimits:
    """Timeouts and sizes of the boto3 client built by `AttestedKms.for_enclave`."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    max_attempts: int = 3
    """botocore "standard" retry mode attempts (throttling, connection errors)."""
    max_pool_connections: int = 32
    """Kept-alive connections (each one a TLS session through the relay)."""


@dataclass(frozen=True, repr=False)
class DataKey:
    """GenerateDataKey result; `repr` hides the plaintext."""

    plaintext: bytes
    ciphertext_blob: bytes
    key_id: str

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r}, plaintext=<{len(self.plaintext)} bytes>)"


@dataclass(frozen=True, repr=False)
class DataKeyPair:
    """GenerateDataKeyPair result; `repr` hides the private key."""

    private_key_plaintext: bytes  # DER PKCS#8
    private_key_ciphertext_blob: bytes
    public_key: bytes  # DER SubjectPublicKeyInfo
    key_id: str
    key_pair_spec: str

    def __repr__(self) -> str:
        return f"DataKeyPair(key_id={self.key_id!r}, key_pair_spec={self.key_pair_spec!r})"


class AttestedKms:
    """KMS calls with Recipient; thread-safe (boto3 clients and the keyring are)."""

    def __init__(
        self,
        client: Any | Callable[[], Any],
        *,
        attest: Callable[[bytes], bytes] | None = None,
        nsm: Any = None,
        key_limits: KeyLimits | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        """`client`: a boto3 KMS client, or a zero-argument factory called on first use.
        `attest(public_key_der) -> document`; default: `nsm.attestation(public_key=...)`
        with `nsm` (default: `NsmClient()`, the device or $NITRO_NSM_SOCKET)."""
        if attest is None:
            if nsm is None:
                from enclave.nsm import NsmClient

                nsm = NsmClient()
            attest = _attest_with(nsm)
        self.keyring = RecipientKeyring(attest, limits=key_limits)
        if callable(client) and not hasattr(client, "decrypt"):
            self._client, self._factory = None, client
        else:
            self._client, self._factory = client, None
        self._client_lock = threading.Lock()
        self._on_close = on_close

    # -- construction for the enclave app ------------------------------------------------------

    @classmethod
    def for_enclave(
        cls,
        credentials: CredentialStore,
        *,
        region: str | None = None,
        relay: VsockAddress | None = None,
        scheme: str | None = None,
        nsm: Any = None,
        attest: Callable[[bytes], bytes] | None = None,
        limits: KmsLimits | None = None,
        key_limits: KeyLimits | None = None,
        ca_bundle: str | None = None,
        tunnel_limits: TunnelLimits | None = None,
    ) -> AttestedKms:
        """The app's client: boto3 -> loopback tunnel -> vsock -> parent relay -> KMS.

        `region`: default the one the parent pushes with the credentials, else
        $AWS_REGION / $AWS_DEFAULT_REGION, else us-east-1 (decided at the first call).
        `scheme`: ``https`` (default; TLS inside the enclave) or ``http`` (simulation only;
        also chosen by $NITRO_KMS_SCHEME). `ca_bundle`: CA file for KMS's certificate
        (default: botocore's bundle). The tunnel starts at the first call.
        """
        limits = limits or KmsLimits()
        scheme = scheme or os.environ.get(KMS_SCHEME_ENV) or "https"
        holder: dict[str, KmsTunnel] = {}

        def build() -> Any:
            from enclave.kms.credentials import DEFAULT_REGION
            from enclave.kms.tunnel import KmsTunnel

            name = region or _env_region()
            if name is None:
                try:
                    name = credentials.wait_usable().region
                except Exception as exc:  # CredentialsError: reported as such by the call
                    raise _typed(exc, "") from None
            name = name or DEFAULT_REGION
            tunnel = KmsTunnel(name, relay=relay, scheme=scheme, limits=tunnel_limits).start()
            holder["tunnel"] = tunnel
            session = credentials.boto3_session(name)
            return session.client(
                "kms",
                region_name=name,
                verify=ca_bundle,
                **tunnel.client_kwargs(
                    connect_timeout=limits.connect_timeout_s,
                    read_timeout=limits.read_timeout_s,
                    retries={"max_attempts": limits.max_attempts, "mode": "standard"},
                    max_pool_connections=limits.max_pool_connections,
                ),
            )

        def close() -> None:
            tunnel = holder.pop("tunnel", None)
            if tunnel is not None:
                tunnel.close()

        return cls(build, nsm=nsm, attest=attest, key_limits=key_limits, on_close=close)

    def close(self) -> None:
        """Stop the tunnel (if `for_enclave` started one)."""
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> AttestedKms:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> Any:
        """The boto3 KMS client (built on first use when a factory was given)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    assert self._factory is not None
                    self._client = self._factory()
        return self._client

    # -- operations ----------------------------------------------------------------------------

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        encryption_context: Mapping[str, str] | None = None,
        key_id: str | None = None,
        encryption_algorithm: str | None = None,
        grant_tokens: Sequence[str] | None = None,
    ) -> bytes:
        """KMS Decrypt; the plaintext, opened from CiphertextForRecipient."""
        if not isinstance(ciphertext_blob, bytes | bytearray) or not (
            0 < len(ciphertext_blob) <= MAX_CIPHERTEXT_BLOB
        ):
            raise KmsError("bad-request", f"ciphertext_blob must be 1..{MAX_CIPHERTEXT_BLOB} bytes")
        params = _params(
            CiphertextBlob=bytes(ciphertext_blob),
            EncryptionContext=_context(encryption_context),
            KeyId=key_id,
            EncryptionAlgorithm=encryption_algorithm,
            GrantTokens=list(grant_tokens) if grant_tokens else None,
        )
        plaintext, _ = self._call("Decrypt", "decrypt", params, ("Plaintext",))
        return plaintext

    def generate_data_key(
        self,
        key_id: str,
        *,
        key_spec: str | None = "AES_256",
        number_of_bytes: int | None = None,
        encryption_context: Mapping[str, str] | None = None,
        grant_tokens: Sequence[str] | None = None,
    ) -> DataKey:
        """KMS GenerateDataKey: the plaintext key (for this enclave) and its CiphertextBlob."""
        if number_of_bytes is not None:
            key_spec = None
        params = _params(
            KeyId=key_id,
            KeySpec=key_spec,
            NumberOfBytes=number_of_bytes,
            EncryptionContext=_context(encryption_context),
            GrantTokens=list(grant_tokens) if grant_tokens else None,
        )
        plaintext, resp = self._call("GenerateDataKey", "generate_data_key", params, ("Plaintext",))
        return DataKey(plaintext, resp["CiphertextBlob"], resp.get("KeyId", key_id))

    def generate_data_key_pair(
        self,
        key_id: str,
        key_pair_spec: str,
        *,
        encryption_context: Mapping[str, str] | None = None,
        grant_tokens: Sequence[str] | None = None,
    ) -> DataKeyPair:
        """KMS GenerateDataKeyPair: the private key (DER PKCS#8, for this enclave only)."""
        params = _params(
            KeyId=key_id,
            KeyPairSpec=key_pair_spec,
            EncryptionContext=_context(encryption_context),
            GrantTokens=list(grant_tokens) if grant_tokens else None,
        )
        private_key, resp = self._call(
            "GenerateDataKeyPair", "generate_data_key_pair", params, ("PrivateKeyPlaintext",)
        )
        return DataKeyPair(
            private_key,
            resp["PrivateKeyCiphertextBlob"],
            resp["PublicKey"],
            resp.get("KeyId", key_id),
            resp.get("KeyPairSpec", key_pair_spec),
        )

    def generate_random(
        self, number_of_bytes: int, *, custom_key_store_id: str | None = None
    ) -> bytes:
        """KMS GenerateRandom, delivered encrypted to this enclave."""
        if type(number_of_bytes) is not int or not 1 <= number_of_bytes <= MAX_RANDOM_BYTES:
            raise KmsError("bad-request", f"number_of_bytes must be 1..{MAX_RANDOM_BYTES}")
        params = _params(NumberOfBytes=number_of_bytes, CustomKeyStoreId=custom_key_store_id)
        random, _ = self._call("GenerateRandom", "generate_random", params, ("Plaintext",))
        return random

    def derive_shared_secret(
        self,
        key_id: str,
        public_key: bytes,
        *,
        key_agreement_algorithm: str = "ECDH",
        grant_tokens: Sequence[str] | None = None,
    ) -> bytes:
        """KMS DeriveSharedSecret (ECDH with a KMS key pair), delivered to this enclave."""
        params = _params(
            KeyId=key_id,
            PublicKey=public_key,
            KeyAgreementAlgorithm=key_agreement_algorithm,
            GrantTokens=list(grant_tokens) if grant_tokens else None,
        )
        secret, _ = self._call(
            "DeriveSharedSecret", "derive_shared_secret", params, ("SharedSecret",)
        )
        return secret

    # -- the common path -----------------------------------------------------------------------

    def _recipient_key(self, operation: str) -> RecipientKey:
        try:
            return self.keyring.current()
        except Exception as exc:
            raise KmsError(
                "attestation-failed",
                f"no attestation document from the NSM: {getattr(exc, 'code', type(exc).__name__)}",
                operation=operation,
            ) from None

    def _call(
        self, operation: str, method: str, params: dict[str, Any], plain_fields: tuple[str, ...]
    ) -> tuple[bytes, dict[str, Any]]:
        key = self._recipient_key(operation)
        params["Recipient"] = {
            "AttestationDocument": key.document,
            "KeyEncryptionAlgorithm": KEY_ENCRYPTION_ALGORITHM,
        }
        try:
            client = self.client
            resp = getattr(client, method)(**params)
        except KmsError:
            raise
        except Exception as exc:
            raise _typed(exc, operation) from None
        sealed = resp.get("CiphertextForRecipient")
        if not sealed:
            if any(resp.get(f) for f in plain_fields):
                raise KmsError(
                    "kms-recipient-ignored",
                    "KMS answered in plaintext: it ignored Recipient (not a Nitro-aware KMS?)",
                    operation=operation,
                )
            raise KmsError(
                "kms-bad-response", "KMS sent no CiphertextForRecipient", operation=operation
            )
        try:
            return decrypt_enveloped_data(sealed, key.private_key), resp
        except CmsError as exc:
            raise KmsError(
                "kms-bad-response",
                f"CiphertextForRecipient could not be opened ({exc.code})",
                operation=operation,
            ) from None


def _attest_with(nsm: Any) -> Callable[[bytes], bytes]:
    def attest(public_key_der: bytes) -> bytes:
        return nsm.attestation(public_key=public_key_der)

    return attest


def _env_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def _params(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


def _context(context: Mapping[str, str] | None) -> dict[str, str] | None:
    if not context:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise KmsError("bad-request", "encryption_context must map str to str")
    return dict(context)


def _typed(exc: BaseException, operation: str) -> KmsError:
    """Any failure of a boto3 call as a KmsError (messages never carry plaintext)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        aws_code = str(err.get("Code") or "Unknown")
        message = str(err.get("Message") or aws_code)[:MAX_ERROR_MESSAGE]
        code = KMS_ERROR_CODES.get(aws_code, "kms-error")
        return KmsError(code, f"{operation}: {message}", aws_code=aws_code, operation=operation)
    coded = getattr(exc, "code", None)
    if isinstance(coded, str) and coded.startswith("credentials-"):
        return KmsError(coded, getattr(exc, "message", str(exc)), operation=operation)
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return KmsError("credentials-unavailable", "no AWS credentials", operation=operation)
    if isinstance(exc, botocore.exceptions.SSLError):
        return KmsError(
            "kms-tls-failed",
            f"{operation}: TLS to KMS failed (certificate or host name not accepted)",
            operation=operation,
        )
    if isinstance(exc, _UNREACHABLE):
        return KmsError(
            "kms-unreachable",
            f"{operation}: KMS unreachable through the relay ({type(exc).__name__})",
            operation=operation,
        )
    if isinstance(coded, str) and coded:  # e.g. TunnelError: its code and kind
        kind = getattr(exc, "kind", None)
        return KmsError(
            coded, getattr(exc, "message", str(exc)), operation=operation,
            kind=kind if isinstance(kind, str) else None,
        )
    return KmsError(
        "kms-error", f"{operation}: {type(exc).__name__}", operation=operation
    )
