"""The KMS operations: resolve the key, authorize with its key policy, act, answer.

Every operation takes the checked request members (blobs already decoded) and a
:class:`CallContext` (who calls, at which reference time) and returns the response members
(bytes are base64-encoded by the server). Errors are :class:`KmsError` with KMS's names.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from attestation import Verifier
from simulator.kms import _ciphertext
from simulator.kms.cms_builder import build_ciphertext_for_recipient
from simulator.kms.errors import KmsError
from simulator.kms.policy import (
    AuthzRequest,
    Caller,
    Decision,
    KeyPolicy,
    PolicyDocumentError,
    default_key_policy,
    evaluate,
    iam_allows,
    parse_policy,
)
from simulator.kms.recipient import VerifiedRecipient, check_recipient
from simulator.kms.store import Alias, KeyRecord, KeyStore, StoreError, new_key_id

__all__ = ["CallContext", "KmsService", "ServiceConfig"]

SYMMETRIC = "SYMMETRIC_DEFAULT"
ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"
KEY_AGREEMENT = "KEY_AGREEMENT"
SIGN_VERIFY = "SIGN_VERIFY"
MAX_SIGN_MESSAGE_BYTES = 4096
"""Largest RAW message kms:Sign takes (KMS API reference)."""
MAX_PLAINTEXT_BYTES = 4096
MIN_PENDING_WINDOW_DAYS = 7
MAX_PENDING_WINDOW_DAYS = 30
DEFAULT_PENDING_WINDOW_DAYS = 30
DEFAULT_LIST_LIMIT = 100

_ECC_CURVES: dict[str, Callable[[], ec.EllipticCurve]] = {
    "ECC_NIST_P256": ec.SECP256R1,
    "ECC_NIST_P384": ec.SECP384R1,
    "ECC_NIST_P521": ec.SECP521R1,
}
_ECDSA: dict[str, tuple[str, hashes.HashAlgorithm]] = {
    "ECC_NIST_P256": ("ECDSA_SHA_256", hashes.SHA256()),
    "ECC_NIST_P384": ("ECDSA_SHA_384", hashes.SHA384()),
    "ECC_NIST_P521": ("ECDSA_SHA_512", hashes.SHA512()),
}
_RSA_PAIR_BITS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}
_ALIAS_RE = re.compile(r"^alias/[a-zA-Z0-9/_-]+$")
_KEY_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class ServiceConfig:
    """What one KMS endpoint is: region, account, trust roots, attestation age bound."""

    region: str
    account: str
    verifier: Verifier
    attestation_max_age: timedelta | None = timedelta(minutes=5)


@dataclass(frozen=True)
class CallContext:
    """The authenticated caller and the request's one reference time."""

    caller: Caller
    now: datetime


@lru_cache(maxsize=512)
def _parsed_policy(text: str) -> KeyPolicy:
    return parse_policy(text)


def _random_bytes(count: int) -> bytes:
    return os.urandom(count)


