"""Key policies: parse (MalformedPolicyDocumentException on bad shape) and evaluate like KMS.

Evaluation (KMS developer guide, "Determining access"): an applicable ``Deny`` wins; otherwise an
applicable ``Allow`` is needed; otherwise the request is implicitly denied. A statement applies
when its principal, action and resource match and every condition holds.

Principals: ``"*"``; ``{"AWS": ARN | [ARN...]}``; the account root (``arn:aws:iam::A:root`` or
``"A"``) *delegates to IAM*: in an Allow it matches a caller of account A only when the caller's
IAM allow list grants the action; in a Deny it matches every caller of account A. Role ARNs match
their assumed-role sessions. Other principal kinds (Service, Federated) never match a caller.

Conditions: ``StringEquals``, ``StringNotEquals``, ``StringEqualsIgnoreCase``,
``StringNotEqualsIgnoreCase``, ``StringLike``, ``StringNotLike``, ``ArnEquals``, ``ArnLike``,
``ArnNotEquals``, ``ArnNotLike``, ``Bool``, ``Null``; the ``IfExists`` suffix and the
``ForAnyValue:``/``ForAllValues:`` prefixes. Condition key names are case-insensitive. A key
absent from the request fails positive operators and satisfies negated ones (IAM rules). Unknown
operators are refused when a policy is stored and, should one reach evaluation, make an Allow
statement inapplicable and a Deny statement applicable.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from attestation.errors import CodedError, Kind

__all__ = [
    "MAX_KEY_POLICY_BYTES",
    "AuthzRequest",
    "Caller",
    "Condition",
    "Decision",
    "KeyPolicy",
    "PolicyDocumentError",
    "Result",
    "Statement",
    "default_key_policy",
    "evaluate",
    "parse_policy",
]

MAX_KEY_POLICY_BYTES = 32_768
"""KMS key policy size quota (bytes of the JSON text)."""

MAX_STATEMENTS = 256
"""Statements per policy (well above what fits in 32 KB of useful policy)."""

_VERSIONS = frozenset({"2012-10-17", "2008-10-17"})
_STRING_OPS = {
    "stringequals": ("eq", False),
    "stringnotequals": ("eq", True),
    "stringequalsignorecase": ("ieq", False),
    "stringnotequalsignorecase": ("ieq", True),
    "stringlike": ("like", False),
    "stringnotlike": ("like", True),
    "arnequals": ("like", False),
    "arnlike": ("like", False),
    "arnnotequals": ("like", True),
    "arnnotlike": ("like", True),
    "bool": ("bool", False),
}
_ROOT_RE = re.compile(r"^(?:arn:aws[a-z-]*:iam::(\d{12}):root|(\d{12}))$")
_ASSUMED_ROLE_RE = re.compile(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/.+$")


class PolicyDocumentError(CodedError):
    """The policy text is not a key policy this KMS accepts; ``code`` is stable."""

    code = "malformed-policy"
    kind = Kind.BAD_REQUEST

    def __init__(self, message: str) -> None:
        super().__init__(type(self).code, message)


@dataclass(frozen=True)
class Condition:
    """One (operator, key, values) test; ``key`` is lower-cased."""

    operator: str
    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Statement:
    sid: str | None
    effect: str  # "Allow" | "Deny"
    principals: tuple[str, ...]  # "*" or AWS principal strings
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class KeyPolicy:
    statements: tuple[Statement, ...]


@dataclass(frozen=True)
class Caller:
    """The authenticated principal: its ARN, account and IAM allow list."""

    arn: str
    account: str
    iam_actions: tuple[str, ...] = ()

    def arns(self) -> frozenset[str]:
        match = _ASSUMED_ROLE_RE.match(self.arn)
        if match:
            partition, account, role = match.groups()
            return frozenset({self.arn, f"arn:{partition}:iam::{account}:role/{role}"})
        return frozenset({self.arn})


@dataclass(frozen=True)
class AuthzRequest:
    """What is asked: who, which ``kms:`` action, on which key ARN, with which context."""

    caller: Caller
    action: str
    resource: str
    context: Mapping[str, Sequence[str]] = field(default_factory=dict)


class Decision(enum.Enum):
    ALLOW = "allow"
    EXPLICIT_DENY = "explicit-deny"
    IMPLICIT_DENY = "implicit-deny"


@dataclass(frozen=True)
class Result:
    decision: Decision
    statement: str | None = None  # Sid (or index) of the deciding statement

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW


# ------------------------------------------------------------------------------------- parse
def parse_policy(text: str, *, max_bytes: int = MAX_KEY_POLICY_BYTES) -> KeyPolicy:
    """Parse and check a key policy; raises :class:`PolicyDocumentError`."""
    if not isinstance(text, str):
        raise PolicyDocumentError("policy must be a string")
    if len(text.encode()) > max_bytes:
        raise PolicyDocumentError(f"policy exceeds {max_bytes} bytes")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise PolicyDocumentError("policy is not valid JSON") from None
    if not isinstance(doc, dict):
        raise PolicyDocumentError("policy must be a JSON object")
    unknown = set(doc) - {"Version", "Id", "Statement"}
    if unknown:
        raise PolicyDocumentError(f"unknown policy element(s): {sorted(unknown)}")
    version = doc.get("Version", "2008-10-17")
    if not isinstance(version, str) or version not in _VERSIONS:
        raise PolicyDocumentError(f"unsupported policy Version {version!r}")
    if "Id" in doc and not isinstance(doc["Id"], str):
        raise PolicyDocumentError("Id must be a string")
    raw = doc.get("Statement")
    statements = [raw] if isinstance(raw, dict) else raw
    if not isinstance(statements, list) or not statements:
        raise PolicyDocumentError("Statement must be an object or a non-empty list")
    if len(statements) > MAX_STATEMENTS:
        raise PolicyDocumentError(f"more than {MAX_STATEMENTS} statements")
    return KeyPolicy(tuple(_parse_statement(s, i) for i, s in enumerate(statements)))


def _strings(value: Any, what: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise PolicyDocumentError(f"{what} must be a string or a non-empty list of strings")
    return tuple(items)


def _parse_statement(raw: Any, index: int) -> Statement:
    if not isinstance(raw, dict):
        raise PolicyDocumentError(f"statement {index} is not an object")
    for unsupported in ("NotPrincipal", "NotAction", "NotResource"):
        if unsupported in raw:
            raise PolicyDocumentError(f"{unsupported} is not supported by the local KMS")
    unknown = set(raw) - {"Sid", "Effect", "Principal", "Action", "Resource", "Condition"}
    if unknown:
        raise PolicyDocumentError(f"statement {index}: unknown element(s) {sorted(unknown)}")
    sid = raw.get("Sid")
    if sid is not None and not isinstance(sid, str):
        raise PolicyDocumentError(f"statement {index}: Sid must be a string")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise PolicyDocumentError(f"statement {index}: Effect must be Allow or Deny")
    if "Principal" not in raw:
        raise PolicyDocumentError(f"statement {index}: key policy statements need a Principal")
    if "Action" not in raw or "Resource" not in raw:
        raise PolicyDocumentError(f"statement {index}: Action and Resource are required")
    return Statement(
        sid=sid,
        effect=effect,
        principals=_parse_principal(raw["Principal"], index),
        actions=_strings(raw["Action"], f"statement {index}: Action"),
        resources=_strings(raw["Resource"], f"statement {index}: Resource"),
        conditions=_parse_conditions(raw.get("Condition", {}), index),
    )


def _parse_principal(raw: Any, index: int) -> tuple[str, ...]:
    if raw == "*":
        return ("*",)
    if not isinstance(raw, dict) or not raw:
        raise PolicyDocumentError(f'statement {index}: Principal must be "*" or an object')
    out: list[str] = []
    for kind, value in raw.items():
        if kind not in ("AWS", "Service", "Federated", "CanonicalUser"):
            raise PolicyDocumentError(f"statement {index}: unknown principal kind {kind!r}")
        names = _strings(value, f"statement {index}: Principal.{kind}")
        if kind == "AWS":
            out.extend(names)
        # Other kinds name no IAM caller of this KMS: they never match, but are valid.
    return tuple(out)


def _parse_conditions(raw: Any, index: int) -> tuple[Condition, ...]:
    if not isinstance(raw, dict):
        raise PolicyDocumentError(f"statement {index}: Condition must be an object")
    out: list[Condition] = []
    for operator, tests in raw.items():
        if not isinstance(operator, str) or _operator(operator) is None:
            raise PolicyDocumentError(
                f"statement {index}: unsupported condition operator {operator!r}"
            )
        if not isinstance(tests, dict) or not tests:
            raise PolicyDocumentError(f"statement {index}: {operator} must map keys to values")
        for key, values in tests.items():
            items = values if isinstance(values, list) else [values]
            if not items or not all(isinstance(v, str | bool | int | float) for v in items):
                raise PolicyDocumentError(
                    f"statement {index}: {operator} {key}: values must be strings"
                )
            strings = tuple(_condition_string(v) for v in items)
            out.append(Condition(operator, key.lower(), strings))
    return tuple(out)


def _condition_string(value: str | bool | int | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class _Operator:
    kind: str  # eq | ieq | like | bool | null
    negated: bool
    if_exists: bool
    set_op: str | None  # None | "any" | "all"


@lru_cache(maxsize=256)
def _operator(name: str) -> _Operator | None:
    lowered = name.lower()
    set_op = None
    for prefix, value in (("foranyvalue:", "any"), ("forallvalues:", "all")):
        if lowered.startswith(prefix):
            set_op, lowered = value, lowered[len(prefix) :]
    if_exists = lowered.endswith("ifexists")
    if if_exists:
        lowered = lowered[: -len("ifexists")]
    if lowered == "null":
        return None if (if_exists or set_op) else _Operator("null", False, False, None)
    found = _STRING_OPS.get(lowered)
    if found is None:
        return None
    kind, negated = found
    return _Operator(kind, negated, if_exists, set_op)


# ------------------------------------------------------------------------------------ evaluate
@lru_cache(maxsize=1024)
def _glob(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile(f"^{regex}$", re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _matches(kind: str, request_value: str, policy_value: str) -> bool:
    if kind == "eq":
        return request_value == policy_value
    if kind == "ieq":
        return request_value.casefold() == policy_value.casefold()
    if kind == "like":
        return _glob(policy_value, False).match(request_value) is not None
    # bool
    return request_value.lower() == policy_value.lower()


def _condition_holds(cond: Condition, context: Mapping[str, Sequence[str]]) -> bool | None:
    """True/False, or None when the operator is unknown."""
    op = _operator(cond.operator)
    if op is None:
        return None
    values = context.get(cond.key)
    present = bool(values)
    if op.kind == "null":
        return any((v.lower() == "true") == (not present) for v in cond.values)
    if op.set_op == "all":
        if not present:
            return True
        assert values is not None
        hits = [any(_matches(op.kind, v, p) for p in cond.values) for v in values]
        return not any(hits) if op.negated else all(hits)
    if not present:
        if op.set_op == "any":
            return op.if_exists
        return op.if_exists or op.negated
    assert values is not None
    if op.set_op == "any" and op.negated:
        return any(not any(_matches(op.kind, v, p) for p in cond.values) for v in values)
    matched = any(_matches(op.kind, v, p) for v in values for p in cond.values)
    return not matched if op.negated else matched


def _action_matches(patterns: Sequence[str], action: str) -> bool:
    return any(_glob(p, True).match(action) for p in patterns)


def _resource_matches(patterns: Sequence[str], resource: str) -> bool:
    return any(_glob(p, False).match(resource) for p in patterns)


def _principal_matches(statement: Statement, request: AuthzRequest) -> bool:
    caller = request.caller
    arns = caller.arns()
    for name in statement.principals:
        if name == "*" or name in arns:
            return True
        root = _ROOT_RE.match(name)
        if root and (root.group(1) or root.group(2)) == caller.account:
            if statement.effect == "Deny":
                return True
            if _action_matches(caller.iam_actions, request.action):
                return True
    return False


def _applies(statement: Statement, request: AuthzRequest) -> bool:
    if not _principal_matches(statement, request):
        return False
    if not _action_matches(statement.actions, request.action):
        return False
    if not _resource_matches(statement.resources, request.resource):
        return False
    for cond in statement.conditions:
        holds = _condition_holds(cond, request.context)
        if holds is None:  # unknown operator: fail safe
            return statement.effect == "Deny"
        if not holds:
            return False
    return True


def evaluate(policy: KeyPolicy, request: AuthzRequest) -> Result:
    """Decide ``request`` under ``policy``: explicit Deny > Allow > implicit deny."""
    allow: str | None = None
    for index, statement in enumerate(policy.statements):
        if not _applies(statement, request):
            continue
        label = statement.sid or f"statement {index}"
        if statement.effect == "Deny":
            return Result(Decision.EXPLICIT_DENY, label)
        if allow is None:
            allow = label
    if allow is not None:
        return Result(Decision.ALLOW, allow)
    return Result(Decision.IMPLICIT_DENY)


def iam_allows(caller: Caller, action: str) -> bool:
    """The caller's IAM allow list grants ``action`` (for operations without a key)."""
    return _action_matches(caller.iam_actions, action)


def default_key_policy(account: str) -> str:
    """The policy KMS attaches when CreateKey gets none: the account root may do ``kms:*``."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "key-default-1",
            "Statement": [
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        },
        indent=2,
    )
