"""PCR8 mode of parent.key_policy: the signing certificate instead of PCR0, evaluated by the
local KMS's policy engine (two releases signed by one certificate both decrypt)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from parent.key_policy import KeyPolicyError, key_policy, lint_policy, select_signer_pcrs
from simulator.kms.policy import AuthzRequest, Caller, Decision, evaluate, parse_policy

ACCOUNT = "111122223333"
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/0b7b9c4e-1111-4c3e-9a3b-123456789abc"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/parent-instance-role"
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/KeyAdmin"
P0, P0_NEXT, P3, P8 = "a0" * 48, "a1" * 48, "33" * 48, "88" * 48


def _decide(policy: dict, **context: str) -> Decision:
    request = AuthzRequest(
        Caller(ROLE, ACCOUNT, ()),
        "kms:Decrypt",
        KEY,
        {f"kms:recipientattestation:{k.lower()}": (v,) for k, v in context.items()},
    )
    return evaluate(parse_policy(json.dumps(policy)), request).decision


def test_pcr8_policy_admits_every_release_signed_with_the_certificate() -> None:
    pcrs = select_signer_pcrs({0: P0, 1: P0, 2: P0, 8: P8})
    assert pcrs == {8: P8}
    policy = key_policy(pcrs=pcrs, enclave_role=ROLE, admin=ADMIN, pin_signer=True)
    condition = policy["Statement"][0]["Condition"]["StringEqualsIgnoreCase"]
    assert condition == {"kms:RecipientAttestation:PCR8": P8}
    assert lint_policy(policy) == []
    for release in (P0, P0_NEXT):
        assert _decide(policy, ImageSha384=release, PCR8=P8) is Decision.ALLOW
    assert _decide(policy, ImageSha384=P0, PCR8="99" * 48) is not Decision.ALLOW
    assert _decide(policy) is not Decision.ALLOW  # no Recipient, no attestation keys


def test_pcr8_mode_keeps_pcr3_and_pcr4_when_present() -> None:
    assert select_signer_pcrs({0: P0, 3: P3, 8: P8}) == {3: P3, 8: P8}
    policy = key_policy(pcrs={3: P3, 8: P8}, enclave_role=ROLE, admin=ADMIN, pin_signer=True)
    assert _decide(policy, PCR3=P3, PCR8=P8) is Decision.ALLOW
    assert _decide(policy, PCR3="00" * 48, PCR8=P8) is not Decision.ALLOW


@pytest.mark.parametrize(
    ("pcrs", "wanted"),
    [({0: P0}, None), ({0: P0, 8: P8}, [0]), ({0: P0, 8: P8}, [4])],
)
def test_pcr8_mode_refuses_unsigned_images_and_image_pcrs(pcrs, wanted) -> None:
    with pytest.raises(KeyPolicyError):
        select_signer_pcrs(pcrs, wanted)


def test_key_policy_refuses_pcr0_in_pcr8_mode() -> None:
    with pytest.raises(KeyPolicyError):
        key_policy(pcrs={0: P0, 8: P8}, enclave_role=ROLE, admin=ADMIN, pin_signer=True)


def test_cli_pin_signer(tmp_path: Path) -> None:
    measurements = tmp_path / "m.json"
    measurements.write_text(json.dumps({"Measurements": {"PCR0": P0, "PCR8": P8}}))
    done = subprocess.run(
        [sys.executable, "-m", "parent.key_policy", "--measurements", str(measurements),
         "--enclave-role", ROLE, "--admin", ADMIN, "--pin-signer"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    condition = json.loads(done.stdout)["Statement"][0]["Condition"]["StringEqualsIgnoreCase"]
    assert condition == {"kms:RecipientAttestation:PCR8": P8}
    measurements.write_text(json.dumps({"Measurements": {"PCR0": P0}}))
    done = subprocess.run(
        [sys.executable, "-m", "parent.key_policy", "--measurements", str(measurements),
         "--enclave-role", ROLE, "--admin", ADMIN, "--pin-signer"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "error (missing-pcr)" in done.stderr
