"""KMS key policy from enclave measurements, and a linter for attestation bypasses.

The policy has three statements:

* ``EnclaveUseWithAttestation`` — the enclave's role may Decrypt, GenerateDataKey,
  GenerateDataKeyPair, GenerateRandom and DeriveSharedSecret **only** with
  ``StringEqualsIgnoreCase`` on ``kms:RecipientAttestation:ImageSha384`` (PCR0) and
  ``kms:RecipientAttestation:PCR<n>``. A request without a Recipient lacks these keys and is
  denied, so the parent (which holds the same role credentials) cannot decrypt.
* ``KeyAdministration`` — administrators manage the key; no cryptographic operation, no
  ``CreateGrant`` and no ``ReEncrypt*`` (either would release plaintext without attestation).
* ``OperatorEncrypt`` — operators may Encrypt (and GenerateDataKeyWithoutPlaintext) to the key.

There is deliberately no account-root ``kms:*`` statement: it delegates to IAM and lets any
principal with ``kms:Decrypt`` in its IAM policy decrypt without attestation
(aws-nitro-enclaves-sdk-c #100). :func:`lint_policy` flags such statements.

CLI: ``python -m parent.key_policy --measurements FILE --enclave-role ARN --admin ARN
[--operator ARN] [--pcr N]... [--pcr-value N=HEX]... [--pin-signer]`` prints the policy JSON
(``--pin-signer``: PCR8 mode, the signing certificate instead of PCR0);
``python -m parent.key_policy --lint POLICY.json [--enclave-role ARN]...`` prints findings
(exit 1 if any). The generator refuses a principal that is both administrator and enclave role.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from attestation.errors import CodedError, Kind

__all__ = [
    "ADMIN_ACTIONS",
    "ATTESTED_ACTIONS",
    "OPERATOR_ACTIONS",
    "KeyPolicyError",
    "key_policy",
    "lint_policy",
    "load_measurements",
    "main",
    "select_pcrs",
    "select_signer_pcrs",
]

ATTESTED_ACTIONS = (
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:GenerateRandom",
    "kms:DeriveSharedSecret",
)
"""Operations KMS answers with CiphertextForRecipient (nitro-spec §3.1)."""

ADMIN_ACTIONS = (
    "kms:CreateAlias",
    "kms:UpdateAlias",
    "kms:DeleteAlias",
    "kms:DescribeKey",
    "kms:GetKeyPolicy",
    "kms:PutKeyPolicy",
    "kms:ListAliases",
    "kms:ListKeyPolicies",
    "kms:ListResourceTags",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateKeyDescription",
    "kms:EnableKey",
    "kms:DisableKey",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
)
"""Key management only: no Decrypt, no grants, no ReEncrypt."""

OPERATOR_ACTIONS = ("kms:Encrypt", "kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey")
"""What an operator needs to seal secrets for the enclave; nothing that returns plaintext."""

PLAINTEXT_ACTIONS = (
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:DeriveSharedSecret",
    "kms:CreateGrant",
)
"""Actions that release key-protected plaintext (or let one grant it) to their caller."""

IMAGE_SHA384_KEY = "kms:RecipientAttestation:ImageSha384"
PCR_KEY = "kms:RecipientAttestation:PCR{}"
PCR_HEX_LEN = 96
DEFAULT_OPTIONAL_PCRS = (3, 4, 8)
"""Included by default when the measurements carry them (PCR0 always is)."""
SIGNER_PCR = 8
"""PCR8 (the EIF signing certificate): what PCR8 mode pins instead of PCR0."""
IMAGE_PCRS = (0, 1, 2)

MAX_MEASUREMENTS_BYTES = 1 << 20
"""Largest measurements file read."""

_ARN_RE = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::\d{12}:\S+$")
_ROOT_RE = re.compile(r"^(arn:aws[a-z-]*:iam::\d{12}:root|\d{12})$")
_POSITIVE_OPERATORS = frozenset({"stringequals", "stringequalsignorecase"})
"""Operators that pin an attestation key to exact values (StringLike is a wildcard, not a pin)."""
ATTESTATION_KEY_PREFIX = "kms:recipientattestation:"
CODE_PIN_KEYS = frozenset(
    {IMAGE_SHA384_KEY.lower(), PCR_KEY.format(0).lower(), PCR_KEY.format(8).lower()}
)
"""Keys that pin the enclave's code: ImageSha384 / PCR0 (the image) or PCR8 (its signer).
PCR1/2/3/4 alone do not: PCR4 (the instance) is met by any image started on that instance."""
ENCLAVE_ROLE_FORBIDDEN = ("kms:PutKeyPolicy", "kms:CreateGrant", "kms:ReEncryptFrom",
                          "kms:ReEncryptTo", "kms:*")  # fmt: skip
"""Never for the enclave (= parent instance) role: each lets it bypass attestation (rewrite the
policy, grant itself, re-encrypt to a key it controls, or all of these)."""


class KeyPolicyError(CodedError):
    """Measurements or arguments cannot make a safe policy; ``code`` is stable."""

    kind = Kind.BAD_REQUEST  # every code: ambiguous-enclave, bad-measurements, bad-principal, ...


# ---------------------------------------------------------------------------- measurements
def _normalize_pcr(index: int, value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        text = bytes(value).hex()
    elif isinstance(value, str):
        text = value.strip().lower()
        text = text[2:] if text.startswith("0x") else text
    else:
        raise KeyPolicyError("bad-measurements", f"PCR{index} must be hex or bytes")
    if len(text) != PCR_HEX_LEN or not re.fullmatch(r"[0-9a-f]+", text):
        raise KeyPolicyError(
            "bad-measurements", f"PCR{index} must be {PCR_HEX_LEN} hex characters (SHA-384)"
        )
    return text


def _pcr_map(raw: Mapping[Any, Any]) -> dict[int, str]:
    out: dict[int, str] = {}
    for name, value in raw.items():
        text = str(name)
        digits = text[3:] if text.upper().startswith("PCR") else text
        if not digits.isdigit():
            continue  # e.g. "HashAlgorithm"
        index = int(digits)
        if not 0 <= index <= 31:
            raise KeyPolicyError("bad-measurements", f"PCR index {index} out of range 0..31")
        out[index] = _normalize_pcr(index, value)
    return out


def load_measurements(data: Any, *, enclave: str | None = None) -> dict[int, str]:
    """PCRs (index → lower-case hex) from nitro-cli JSON or a plain mapping.

    Accepts ``build-enclave`` / ``describe-eif`` output (``{"Measurements": {"PCR0": ...}}``),
    ``describe-enclaves`` output (a list; ``enclave`` picks one by name or id when there are
    several; debug-mode enclaves are refused), ``{"PCR0": ...}``, ``{"pcrs": {"0": ...}}``
    (``python -m attestation verify --json``) or ``{0: bytes}``. Text with a leading banner
    (``Enclave Image successfully created.``) is accepted.
    """
    if isinstance(data, bytes | bytearray):
        data = bytes(data).decode("utf-8", "replace")
    if isinstance(data, str):
        data = _parse_json_text(data)
    if isinstance(data, list):
        data = _pick_enclave(data, enclave)
    if not isinstance(data, Mapping):
        raise KeyPolicyError("bad-measurements", "measurements must be a JSON object or list")
    if isinstance(data.get("Measurements"), Mapping):
        pcrs = _pcr_map(data["Measurements"])
    elif isinstance(data.get("pcrs"), Mapping):
        pcrs = _pcr_map(data["pcrs"])
    else:
        pcrs = _pcr_map(data)
    if 0 not in pcrs:
        raise KeyPolicyError("bad-measurements", "no PCR0 in the measurements")
    if set(pcrs[0]) == {"0"}:
        raise KeyPolicyError(
            "debug-measurements",
            "PCR0 is all zero (debug mode): such documents cannot be used for attestation",
        )
    return pcrs


def _parse_json_text(text: str) -> Any:
    if len(text) > MAX_MEASUREMENTS_BYTES:
        raise KeyPolicyError("bad-measurements", "measurements text is too large")
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        raise KeyPolicyError("bad-measurements", "no JSON found in the measurements")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[min(starts) :])
    except (ValueError, RecursionError):
        raise KeyPolicyError("bad-measurements", "measurements are not valid JSON") from None
    return value


def _pick_enclave(enclaves: list[Any], selector: str | None) -> Mapping[str, Any]:
    candidates = [e for e in enclaves if isinstance(e, Mapping)]
    if selector is not None:
        candidates = [
            e for e in candidates if selector in (e.get("EnclaveName"), e.get("EnclaveID"))
        ]
    if len(candidates) != 1:
        raise KeyPolicyError(
            "ambiguous-enclave",
            f"{len(candidates)} enclaves match; name one with --enclave NAME|ID",
        )
    chosen = candidates[0]
    if chosen.get("Flags") == "DEBUG_MODE":
        raise KeyPolicyError(
            "debug-measurements",
            "the enclave runs in debug mode: its attestation documents carry zero PCRs",
        )
    if not isinstance(chosen.get("Measurements"), Mapping):
        raise KeyPolicyError("bad-measurements", "the enclave entry has no Measurements")
    return chosen


def select_pcrs(pcrs: Mapping[int, str], wanted: Sequence[int] | None = None) -> dict[int, str]:
    """``wanted`` PCRs (each must be present), else PCR0 plus any of PCR3/4/8 present."""
    if wanted:
        missing = [i for i in wanted if i not in pcrs]
        if missing:
            raise KeyPolicyError(
                "missing-pcr", f"PCR(s) {missing} requested but not in the measurements"
            )
        indices = sorted(set(wanted) | {0})
    else:
        indices = [0, *(i for i in DEFAULT_OPTIONAL_PCRS if i in pcrs)]
    return {i: pcrs[i] for i in indices}


def select_signer_pcrs(
    pcrs: Mapping[int, str], wanted: Sequence[int] | None = None
) -> dict[int, str]:
    """PCR8 mode: PCR8 (the EIF signing certificate) plus ``wanted`` (default: PCR3/PCR4 when
    present), never PCR0/1/2, so a new release signed with the same certificate needs no
    policy change. docs/eif-build.md "Pinning PCR8" says when to choose it."""
    chosen = set(wanted) if wanted else {i for i in (3, 4) if i in pcrs}
    if chosen & set(IMAGE_PCRS):
        raise KeyPolicyError("usage", "PCR8 mode pins the signer, not the image: omit PCR0/1/2")
    missing = sorted(i for i in chosen | {SIGNER_PCR} if i not in pcrs)
    if missing:
        raise KeyPolicyError(
            "missing-pcr",
            f"PCR(s) {missing} not in the measurements (PCR8 needs a signed EIF)",
        )
    return {i: pcrs[i] for i in sorted(chosen | {SIGNER_PCR})}


# ---------------------------------------------------------------------------------- policy
def _principals(value: str | Sequence[str], what: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value)
    if not names:
        raise KeyPolicyError("bad-principal", f"{what}: at least one ARN is needed")
    for name in names:
        if not _ARN_RE.match(name) or _ROOT_RE.match(name):
            raise KeyPolicyError(
                "bad-principal",
                f"{what}: {name!r} must be an IAM role/user ARN (not an account root)",
            )
    return names


def _principal_value(names: list[str]) -> str | list[str]:
    return names[0] if len(names) == 1 else names


def key_policy(
    *,
    pcrs: Mapping[int, str | bytes],
    enclave_role: str | Sequence[str],
    admin: str | Sequence[str],
    operator: str | Sequence[str] | None = None,
    allow_policy_updates: bool = True,
    pin_signer: bool = False,
) -> dict[str, Any]:
    """The key policy (a dict, ready for ``json.dumps``) for the given PCRs and principals.

    ``pcrs`` must contain PCR0; every entry becomes one ``StringEqualsIgnoreCase`` condition
    (PCR0 as ``ImageSha384``). ``operator`` defaults to ``admin``. With
    ``allow_policy_updates=False`` nobody may change the policy later (PutKeyPolicy then needs
    BypassPolicyLockoutSafetyCheck).
    """
    required = SIGNER_PCR if pin_signer else 0
    if required not in pcrs or (pin_signer and any(i in pcrs for i in IMAGE_PCRS)):
        raise KeyPolicyError(
            "missing-pcr",
            "PCR8 mode needs PCR8 and no PCR0/1/2"
            if pin_signer
            else "PCR0 (ImageSha384) is required",
        )
    normalized = {int(i): _normalize_pcr(int(i), v) for i, v in pcrs.items()}
    if set(normalized[required]) == {"0"}:
        raise KeyPolicyError("debug-measurements", f"PCR{required} is all zero (debug mode)")
    conditions = {IMAGE_SHA384_KEY: normalized[0]} if 0 in normalized else {}
    for index in sorted(normalized):
        if index != 0:
            conditions[PCR_KEY.format(index)] = normalized[index]
    enclave_names = _principals(enclave_role, "enclave role")
    admin_names = _principals(admin, "admin")
    both = sorted(set(enclave_names) & set(admin_names))
    if both:
        raise KeyPolicyError(
            "admin-is-enclave-role",
            f"{', '.join(both)} is both key administrator and enclave role: as administrator it "
            "could rewrite the key policy (kms:PutKeyPolicy) and decrypt without attestation; "
            "name a different administrator",
        )
    operator_names = _principals(operator, "operator") if operator else admin_names
    admin_actions = [a for a in ADMIN_ACTIONS if allow_policy_updates or a != "kms:PutKeyPolicy"]
    return {
        "Version": "2012-10-17",
        "Id": "nitro-enclave-key-policy",
        "Statement": [
            {
                "Sid": "EnclaveUseWithAttestation",
                "Effect": "Allow",
                "Principal": {"AWS": _principal_value(enclave_names)},
                "Action": list(ATTESTED_ACTIONS),
                "Resource": "*",
                "Condition": {"StringEqualsIgnoreCase": conditions},
            },
            {
                "Sid": "KeyAdministration",
                "Effect": "Allow",
                "Principal": {"AWS": _principal_value(admin_names)},
                "Action": admin_actions,
                "Resource": "*",
            },
            {
                "Sid": "OperatorEncrypt",
                "Effect": "Allow",
                "Principal": {"AWS": _principal_value(operator_names)},
                "Action": list(OPERATOR_ACTIONS),
                "Resource": "*",
            },
        ],
    }


# ------------------------------------------------------------------------------------ lint
def _glob_match(pattern: str, action: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, action, re.IGNORECASE) is not None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _principal_names(principal: Any) -> list[str]:
    if principal == "*":
        return ["*"]
    if isinstance(principal, Mapping):
        return [str(p) for p in _as_list(principal.get("AWS", []))]
    return []


def _requires_attestation(condition: Any) -> bool:
    if not isinstance(condition, Mapping):
        return False
    for operator, tests in condition.items():
        if str(operator).lower() not in _POSITIVE_OPERATORS or not isinstance(tests, Mapping):
            continue  # IfExists / ForAllValues / negated operators pass when the key is absent
        for key, value in tests.items():
            lowered = str(key).lower()
            if not lowered.startswith("kms:recipientattestation:"):
                continue
            values = _as_list(value)
            if values and all(isinstance(v, str) and "*" not in v for v in values):
                return True
    return False


def _attestation_tests(condition: Any) -> list[tuple[str, str, Any]]:
    """Every ``(operator, lower-case key, value)`` on a kms:RecipientAttestation:* key."""
    if not isinstance(condition, Mapping):
        return []
    out = []
    for operator, tests in condition.items():
        if isinstance(tests, Mapping):
            for key, value in tests.items():
                if str(key).lower().startswith(ATTESTATION_KEY_PREFIX):
                    out.append((str(operator), str(key).lower(), value))
    return out


def _pins_code(condition: Any) -> bool:
    """An exact positive condition on ImageSha384, PCR0 or PCR8 (not PCR4 alone)."""
    for operator, key, value in _attestation_tests(condition):
        values = _as_list(value)
        if (
            operator.lower() in _POSITIVE_OPERATORS
            and key in CODE_PIN_KEYS
            and values
            and all(isinstance(v, str) and "*" not in v and "?" not in v for v in values)
        ):
            return True
    return False


def _enclave_roles(statements: list[Any], given: Sequence[str]) -> set[str]:
    """The named enclave roles plus every principal granted something under attestation."""
    roles = set(given)
    for statement in statements:
        if isinstance(statement, Mapping) and _attestation_tests(statement.get("Condition")):
            roles.update(n for n in _principal_names(statement.get("Principal")) if n != "*")
    return roles


def _attestation_findings(label: str, statement: Mapping[str, Any], releases: bool) -> list[str]:
    findings = []
    for operator, key, _value in _attestation_tests(statement.get("Condition")):
        if "like" in operator.lower():
            findings.append(
                f"statement {label}: {operator} on {key} matches wildcards (* and ?): an "
                "attestation key must be pinned with StringEquals(IgnoreCase)"
            )
    condition = statement.get("Condition")
    if releases and _requires_attestation(condition) and not _pins_code(condition):
        findings.append(
            f"statement {label}: attestation conditions do not pin the enclave's code "
            "(ImageSha384/PCR0, or PCR8 for a signed image); PCR1-4 alone are met by "
            "other images (PCR4 by any image on that instance)"
        )
    return findings


def lint_policy(
    policy: Mapping[str, Any] | str, *, enclave_role: str | Sequence[str] = ()
) -> list[str]:
    """Findings where a principal can obtain plaintext without attestation (empty = clean).

    Flags every Allow statement that grants a plaintext-releasing action (Decrypt,
    ReEncryptFrom, GenerateDataKey, GenerateDataKeyPair, DeriveSharedSecret, CreateGrant —
    directly or via wildcards such as ``kms:*``) without an exact positive condition on a
    ``kms:RecipientAttestation:*`` key, naming account-root principals as IAM delegation.
    Also flags wildcard operators (StringLike...) on attestation keys, attested grants that do
    not pin ImageSha384/PCR0 or PCR8, and PutKeyPolicy, CreateGrant, ReEncrypt* or ``kms:*``
    granted to the enclave role (``enclave_role``, plus every principal that a statement
    grants something under attestation conditions). Statements using NotAction/NotPrincipal
    are flagged as not analysable.
    """
    if isinstance(policy, str):
        try:
            policy = json.loads(policy)
        except ValueError:
            return ["policy is not valid JSON"]
    if not isinstance(policy, Mapping):
        return ["policy is not a JSON object"]
    statements = _as_list(policy.get("Statement", []))
    roles = _enclave_roles(
        statements, [enclave_role] if isinstance(enclave_role, str) else enclave_role
    )
    findings: list[str] = []
    for index, statement in enumerate(statements):
        if not isinstance(statement, Mapping) or statement.get("Effect") != "Allow":
            continue
        label = statement.get("Sid") or f"#{index}"
        if "NotAction" in statement or "NotPrincipal" in statement:
            findings.append(
                f"statement {label}: NotAction/NotPrincipal cannot be checked; avoid them"
            )
            continue
        actions = [str(a) for a in _as_list(statement.get("Action", []))]
        released = [a for a in PLAINTEXT_ACTIONS if any(_glob_match(p, a) for p in actions)]
        findings += _attestation_findings(str(label), statement, bool(released))
        principals = _principal_names(statement.get("Principal"))
        forbidden = [
            a for a in ENCLAVE_ROLE_FORBIDDEN if any(_glob_match(p, a) for p in actions)
        ]  # fmt: skip
        for name in principals:
            if forbidden and (name in roles or name == "*"):
                findings.append(
                    f"statement {label}: grants {', '.join(forbidden)} to the enclave role "
                    f"{name}: it could rewrite the policy, grant itself or re-encrypt, and so "
                    "decrypt without attestation"
                )
        if not released or _requires_attestation(statement.get("Condition")):
            continue
        for name in _principal_names(statement.get("Principal")) or ["(no AWS principal)"]:
            if name == "*":
                who = "every principal (*)"
            elif _ROOT_RE.match(name):
                who = f"{name} (account root: delegates to IAM, so any IAM principal allowed "
                who += "these actions, e.g. the parent instance role)"
            else:
                who = name
            findings.append(
                f"statement {label}: allows {', '.join(released)} to {who} without a "
                "kms:RecipientAttestation condition: plaintext is released without attestation"
            )
    return findings


# ------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m parent.key_policy",
        description="Print a KMS key policy that releases plaintext only to an attested enclave.",
    )
    p.add_argument(
        "--measurements",
        metavar="FILE",
        help="nitro-cli JSON (build-enclave, "
        'describe-eif, describe-enclaves) or {"PCR0": hex}; - for stdin',
    )
    p.add_argument("--enclave", metavar="NAME|ID", help="pick one describe-enclaves entry")
    p.add_argument(
        "--pcr-value",
        action="append",
        default=[],
        metavar="N=HEX",
        help="explicit PCR value (adds to / overrides the file)",
    )
    p.add_argument(
        "--pcr",
        action="append",
        type=int,
        default=[],
        metavar="N",
        help="PCRs to require (default: 0, plus 3/4/8 when present); repeatable",
    )
    p.add_argument(
        "--enclave-role",
        action="append",
        default=[],
        metavar="ARN",
        help="role the enclave's KMS calls use (the parent instance role)",
    )
    p.add_argument(
        "--admin",
        action="append",
        default=[],
        metavar="ARN",
        help="key administrator(s): manage, never decrypt",
    )
    p.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="ARN",
        help="principal(s) that may Encrypt (default: the admins)",
    )
    p.add_argument(
        "--no-policy-updates",
        action="store_true",
        help="leave kms:PutKeyPolicy out (the policy becomes immutable)",
    )
    p.add_argument(
        "--pin-signer",
        action="store_true",
        help="PCR8 mode: require the EIF signing certificate (PCR8) instead of PCR0, so "
        "releases signed with it roll out with no policy change (docs/eif-build.md)",
    )
    p.add_argument("--lint", metavar="POLICY", help="lint a policy JSON file instead")
    return p


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read(MAX_MEASUREMENTS_BYTES + 1)
    with open(path, encoding="utf-8") as fh:
        return fh.read(MAX_MEASUREMENTS_BYTES + 1)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 with the policy on stdout; 1 when --lint finds problems; 2 on bad input."""
    args = _parser().parse_args(argv)
    try:
        if args.lint:
            findings = lint_policy(_read(args.lint), enclave_role=args.enclave_role)
            for finding in findings:
                print(finding)
            return 1 if findings else 0
        if not args.enclave_role or not args.admin:
            raise KeyPolicyError("usage", "--enclave-role and --admin are required")
        pcrs: dict[int, str] = {}
        if args.measurements:
            pcrs.update(load_measurements(_read(args.measurements), enclave=args.enclave))
        for item in args.pcr_value:
            index, sep, value = item.partition("=")
            if not sep or not index.strip().isdigit():
                raise KeyPolicyError("usage", f"--pcr-value expects N=HEX, got {item!r}")
            pcrs[int(index)] = _normalize_pcr(int(index), value)
        if not pcrs:
            raise KeyPolicyError("usage", "give --measurements FILE or --pcr-value 0=HEX")
        policy = key_policy(
            pcrs=(select_signer_pcrs if args.pin_signer else select_pcrs)(pcrs, args.pcr),
            enclave_role=args.enclave_role,
            admin=args.admin,
            operator=args.operator or None,
            allow_policy_updates=not args.no_policy_updates,
            pin_signer=args.pin_signer,
        )
    except KeyPolicyError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error (io): {exc}", file=sys.stderr)
        return 2
    json.dump(policy, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