class KmsService:
    """The operations over one :class:`KeyStore`."""

    def __init__(self, store: KeyStore, config: ServiceConfig) -> None:
        self._store = store
        self._config = config
        self._mutate = threading.Lock()  # read-modify-write of one key or alias
        self._ops: dict[str, Callable[[dict[str, Any], CallContext], dict[str, Any]]] = {
            "CreateKey": self.create_key,
            "DescribeKey": self.describe_key,
            "ListKeys": self.list_keys,
            "CreateAlias": self.create_alias,
            "DeleteAlias": self.delete_alias,
            "ListAliases": self.list_aliases,
            "GetKeyPolicy": self.get_key_policy,
            "PutKeyPolicy": self.put_key_policy,
            "EnableKey": self.enable_key,
            "DisableKey": self.disable_key,
            "ScheduleKeyDeletion": self.schedule_key_deletion,
            "CancelKeyDeletion": self.cancel_key_deletion,
            "Encrypt": self.encrypt,
            "Decrypt": self.decrypt,
            "ReEncrypt": self.re_encrypt,
            "GenerateDataKey": self.generate_data_key,
            "GenerateDataKeyWithoutPlaintext": self.generate_data_key_without_plaintext,
            "GenerateDataKeyPair": self.generate_data_key_pair,
            "GenerateDataKeyPairWithoutPlaintext": self.generate_data_key_pair_without_plaintext,
            "GenerateRandom": self.generate_random,
            "DeriveSharedSecret": self.derive_shared_secret,
            "GetPublicKey": self.get_public_key,
            "Sign": self.sign,
        }

    @property
    def operations(self) -> frozenset[str]:
        """Names of the supported operations."""
        return frozenset(self._ops)

    def handle(self, operation: str, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Run ``operation``; raises KmsError."""
        handler = self._ops.get(operation)
        if handler is None:
            raise KmsError(
                "UnknownOperationException", f"Operation {operation} is not supported here"
            )
        return handler(params, ctx)

    # ------------------------------------------------------------------------- resolution
    def _key_arn(self, key_id: str) -> str:
        return f"arn:aws:kms:{self._config.region}:{self._config.account}:key/{key_id}"

    def _alias_arn(self, name: str) -> str:
        return f"arn:aws:kms:{self._config.region}:{self._config.account}:{name}"

    def _resolve(self, ref: str, *, allow_alias: bool = True) -> KeyRecord:
        prefix = f"arn:aws:kms:{self._config.region}:{self._config.account}:"
        name = ref[len(prefix) :] if ref.startswith(prefix) else ref
        if name.startswith("alias/"):
            if not allow_alias:
                raise KmsError("ValidationException", "An alias cannot be used here; use a key id")
            alias = self._store.get_alias(name)
            if alias is None:
                raise KmsError("NotFoundException", f"Alias {self._alias_arn(name)} is not found.")
            name = alias.target_key_id
        elif name.startswith("key/") and ref.startswith(prefix):
            name = name[len("key/") :]
        if not _KEY_ID_RE.match(name):
            if ref.startswith("arn:"):
                raise KmsError("NotFoundException", f"Invalid arn {ref}")
            raise KmsError("NotFoundException", f"Invalid keyId '{ref}'")
        record = self._store.get_key(name)
        if record is None:
            raise KmsError("NotFoundException", f"Key '{self._key_arn(name)}' does not exist")
        return record

    # ---------------------------------------------------------------------- authorization
    def _context(
        self,
        ctx: CallContext,
        encryption_context: Mapping[str, str] | None = None,
        recipient: VerifiedRecipient | None = None,
    ) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {
            "aws:principalarn": (ctx.caller.arn,),
            "aws:principalaccount": (ctx.caller.account,),
            "kms:calleraccount": (ctx.caller.account,),
        }
        if encryption_context:
            _refuse_case_colliding_keys(encryption_context)
            for key, value in encryption_context.items():
                out[f"kms:encryptioncontext:{key.lower()}"] = (value,)
            out["kms:encryptioncontextkeys"] = tuple(encryption_context)
        if recipient is not None:
            out.update(recipient.context)
        return out

    def _authorize(
        self,
        ctx: CallContext,
        action: str,
        key: KeyRecord,
        context: Mapping[str, Sequence[str]] | None = None,
        *,
        policy_text: str | None = None,
    ) -> None:
        policy = _parsed_policy(policy_text if policy_text is not None else key.policy)
        request = AuthzRequest(ctx.caller, action, key.arn, context or self._context(ctx))
        result = evaluate(policy, request)
        if result.allowed:
            return
        why = (
            "with an explicit deny in a resource-based policy"
            if result.decision is Decision.EXPLICIT_DENY
            else "because no resource-based policy allows the " + action + " action"
        )
        raise KmsError(
            "AccessDeniedException",
            f"User: {ctx.caller.arn} is not authorized to perform: {action} on resource: "
            f"{key.arn} {why}",
        )

    def _authorize_iam(self, ctx: CallContext, action: str) -> None:
        if not iam_allows(ctx.caller, action):
            raise KmsError(
                "AccessDeniedException",
                f"User: {ctx.caller.arn} is not authorized to perform: {action} "
                "because no identity-based policy allows the " + action + " action",
            )

    @staticmethod
    def _require_usable(key: KeyRecord) -> None:
        if key.key_state == "Disabled":
            raise KmsError("DisabledException", f"{key.arn} is disabled.")
        if key.key_state != "Enabled":
            raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")

    @staticmethod
    def _require_not_pending(key: KeyRecord) -> None:
        if key.key_state == "PendingDeletion":
            raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")

    @staticmethod
    def _require_usage(key: KeyRecord, usage: str) -> None:
        if key.key_usage != usage:
            raise KmsError(
                "InvalidKeyUsageException",
                f"{key.arn} key usage is {key.key_usage} which is not valid for this operation.",
            )

    @staticmethod
    def _require_symmetric_algorithm(params: Mapping[str, Any], member: str) -> None:
        algorithm = params.get(member, SYMMETRIC)
        if algorithm != SYMMETRIC:
            raise KmsError(
                "InvalidKeyUsageException",
                f"The encryption algorithm {algorithm} is not valid for a symmetric key",
            )

    @staticmethod
    def _dry_run(params: Mapping[str, Any]) -> None:
        if params.get("DryRun"):
            raise KmsError(
                "DryRunOperationException",
                "The request would have succeeded, but the DryRun option is set.",
            )

    def _recipient(self, params: Mapping[str, Any], ctx: CallContext) -> VerifiedRecipient | None:
        recipient = params.get("Recipient")
        if recipient is None:
            return None
        return check_recipient(
            recipient,
            verifier=self._config.verifier,
            now=ctx.now,
            max_age=self._config.attestation_max_age,
        )

    def _store_put(self, record: KeyRecord) -> None:
        try:
            self._store.put_key(record)
        except StoreError as exc:
            if exc.code == "limit":
                raise KmsError("LimitExceededException", exc.message) from None
            raise

    # ------------------------------------------------------------------- key management
    def _metadata(self, key: KeyRecord) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "AWSAccountId": key.account,
            "KeyId": key.key_id,
            "Arn": key.arn,
            "CreationDate": key.creation_date,
            "Enabled": key.enabled,
            "Description": key.description,
            "KeyUsage": key.key_usage,
            "KeyState": key.key_state,
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": key.key_spec,
            "KeySpec": key.key_spec,
            "MultiRegion": False,
        }
        if key.key_usage == ENCRYPT_DECRYPT:
            meta["EncryptionAlgorithms"] = [SYMMETRIC]
        elif key.key_usage == SIGN_VERIFY:
            meta["SigningAlgorithms"] = [_ECDSA[key.key_spec][0]]
        else:
            meta["KeyAgreementAlgorithms"] = ["ECDH"]
        if key.deletion_date is not None:
            meta["DeletionDate"] = key.deletion_date
            meta["PendingDeletionWindowInDays"] = key.pending_window_days
        return meta

    def _check_new_policy(self, ctx: CallContext, text: str, key: KeyRecord, bypass: bool) -> None:
        try:
            _parsed_policy(text)
        except PolicyDocumentError as exc:
            raise KmsError("MalformedPolicyDocumentException", exc.message) from None
        if bypass:
            return
        try:
            self._authorize(ctx, "kms:PutKeyPolicy", key, policy_text=text)
        except KmsError:
            raise KmsError(
                "MalformedPolicyDocumentException",
                "The new key policy will not allow you to update the key policy in the future.",
            ) from None

    def create_key(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        self._authorize_iam(ctx, "kms:CreateKey")
        spec = p.get("KeySpec") or p.get("CustomerMasterKeySpec") or SYMMETRIC
        usage = p.get("KeyUsage")
        if p.get("Origin", "AWS_KMS") != "AWS_KMS":
            raise KmsError("UnsupportedOperationException", "Only Origin AWS_KMS is supported")
        if p.get("MultiRegion") or p.get("CustomKeyStoreId") or p.get("XksKeyId"):
            raise KmsError(
                "UnsupportedOperationException",
                "Multi-Region keys and custom key stores are not supported by the local KMS",
            )
        if spec == SYMMETRIC:
            usage = usage or ENCRYPT_DECRYPT
            if usage != ENCRYPT_DECRYPT:
                raise KmsError("ValidationException", f"KeyUsage {usage} is not valid for {spec}")
            material = _random_bytes(32)
        elif spec in _ECC_CURVES and usage in (KEY_AGREEMENT, SIGN_VERIFY):
            private = ec.generate_private_key(_ECC_CURVES[spec]())
            material = private.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        else:
            raise KmsError(
                "UnsupportedOperationException",
                "The local KMS supports SYMMETRIC_DEFAULT keys and ECC_NIST_* KEY_AGREEMENT or "
                f"SIGN_VERIFY keys, "
                f"not {spec}/{usage}",
            )
        key_id = new_key_id()
        record = KeyRecord(
            key_id=key_id,
            arn=self._key_arn(key_id),
            account=self._config.account,
            creation_date=ctx.now.timestamp(),
            description=p.get("Description", ""),
            key_spec=spec,
            key_usage=usage,
            key_state="Enabled",
            policy=p.get("Policy") or default_key_policy(self._config.account),
            material=material,
        )
        if "Policy" in p:
            self._check_new_policy(
                ctx, p["Policy"], record, bool(p.get("BypassPolicyLockoutSafetyCheck"))
            )
        self._store_put(record)
        return {"KeyMetadata": self._metadata(record)}

    def describe_key(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        key = self._resolve(p["KeyId"])
        self._authorize(ctx, "kms:DescribeKey", key)
        return {"KeyMetadata": self._metadata(key)}

    def list_keys(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        self._authorize_iam(ctx, "kms:ListKeys")
        keys = self._store.keys()
        start = self._marker_index([k.key_id for k in keys], p.get("Marker"))
        limit = p.get("Limit", DEFAULT_LIST_LIMIT)
        page = keys[start : start + limit]
        out: dict[str, Any] = {
            "Keys": [{"KeyId": k.key_id, "KeyArn": k.arn} for k in page],
            "Truncated": start + limit < len(keys),
        }
        if out["Truncated"]:
            out["NextMarker"] = keys[start + limit].key_id
        return out

    @staticmethod
    def _marker_index(ids: list[str], marker: str | None) -> int:
        if marker is None:
            return 0
        try:
            return ids.index(marker)
        except ValueError:
            raise KmsError("InvalidMarkerException", "The marker is invalid") from None

    def create_alias(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        name = p["AliasName"]
        if not _ALIAS_RE.match(name) or name.startswith("alias/aws/"):
            raise KmsError(
                "InvalidAliasNameException",
                "Alias must start with alias/, use [a-zA-Z0-9/_-] and not start with alias/aws/",
            )
        key = self._resolve(p["TargetKeyId"], allow_alias=False)
        self._authorize(ctx, "kms:CreateAlias", key)
        self._require_not_pending(key)
        with self._mutate:
            if self._store.get_alias(name) is not None:
                raise KmsError(
                    "AlreadyExistsException",
                    f"An alias with the name {self._alias_arn(name)} already exists",
                )
            now = ctx.now.timestamp()
            alias = Alias(name, self._alias_arn(name), key.key_id, now, now)
            try:
                self._store.put_alias(alias)
            except StoreError as exc:
                raise KmsError("LimitExceededException", exc.message) from None
        return {}

    def delete_alias(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        name = p["AliasName"]
        alias = self._store.get_alias(name)
        if alias is None:
            raise KmsError("NotFoundException", f"Alias {self._alias_arn(name)} is not found.")
        key = self._resolve(alias.target_key_id)
        self._authorize(ctx, "kms:DeleteAlias", key)
        with self._mutate:
            self._store.delete_alias(name)
        return {}

    def list_aliases(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        self._authorize_iam(ctx, "kms:ListAliases")
        aliases = self._store.aliases()
        if "KeyId" in p:
            key = self._resolve(p["KeyId"], allow_alias=False)
            aliases = [a for a in aliases if a.target_key_id == key.key_id]
        start = self._marker_index([a.name for a in aliases], p.get("Marker"))
        limit = p.get("Limit", DEFAULT_LIST_LIMIT)
        page = aliases[start : start + limit]
        out: dict[str, Any] = {
            "Aliases": [
                {
                    "AliasName": a.name,
                    "AliasArn": a.arn,
                    "TargetKeyId": a.target_key_id,
                    "CreationDate": a.creation_date,
                    "LastUpdatedDate": a.last_updated_date,
                }
                for a in page
            ],
            "Truncated": start + limit < len(aliases),
        }
        if out["Truncated"]:
            out["NextMarker"] = aliases[start + limit].name
        return out

    @staticmethod
    def _policy_name(p: Mapping[str, Any]) -> None:
        if p.get("PolicyName", "default") != "default":
            raise KmsError("NotFoundException", "No such policy exists; the only name is default")

    def get_key_policy(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        self._policy_name(p)
        key = self._resolve(p["KeyId"], allow_alias=False)
        self._authorize(ctx, "kms:GetKeyPolicy", key)
        return {"Policy": key.policy, "PolicyName": "default"}

    def put_key_policy(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        self._policy_name(p)
        key = self._resolve(p["KeyId"], allow_alias=False)
        self._authorize(ctx, "kms:PutKeyPolicy", key)
        self._require_not_pending(key)
        self._check_new_policy(ctx, p["Policy"], key, bool(p.get("BypassPolicyLockoutSafetyCheck")))
        with self._mutate:
            current = self._store.get_key(key.key_id) or key
            self._store_put(current.with_changes(policy=p["Policy"]))
        return {}

    def _set_state(self, p: dict[str, Any], ctx: CallContext, action: str, state: str) -> None:
        key = self._resolve(p["KeyId"], allow_alias=False)
        self._authorize(ctx, action, key)
        self._require_not_pending(key)
        with self._mutate:
            current = self._store.get_key(key.key_id) or key
            self._store_put(current.with_changes(key_state=state))

    def enable_key(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        self._set_state(p, ctx, "kms:EnableKey", "Enabled")
        return {}

    def disable_key(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        self._set_state(p, ctx, "kms:DisableKey", "Disabled")
        return {}

    def schedule_key_deletion(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        days = p.get("PendingWindowInDays", DEFAULT_PENDING_WINDOW_DAYS)
        if not MIN_PENDING_WINDOW_DAYS <= days <= MAX_PENDING_WINDOW_DAYS:
            raise KmsError(
                "ValidationException",
                f"PendingWindowInDays must be {MIN_PENDING_WINDOW_DAYS} to "
                f"{MAX_PENDING_WINDOW_DAYS}",
            )
        key = self._resolve(p["KeyId"], allow_alias=False)
        self._authorize(ctx, "kms:ScheduleKeyDeletion", key)
        self._require_not_pending(key)
        deletion = (ctx.now + timedelta(days=days)).timestamp()
        with self._mutate:
            current = self._store.get_key(key.key_id) or key
            self._store_put(
                current.with_changes(
                    key_state="PendingDeletion", deletion_date=deletion, pending_window_days=days
                )
            )
        return {
            "KeyId": key.arn,
            "DeletionDate": deletion,
            "KeyState": "PendingDeletion",
            "PendingWindowInDays": days,
        }

    def cancel_key_deletion(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        key = self._resolve(p["KeyId"], allow_alias=False)
        self._authorize(ctx, "kms:CancelKeyDeletion", key)
        if key.key_state != "PendingDeletion":
            raise KmsError("KMSInvalidStateException", f"{key.arn} is not pending deletion.")
        with self._mutate:
            current = self._store.get_key(key.key_id) or key
            self._store_put(
                current.with_changes(
                    key_state="Disabled", deletion_date=None, pending_window_days=None
                )
            )
        return {"KeyId": key.arn}

    # ----------------------------------------------------------------------- cryptography
    def _symmetric_key_for(
        self,
        p: Mapping[str, Any],
        ctx: CallContext,
        action: str,
        encryption_context: Mapping[str, str] | None,
        recipient: VerifiedRecipient | None = None,
        key_member: str = "KeyId",
    ) -> KeyRecord:
        key = self._resolve(p[key_member])
        self._authorize(ctx, action, key, self._context(ctx, encryption_context, recipient))
        self._require_usable(key)
        self._require_usage(key, ENCRYPT_DECRYPT)
        return key

    def _answer_plaintext(
        self, out: dict[str, Any], member: str, value: bytes, recipient: VerifiedRecipient | None
    ) -> dict[str, Any]:
        if recipient is None:
            out[member] = value
        else:
            out["CiphertextForRecipient"] = build_ciphertext_for_recipient(
                value, recipient.public_key
            )
        return out

    def encrypt(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        context = p.get("EncryptionContext")
        self._require_symmetric_algorithm(p, "EncryptionAlgorithm")
        key = self._symmetric_key_for(p, ctx, "kms:Encrypt", context)
        self._dry_run(p)
        blob = _ciphertext.seal_blob(key.key_id, key.material, p["Plaintext"], context)
        return {"CiphertextBlob": blob, "KeyId": key.arn, "EncryptionAlgorithm": SYMMETRIC}

    def _open(self, blob: bytes, key_ref: str | None) -> KeyRecord:
        try:
            blob_key_id = _ciphertext.blob_key_id(blob)
        except _ciphertext.BlobError:
            raise KmsError("InvalidCiphertextException", "The ciphertext is invalid.") from None
        if key_ref is not None:
            wanted = self._resolve(key_ref)
            if wanted.key_id != blob_key_id:
                raise KmsError(
                    "IncorrectKeyException",
                    "The key ID in the request does not identify a KMS key that can perform "
                    "this operation.",
                )
        return self._resolve(blob_key_id)

    @staticmethod
    def _decrypt_blob(key: KeyRecord, blob: bytes, context: Mapping[str, str] | None) -> bytes:
        try:
            return _ciphertext.open_blob(key.material, blob, context)
        except _ciphertext.BlobError:
            raise KmsError(
                "InvalidCiphertextException",
                "The ciphertext is invalid or the encryption context does not match.",
            ) from None

    def decrypt(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        if "CiphertextBlob" not in p:
            raise KmsError(
                "ValidationException",
                "1 validation error detected: Value null at 'ciphertextBlob' failed to satisfy "
                "constraint: Member must not be null",
            )
        self._require_symmetric_algorithm(p, "EncryptionAlgorithm")
        recipient = self._recipient(p, ctx)
        context = p.get("EncryptionContext")
        key = self._open(p["CiphertextBlob"], p.get("KeyId"))
        self._authorize(ctx, "kms:Decrypt", key, self._context(ctx, context, recipient))
        self._require_usable(key)
        self._require_usage(key, ENCRYPT_DECRYPT)
        self._dry_run(p)
        plaintext = self._decrypt_blob(key, p["CiphertextBlob"], context)
        out = {"KeyId": key.arn, "EncryptionAlgorithm": SYMMETRIC}
        return self._answer_plaintext(out, "Plaintext", plaintext, recipient)

    def re_encrypt(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        if "CiphertextBlob" not in p:
            raise KmsError("ValidationException", "CiphertextBlob is required")
        self._require_symmetric_algorithm(p, "SourceEncryptionAlgorithm")
        self._require_symmetric_algorithm(p, "DestinationEncryptionAlgorithm")
        source_context = p.get("SourceEncryptionContext")
        dest_context = p.get("DestinationEncryptionContext")
        source = self._open(p["CiphertextBlob"], p.get("SourceKeyId"))
        self._authorize(ctx, "kms:ReEncryptFrom", source, self._context(ctx, source_context))
        self._require_usable(source)
        dest = self._symmetric_key_for(
            p, ctx, "kms:ReEncryptTo", dest_context, key_member="DestinationKeyId"
        )
        self._dry_run(p)
        plaintext = self._decrypt_blob(source, p["CiphertextBlob"], source_context)
        blob = _ciphertext.seal_blob(dest.key_id, dest.material, plaintext, dest_context)
        return {
            "CiphertextBlob": blob,
            "SourceKeyId": source.arn,
            "KeyId": dest.arn,
            "SourceEncryptionAlgorithm": SYMMETRIC,
            "DestinationEncryptionAlgorithm": SYMMETRIC,
        }

    @staticmethod
    def _data_key_length(p: Mapping[str, Any]) -> int:
        spec, count = p.get("KeySpec"), p.get("NumberOfBytes")
        if (spec is None) == (count is None):
            raise KmsError(
                "ValidationException", "Please specify either number of bytes or key spec."
            )
        if spec is not None:
            return 32 if spec == "AES_256" else 16
        return int(str(count))

    def _generate_data_key(
        self, p: dict[str, Any], ctx: CallContext, action: str, recipient: VerifiedRecipient | None
    ) -> tuple[KeyRecord, bytes, bytes]:
        length = self._data_key_length(p)
        context = p.get("EncryptionContext")
        key = self._symmetric_key_for(p, ctx, action, context, recipient)
        self._dry_run(p)
        data_key = _random_bytes(length)
        return key, data_key, _ciphertext.seal_blob(key.key_id, key.material, data_key, context)

    def generate_data_key(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        recipient = self._recipient(p, ctx)
        key, data_key, blob = self._generate_data_key(p, ctx, "kms:GenerateDataKey", recipient)
        out = {"CiphertextBlob": blob, "KeyId": key.arn}
        return self._answer_plaintext(out, "Plaintext", data_key, recipient)

    def generate_data_key_without_plaintext(
        self, p: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any]:
        key, _, blob = self._generate_data_key(p, ctx, "kms:GenerateDataKeyWithoutPlaintext", None)
        return {"CiphertextBlob": blob, "KeyId": key.arn}

    def _generate_pair(
        self, p: dict[str, Any], ctx: CallContext, action: str, recipient: VerifiedRecipient | None
    ) -> tuple[KeyRecord, bytes, bytes, bytes]:
        spec = p["KeyPairSpec"]
        context = p.get("EncryptionContext")
        key = self._symmetric_key_for(p, ctx, action, context, recipient)
        self._dry_run(p)
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if spec in _RSA_PAIR_BITS:
            private = rsa.generate_private_key(65537, _RSA_PAIR_BITS[spec])
        elif spec in _ECC_CURVES:
            private = ec.generate_private_key(_ECC_CURVES[spec]())
        else:
            raise KmsError("UnsupportedOperationException", f"KeyPairSpec {spec} is not supported")
        private_der = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public_der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        blob = _ciphertext.seal_blob(key.key_id, key.material, private_der, context)
        return key, private_der, public_der, blob

    def generate_data_key_pair(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        recipient = self._recipient(p, ctx)
        key, private_der, public_der, blob = self._generate_pair(
            p, ctx, "kms:GenerateDataKeyPair", recipient
        )
        out = {
            "PrivateKeyCiphertextBlob": blob,
            "PublicKey": public_der,
            "KeyId": key.arn,
            "KeyPairSpec": p["KeyPairSpec"],
        }
        return self._answer_plaintext(out, "PrivateKeyPlaintext", private_der, recipient)

    def generate_data_key_pair_without_plaintext(
        self, p: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any]:
        key, _, public_der, blob = self._generate_pair(
            p, ctx, "kms:GenerateDataKeyPairWithoutPlaintext", None
        )
        return {
            "PrivateKeyCiphertextBlob": blob,
            "PublicKey": public_der,
            "KeyId": key.arn,
            "KeyPairSpec": p["KeyPairSpec"],
        }

    def generate_random(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        if p.get("CustomKeyStoreId"):
            raise KmsError("UnsupportedOperationException", "Custom key stores are not supported")
        count = p.get("NumberOfBytes")
        if count is None:
            raise KmsError("ValidationException", "NumberOfBytes is required")
        recipient = self._recipient(p, ctx)
        self._authorize_iam(ctx, "kms:GenerateRandom")
        return self._answer_plaintext({}, "Plaintext", _random_bytes(count), recipient)

    def _ecc_key(self, p: Mapping[str, Any]) -> tuple[KeyRecord, ec.EllipticCurvePrivateKey | None]:
        key = self._resolve(p["KeyId"])
        if key.key_spec not in _ECC_CURVES:
            return key, None
        private = serialization.load_der_private_key(key.material, None)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise KmsError("KMSInternalException", "stored key material is not an EC key")
        return key, private

    def derive_shared_secret(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        recipient = self._recipient(p, ctx)
        key, private = self._ecc_key(p)
        self._authorize(ctx, "kms:DeriveSharedSecret", key, self._context(ctx, None, recipient))
        self._require_usable(key)
        self._require_usage(key, KEY_AGREEMENT)
        self._dry_run(p)
        try:
            peer = serialization.load_der_public_key(p["PublicKey"])
        except (ValueError, TypeError):
            peer = None
        assert private is not None  # KEY_AGREEMENT keys are always ECC
        if not isinstance(peer, ec.EllipticCurvePublicKey) or peer.curve.name != private.curve.name:
            raise KmsError(
                "ValidationException",
                f"PublicKey must be a DER SubjectPublicKeyInfo on the key's curve ({key.key_spec})",
            )
        secret = private.exchange(ec.ECDH(), peer)
        out = {"KeyId": key.arn, "KeyAgreementAlgorithm": "ECDH", "KeyOrigin": "AWS_KMS"}
        return self._answer_plaintext(out, "SharedSecret", secret, recipient)

    def get_public_key(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        key, private = self._ecc_key(p)
        self._authorize(ctx, "kms:GetPublicKey", key)
        self._require_usable(key)
        if private is None:
            raise KmsError(
                "UnsupportedOperationException", f"{key.arn} is a symmetric key: no public key"
            )
        public_der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {
            "KeyId": key.arn,
            "PublicKey": public_der,
            "CustomerMasterKeySpec": key.key_spec,
            "KeySpec": key.key_spec,
            "KeyUsage": key.key_usage,
            **(
                {"SigningAlgorithms": [_ECDSA[key.key_spec][0]]}
                if key.key_usage == SIGN_VERIFY
                else {"KeyAgreementAlgorithms": ["ECDH"]}
            ),
        }

    def sign(self, p: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """ECDSA with an ECC_NIST_* SIGN_VERIFY key; DER signature, as KMS returns it."""
        key, private = self._ecc_key(p)
        self._authorize(ctx, "kms:Sign", key)
        self._require_usable(key)
        self._require_usage(key, SIGN_VERIFY)
        self._dry_run(p)
        assert private is not None  # SIGN_VERIFY keys here are always ECC
        algorithm, hash_type = _ECDSA[key.key_spec]
        if p.get("SigningAlgorithm") != algorithm:
            raise KmsError(
                "InvalidKeyUsageException",
                f"{key.arn} ({key.key_spec}) signs with {algorithm} only",
            )
        message = p["Message"]
        if p.get("MessageType", "RAW") == "DIGEST":
            if len(message) != hash_type.digest_size:
                raise KmsError(
                    "ValidationException",
                    f"a {algorithm} DIGEST message is {hash_type.digest_size} bytes",
                )
            scheme = ec.ECDSA(Prehashed(hash_type))
        elif len(message) > MAX_SIGN_MESSAGE_BYTES:
            raise KmsError(
                "ValidationException",
                f"RAW messages are at most {MAX_SIGN_MESSAGE_BYTES} bytes; use MessageType DIGEST",
            )
        else:
            scheme = ec.ECDSA(hash_type)
        return {
            "KeyId": key.arn,
            "Signature": private.sign(message, scheme),
            "SigningAlgorithm": algorithm,
        }


def _refuse_case_colliding_keys(encryption_context: Mapping[str, str]) -> None:
    """Refuse a context whose keys differ only by case (docs/kms.md, "Encryption context").

    Policy condition keys are case-insensitive (``kms:EncryptionContext:tenant`` names
    ``TENANT`` too) while the context itself is case-sensitive. AWS does not document which
    value a condition sees when two keys collide, so this KMS refuses such a context rather than
    let one pair override the other (``{"tenant": "bob", "TENANT": "alice"}`` passing a
    ``tenant=alice`` condition).
    """
    seen: dict[str, str] = {}
    for key in encryption_context:
        folded = key.lower()
        if folded in seen:
            raise KmsError(
                "ValidationException",
                f"EncryptionContext keys {seen[folded]!r} and {key!r} differ only by case; "
                "policy conditions could not tell them apart",
            )
        seen[folded] = key
