"""Key policy parsing and evaluation (simulator.kms.policy)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.kms.policy import (
    AuthzRequest,
    Caller,
    Decision,
    PolicyDocumentError,
    default_key_policy,
    evaluate,
    parse_policy,
)

ACCOUNT = "111122223333"
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/0b7b9c4e-1111-4c3e-9a3b-123456789abc"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/parent-instance-role"
ADMIN = f"arn:aws:iam::{ACCOUNT}:user/operator"
PCR0 = "ab" * 48


def _policy(*statements: dict) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _allow(principal="*", action="kms:*", condition=None, effect="Allow") -> dict:
    st_: dict = {"Effect": effect, "Principal": principal, "Action": action, "Resource": "*"}
    if condition is not None:
        st_["Condition"] = condition
    return st_


def _ask(policy: str, *, caller=ROLE, action="kms:Decrypt", iam=(), **context) -> Decision:
    request = AuthzRequest(
        Caller(caller, ACCOUNT, tuple(iam)),
        action,
        KEY,
        {k.lower(): tuple(v) if isinstance(v, list) else (v,) for k, v in context.items()},
    )
    return evaluate(parse_policy(policy), request).decision


ATTESTED = _policy(
    _allow(
        {"AWS": ROLE},
        ["kms:Decrypt", "kms:GenerateDataKey"],
        {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0.upper()}},
    )
)


def _attestation(value: str) -> dict:
    return {"kms:RecipientAttestation:ImageSha384": value}


# --------------------------------------------------------------------------------- decisions
def test_attested_allow_needs_matching_image_digest():
    assert _ask(ATTESTED, **_attestation(PCR0)) is Decision.ALLOW
    assert _ask(ATTESTED, **_attestation("cd" * 48)) is Decision.IMPLICIT_DENY
    assert _ask(ATTESTED) is Decision.IMPLICIT_DENY  # no Recipient: key absent


def test_action_principal_and_resource_must_match():
    assert _ask(ATTESTED, action="kms:Encrypt", **_attestation(PCR0)) is Decision.IMPLICIT_DENY
    assert _ask(ATTESTED, caller=ADMIN, **_attestation(PCR0)) is Decision.IMPLICIT_DENY
    other_key = _policy(
        {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": KEY + "x"}
    )
    assert _ask(other_key) is Decision.IMPLICIT_DENY


def test_action_wildcards_are_case_insensitive():
    policy = _policy(_allow({"AWS": ROLE}, "KMS:generate*"))
    assert _ask(policy, action="kms:GenerateDataKey") is Decision.ALLOW
    assert _ask(policy, action="kms:GenerateDataKeyPair") is Decision.ALLOW
    assert _ask(policy, action="kms:Decrypt") is Decision.IMPLICIT_DENY


def test_explicit_deny_wins():
    policy = _policy(_allow(), _allow("*", "kms:Decrypt", effect="Deny"))
    assert _ask(policy) is Decision.EXPLICIT_DENY
    assert _ask(policy, action="kms:Encrypt") is Decision.ALLOW


def test_assumed_role_session_matches_role_arn():
    session = f"arn:aws:sts::{ACCOUNT}:assumed-role/parent-instance-role/i-0123"
    policy = _policy(_allow({"AWS": ROLE}))
    assert _ask(policy, caller=session) is Decision.ALLOW


def test_account_root_delegates_to_iam():
    policy = default_key_policy(ACCOUNT)
    assert _ask(policy, caller=ADMIN, iam=["kms:*"]) is Decision.ALLOW
    assert _ask(policy, caller=ROLE, iam=["kms:GenerateRandom"]) is Decision.IMPLICIT_DENY
    assert _ask(policy, caller=ROLE, iam=["kms:Decrypt"]) is Decision.ALLOW  # the SDK-C #100 trap
    other_account = Caller("arn:aws:iam::999988887777:user/x", "999988887777", ("kms:*",))
    request = AuthzRequest(other_account, "kms:Decrypt", KEY, {})
    assert evaluate(parse_policy(policy), request).decision is Decision.IMPLICIT_DENY


def test_account_root_deny_applies_to_everyone_in_account():
    policy = _policy(_allow(), _allow({"AWS": ACCOUNT}, "kms:Decrypt", effect="Deny"))
    assert _ask(policy, iam=[]) is Decision.EXPLICIT_DENY


def test_string_operators():
    ec_key = "kms:EncryptionContext:tenant"
    equals = _policy(_allow(condition={"StringEquals": {ec_key: "Acme"}}))
    assert _ask(equals, **{ec_key: "Acme"}) is Decision.ALLOW
    assert _ask(equals, **{ec_key: "acme"}) is Decision.IMPLICIT_DENY
    ignore = _policy(_allow(condition={"StringEqualsIgnoreCase": {ec_key: "Acme"}}))
    assert _ask(ignore, **{ec_key: "ACME"}) is Decision.ALLOW
    like = _policy(_allow(condition={"StringLike": {ec_key: ["ac?e", "tenant-*"]}}))
    assert _ask(like, **{ec_key: "acme"}) is Decision.ALLOW
    assert _ask(like, **{ec_key: "tenant-42"}) is Decision.ALLOW
    assert _ask(like, **{ec_key: "Acme"}) is Decision.IMPLICIT_DENY
    not_equals = _policy(_allow(condition={"StringNotEquals": {ec_key: "evil"}}))
    assert _ask(not_equals, **{ec_key: "good"}) is Decision.ALLOW
    assert _ask(not_equals, **{ec_key: "evil"}) is Decision.IMPLICIT_DENY
    assert _ask(not_equals) is Decision.ALLOW  # negated operator, key absent: true (IAM rule)


def test_if_exists_null_and_set_operators():
    key = "kms:EncryptionContextKeys"
    if_exists = _policy(
        _allow(condition={"StringEqualsIfExists": {"kms:EncryptionContext:a": "1"}})
    )
    assert _ask(if_exists) is Decision.ALLOW
    assert _ask(if_exists, **{"kms:EncryptionContext:a": "2"}) is Decision.IMPLICIT_DENY
    null = _policy(_allow(condition={"Null": {"kms:RecipientAttestation:ImageSha384": "false"}}))
    assert _ask(null) is Decision.IMPLICIT_DENY
    assert _ask(null, **_attestation(PCR0)) is Decision.ALLOW
    any_value = _policy(_allow(condition={"ForAnyValue:StringEquals": {key: ["a", "b"]}}))
    assert _ask(any_value, **{key: ["x", "b"]}) is Decision.ALLOW
    assert _ask(any_value, **{key: ["x"]}) is Decision.IMPLICIT_DENY
    assert _ask(any_value) is Decision.IMPLICIT_DENY
    all_values = _policy(_allow(condition={"ForAllValues:StringEquals": {key: ["a", "b"]}}))
    assert _ask(all_values, **{key: ["a", "b"]}) is Decision.ALLOW
    assert _ask(all_values, **{key: ["a", "c"]}) is Decision.IMPLICIT_DENY
    assert _ask(all_values) is Decision.ALLOW  # ForAllValues with no values is true (IAM rule)


def test_condition_key_names_are_case_insensitive():
    policy = _policy(
        _allow(condition={"StringEquals": {"KMS:RECIPIENTATTESTATION:PCR1": "00" * 48}})
    )
    assert _ask(policy, **{"kms:RecipientAttestation:PCR1": "00" * 48}) is Decision.ALLOW


def test_bool_values_in_conditions():
    policy = _policy(_allow(condition={"Bool": {"aws:SecureTransport": True}}))
    assert _ask(policy, **{"aws:SecureTransport": "true"}) is Decision.ALLOW


# ----------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"Statement": []}),
        json.dumps({"Version": "2099-01-01", "Statement": [_allow()]}),
        _policy({"Effect": "Maybe", "Principal": "*", "Action": "kms:*", "Resource": "*"}),
        _policy({"Effect": "Allow", "Action": "kms:*", "Resource": "*"}),
        _policy({"Effect": "Allow", "Principal": "*", "Resource": "*"}),
        _policy({**_allow(), "NotAction": "kms:Decrypt"}),
        _policy(_allow(condition={"StringSortOf": {"kms:EncryptionContext:a": "x"}})),
        _policy(_allow(condition={"NumericLessThan": {"kms:x": "1"}})),
        _policy(_allow(condition={"StringEquals": {"kms:x": {"nested": 1}}})),
        _policy(_allow(principal={"Alien": "x"})),
        "x" * 40_000,
    ],
)
def test_malformed_policies_are_refused(text):
    with pytest.raises(PolicyDocumentError):
        parse_policy(text)


def test_statement_may_be_a_single_object():
    text = json.dumps({"Version": "2012-10-17", "Statement": _allow()})
    assert _ask(text) is Decision.ALLOW


# -------------------------------------------------------------------------------- properties
_actions = st.sampled_from(
    ["kms:*", "kms:Decrypt", "kms:Encrypt", "kms:Generate*", "kms:GenerateDataKey", "*"]
)
_principals = st.sampled_from(["*", {"AWS": ROLE}, {"AWS": ADMIN}, {"AWS": ACCOUNT}])
_operators = st.sampled_from(
    [
        "StringEquals",
        "StringNotEquals",
        "StringEqualsIgnoreCase",
        "StringLike",
        "ForAnyValue:StringEquals",
        "ForAllValues:StringLike",
        "StringEqualsIfExists",
        "Null",
    ]
)
_keys = st.sampled_from(
    [
        "kms:RecipientAttestation:ImageSha384",
        "kms:RecipientAttestation:PCR0",
        "kms:EncryptionContext:a",
    ]
)
_values = st.sampled_from(["ab", "AB", "a*", "true", "false", PCR0])


@st.composite
def statements(draw, effect=None):
    statement = _allow(
        draw(_principals),
        draw(st.lists(_actions, min_size=1, max_size=3)),
        effect=effect or draw(st.sampled_from(["Allow", "Deny"])),
    )
    conditions = draw(
        st.dictionaries(
            _operators, st.dictionaries(_keys, _values, min_size=1, max_size=2), max_size=2
        )
    )
    if conditions:
        statement["Condition"] = conditions
    return statement


_requests = st.fixed_dictionaries(
    {
        "caller": st.sampled_from([ROLE, ADMIN]),
        "action": st.sampled_from(["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"]),
        "iam": st.lists(_actions, max_size=2),
        "context": st.dictionaries(_keys, _values, max_size=3),
    }
)


def _decide(policy: str, req: dict) -> Decision:
    return _ask(
        policy, caller=req["caller"], action=req["action"], iam=req["iam"], **req["context"]
    )


@settings(max_examples=150, deadline=None)
@given(stmts=st.lists(statements(), min_size=1, max_size=4), req=_requests)
def test_adding_an_unconditional_deny_always_denies(stmts, req):
    deny_all = _allow("*", "kms:*", effect="Deny")
    assert _decide(_policy(*stmts, deny_all), req) is Decision.EXPLICIT_DENY
    assert _decide(_policy(deny_all, *stmts), req) is Decision.EXPLICIT_DENY


@settings(max_examples=150, deadline=None)
@given(stmts=st.lists(statements(effect="Deny"), min_size=1, max_size=4), req=_requests)
def test_without_an_allow_nothing_is_allowed(stmts, req):
    assert _decide(_policy(*stmts), req) is not Decision.ALLOW


@settings(max_examples=150, deadline=None)
@given(stmts=st.lists(statements(), min_size=1, max_size=4), req=_requests)
def test_statement_order_does_not_change_the_decision(stmts, req):
    assert _decide(_policy(*stmts), req) is _decide(_policy(*reversed(stmts)), req)


@settings(max_examples=150, deadline=None)
@given(stmts=st.lists(statements(), min_size=1, max_size=4), extra=statements(), req=_requests)
def test_adding_a_statement_never_turns_a_deny_into_allow_unless_it_allows(stmts, extra, req):
    before = _decide(_policy(*stmts), req)
    after = _decide(_policy(*stmts, extra), req)
    if before is Decision.EXPLICIT_DENY:
        assert after is Decision.EXPLICIT_DENY
    if extra["Effect"] == "Deny" and before is not Decision.ALLOW:
        assert after is not Decision.ALLOW


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(max_size=300)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "Version",
                        "Statement",
                        "Effect",
                        "Principal",
                        "Action",
                        "Resource",
                        "Condition",
                        "AWS",
                        "StringEquals",
                        "Sid",
                    ]
                ),
                children,
                max_size=4,
            )
        ),
        max_leaves=20,
    ).map(json.dumps)
)
def test_parser_only_raises_policy_document_error(text):
    try:
        policy = parse_policy(text)
    except PolicyDocumentError:
        return
    request = AuthzRequest(Caller(ROLE, ACCOUNT, ()), "kms:Decrypt", KEY, {})
    assert evaluate(policy, request).decision in set(Decision)


@pytest.mark.parametrize(
    "doc",
    [
        {"Version": [], "Statement": []},
        {"Version": {"a": 1}, "Statement": {}},
        {
            "Statement": [
                {"Effect": ["Allow"], "Principal": "*", "Action": "kms:*", "Resource": "*"}
            ]
        },
        {"Statement": [{**_allow(), "Sid": ["x"]}]},
        {"Statement": [{**_allow(), "Principal": ["*"]}]},
    ],
)
def test_wrongly_typed_elements_are_malformed_not_crashes(doc):
    with pytest.raises(PolicyDocumentError):
        parse_policy(json.dumps(doc))
