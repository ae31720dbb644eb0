"""parent.key_policy: measurements → key policy, the linter, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parent.key_policy import (
    ADMIN_ACTIONS,
    KeyPolicyError,
    key_policy,
    lint_policy,
    load_measurements,
    select_pcrs,
)

ROOT = Path(__file__).resolve().parents[2]
ROLE = "arn:aws:iam::111122223333:role/parent-instance-role"
ADMIN = "arn:aws:iam::111122223333:user/operator"
P0, P1, P2, P8 = ("a0" * 48, "b1" * 48, "c2" * 48, "d8" * 48)
BUILD = "Enclave Image successfully created.\n" + json.dumps(
    {"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": P0, "PCR1": P1, "PCR2": P2}}
)


def _condition(policy: dict) -> dict:
    (enclave,) = [s for s in policy["Statement"] if s["Sid"] == "EnclaveUseWithAttestation"]
    return enclave["Condition"]["StringEqualsIgnoreCase"]


# ------------------------------------------------------------------------------ measurements
def test_build_enclave_output_with_banner():
    assert load_measurements(BUILD) == {0: P0, 1: P1, 2: P2}


def test_describe_eif_and_explicit_forms():
    eif = {"EifVersion": 4, "Measurements": {"PCR0": P0.upper(), "PCR8": P8}, "IsSigned": True}
    assert load_measurements(json.dumps(eif)) == {0: P0, 8: P8}
    assert load_measurements({"PCR0": "0x" + P0}) == {0: P0}
    assert load_measurements({"pcrs": {"0": P0, "2": P2}}) == {0: P0, 2: P2}
    assert load_measurements({0: bytes.fromhex(P0)}) == {0: P0}


def test_describe_enclaves_picks_one_and_refuses_debug():
    running = {"EnclaveName": "app", "EnclaveID": "i-1-enc1", "Flags": "NONE",
               "Measurements": {"PCR0": P0}}  # fmt: skip
    other = {**running, "EnclaveName": "other", "EnclaveID": "i-1-enc2"}
    assert load_measurements([running]) == {0: P0}
    with pytest.raises(KeyPolicyError) as info:
        load_measurements([running, other])
    assert info.value.code == "ambiguous-enclave"
    assert load_measurements([running, other], enclave="i-1-enc2") == {0: P0}
    with pytest.raises(KeyPolicyError) as info:
        load_measurements([{**running, "Flags": "DEBUG_MODE"}])
    assert info.value.code == "debug-measurements"


@pytest.mark.parametrize(
    "data",
    ["", "no json here", "[]", {"PCR1": P1}, {"PCR0": "zz" * 48}, {"PCR0": "ab"},
     {"PCR0": "00" * 48}, {"PCR40": P0, "PCR0": P0}],
)  # fmt: skip
def test_bad_measurements_are_refused(data):
    with pytest.raises(KeyPolicyError):
        load_measurements(data)


def test_pcr_selection():
    pcrs = {0: P0, 1: P1, 2: P2, 8: P8}
    assert select_pcrs(pcrs) == {0: P0, 8: P8}  # PCR0 plus 3/4/8 when present
    assert select_pcrs(pcrs, [1, 2]) == {0: P0, 1: P1, 2: P2}
    with pytest.raises(KeyPolicyError):
        select_pcrs(pcrs, [4])


# ------------------------------------------------------------------------------------ policy
def test_policy_shape():
    policy = key_policy(pcrs={0: P0, 1: P1, 8: P8}, enclave_role=ROLE, admin=ADMIN)
    assert _condition(policy) == {
        "kms:RecipientAttestation:ImageSha384": P0,
        "kms:RecipientAttestation:PCR1": P1,
        "kms:RecipientAttestation:PCR8": P8,
    }
    actions = {
        a
        for s in policy["Statement"]
        for a in s["Action"]
        if s["Sid"] != "EnclaveUseWithAttestation"
    }
    assert not actions & {"kms:Decrypt", "kms:CreateGrant", "kms:ReEncryptFrom", "kms:*"}
    assert all("root" not in json.dumps(s["Principal"]) for s in policy["Statement"])
    assert lint_policy(policy) == []
    immutable = key_policy(pcrs={0: P0}, enclave_role=ROLE, admin=ADMIN, allow_policy_updates=False)
    (admin,) = [s for s in immutable["Statement"] if s["Sid"] == "KeyAdministration"]
    assert "kms:PutKeyPolicy" not in admin["Action"] and "kms:PutKeyPolicy" in ADMIN_ACTIONS


def test_policy_refuses_unsafe_inputs():
    with pytest.raises(KeyPolicyError):
        key_policy(pcrs={1: P1}, enclave_role=ROLE, admin=ADMIN)
    with pytest.raises(KeyPolicyError):
        key_policy(pcrs={0: "00" * 48}, enclave_role=ROLE, admin=ADMIN)
    with pytest.raises(KeyPolicyError) as info:
        key_policy(pcrs={0: P0}, enclave_role="arn:aws:iam::111122223333:root", admin=ADMIN)
    assert info.value.code == "bad-principal"
    with pytest.raises(KeyPolicyError):
        key_policy(pcrs={0: P0}, enclave_role=ROLE, admin="111122223333")


# -------------------------------------------------------------------------------------- lint
def _stmt(action, principal=ROLE, condition=None, effect="Allow") -> dict:
    statement = {"Sid": "S", "Effect": effect, "Principal": {"AWS": principal},
                 "Action": action, "Resource": "*"}  # fmt: skip
    if condition:
        statement["Condition"] = condition
    return statement


def _lint(*statements) -> list[str]:
    return lint_policy({"Version": "2012-10-17", "Statement": list(statements)})


def test_lint_flags_unconditioned_plaintext_access():
    assert len(_lint(_stmt("kms:Decrypt"))) == 1
    assert len(_lint(_stmt("kms:*"))) == 1
    assert len(_lint(_stmt(["kms:Re*"]))) == 1
    assert len(_lint(_stmt("kms:CreateGrant"))) == 1
    (finding,) = _lint(_stmt("kms:*", principal="arn:aws:iam::111122223333:root"))
    assert "delegates to IAM" in finding
    assert _lint(_stmt("kms:Encrypt")) == []
    assert _lint(_stmt("kms:Decrypt", effect="Deny")) == []


def test_lint_accepts_only_exact_positive_attestation_conditions():
    key = "kms:RecipientAttestation:ImageSha384"
    assert _lint(_stmt("kms:Decrypt", condition={"StringEqualsIgnoreCase": {key: P0}})) == []
    for operator in ("StringEqualsIfExists", "StringNotEquals", "ForAllValues:StringEquals"):
        assert _lint(_stmt("kms:Decrypt", condition={operator: {key: P0}})), operator
    assert _lint(_stmt("kms:Decrypt", condition={"StringLike": {key: "*"}}))
    ec_only = {"StringEquals": {"kms:EncryptionContext:app": "x"}}
    assert _lint(_stmt("kms:Decrypt", condition=ec_only))
    assert lint_policy("not json") == ["policy is not valid JSON"]


@settings(max_examples=100, deadline=None)
@given(
    pcrs=st.dictionaries(
        st.sampled_from([0, 1, 2, 3, 4, 8, 16]),
        st.binary(min_size=48, max_size=48).filter(any),
        min_size=1,
    ).map(lambda d: {0: b"\x01" * 48, **d}),
)
def test_generated_policies_are_lint_clean_and_json(pcrs):
    policy = key_policy(pcrs=pcrs, enclave_role=ROLE, admin=ADMIN)
    assert lint_policy(json.dumps(policy)) == []
    assert len(_condition(policy)) == len(pcrs)
    leaky = {**policy, "Statement": [*policy["Statement"], _stmt("kms:Decrypt")]}
    assert len(lint_policy(leaky)) == 1


# --------------------------------------------------------------------------------------- CLI
def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parent.key_policy", *args],
        cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_cli_prints_policy_json(tmp_path):
    measurements = tmp_path / "build.json"
    measurements.write_text(BUILD)
    done = _cli("--measurements", str(measurements), "--enclave-role", ROLE, "--admin", ADMIN,
                "--pcr", "1", "--pcr", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    policy = json.loads(done.stdout)
    assert set(_condition(policy)) == {
        "kms:RecipientAttestation:ImageSha384",
        "kms:RecipientAttestation:PCR1",
        "kms:RecipientAttestation:PCR2",
    }
    from_stdin = _cli("--measurements", "-", "--enclave-role", ROLE, "--admin", ADMIN,
                      "--pcr-value", f"4={P8}", stdin=BUILD)  # fmt: skip
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert _condition(json.loads(from_stdin.stdout))["kms:RecipientAttestation:PCR4"] == P8


def test_cli_errors_and_lint(tmp_path):
    done = _cli("--enclave-role", ROLE, "--admin", ADMIN)
    assert done.returncode == 2 and "error (usage)" in done.stderr
    done = _cli(
        "--measurements", str(tmp_path / "missing"), "--enclave-role", ROLE, "--admin", ADMIN
    )
    assert done.returncode == 2
    leaky = tmp_path / "policy.json"
    leaky.write_text(json.dumps({"Statement": [_stmt("kms:*", "arn:aws:iam::1:root")]}))
    done = _cli("--lint", str(leaky))
    assert done.returncode == 1 and "without a kms:RecipientAttestation" in done.stdout


# ------------------------------------------------- issue 9 item 7: key-release bypasses
IMAGE = "kms:RecipientAttestation:ImageSha384"
PCR4 = "kms:RecipientAttestation:PCR4"
PCR8 = "kms:RecipientAttestation:PCR8"


def test_generator_refuses_the_enclave_role_as_administrator():
    for admin in (ROLE, [ADMIN, ROLE]):
        with pytest.raises(KeyPolicyError) as info:
            key_policy(pcrs={0: P0}, enclave_role=ROLE, admin=admin)
        assert info.value.code == "admin-is-enclave-role"
    done = _cli("--pcr-value", f"0={P0}", "--enclave-role", ROLE, "--admin", ROLE)
    assert done.returncode == 2 and "admin-is-enclave-role" in done.stderr


def _attested(condition=None, action="kms:Decrypt") -> dict:
    return _stmt(action, condition=condition or {"StringEqualsIgnoreCase": {IMAGE: P0}})


def test_lint_flags_bypass_grants_to_the_enclave_role():
    for action in ("kms:PutKeyPolicy", "kms:CreateGrant", "kms:ReEncrypt*", "kms:ReEncryptTo",
                   "kms:*", "kms:Put*"):  # fmt: skip
        findings = _lint(_attested(), _stmt(action))
        assert any("to the enclave role" in f for f in findings), action
        # named explicitly, without any attested statement to infer it from
        assert any("enclave role" in f for f in lint_policy(
            {"Statement": [_stmt(action)]}, enclave_role=ROLE)), action  # fmt: skip
    # the reported bypass: key_policy(admin=ROLE) before the generator refused it
    policy = key_policy(pcrs={0: P0}, enclave_role=ROLE, admin=ADMIN)
    for statement in policy["Statement"]:
        if statement["Sid"] == "KeyAdministration":
            statement["Principal"] = {"AWS": ROLE}
    assert any("kms:PutKeyPolicy" in f for f in lint_policy(policy))
    # another principal may administer; the enclave role may DescribeKey
    assert _lint(_attested(), _stmt(["kms:PutKeyPolicy"], principal=ADMIN)) == []
    assert _lint(_attested(), _stmt("kms:DescribeKey")) == []


def test_lint_flags_wildcard_operators_on_attestation_keys():
    for operator in ("StringLike", "ForAnyValue:StringLike", "StringNotLike"):
        cond = {"StringEqualsIgnoreCase": {IMAGE: P0}, operator: {PCR8: "d8?" + "d8" * 47}}
        assert any("wildcards" in f for f in _lint(_attested(cond))), operator
    # the reported one: StringLike with ? wildcards on ImageSha384 pins nothing
    findings = _lint(_attested({"StringLike": {IMAGE: "a?" * 48}}))
    assert any("wildcards" in f for f in findings)
    assert any("without a kms:RecipientAttestation" in f for f in findings)


def test_lint_requires_a_code_pin():
    (finding,) = _lint(_attested({"StringEqualsIgnoreCase": {PCR4: P0}}))
    assert "do not pin the enclave's code" in finding
    pcr12 = {"kms:RecipientAttestation:PCR1": P1, "kms:RecipientAttestation:PCR2": P2}
    assert _lint(_attested({"StringEqualsIgnoreCase": pcr12}))
    assert _lint(_attested({"StringEqualsIgnoreCase": {PCR8: P8}})) == []  # signed images
    assert _lint(_attested({"StringEquals": {"kms:RecipientAttestation:PCR0": P0}})) == []
    assert _lint(_attested({"StringEqualsIgnoreCase": {IMAGE: P0, PCR4: P1}})) == []
