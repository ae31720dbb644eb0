"""parent.fleet against moto in server mode: a real moto_server process, boto3 unmodified.

Stand-ins (each named, because moto 5.2 lacks the operation):
* ``KmsKeyUpdateStandIn`` (in ``fleet_moto_server.py``, inside the server process): moto's
  CloudFormation cannot update an ``AWS::KMS::Key``; the stand-in applies the new KeyPolicy to
  the same key, as CloudFormation does.
* ``TerminateAndReplaceRefresher`` (below, client side): moto has no StartInstanceRefresh /
  DescribeInstanceRefreshes. The stand-in does what a rolling refresh does with operations
  moto has: it terminates each instance of the group without lowering the desired capacity,
  so the group launches a replacement from its current launch template version.
Not covered by moto at all: an NLB through CloudFormation (moto ignores ``Type: network``),
so NLB templates are checked by cfn-lint only (test_fleet_template.py).
"""

from __future__ import annotations

import ast
import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from fleet_moto_server import reset, running_server

from attestation.eif import assemble_eif
from parent.fleet.artifacts import Eif, measure_eif
from parent.fleet.lifecycle import Fleet, Placement
from parent.fleet.rollout import STATE_KEY, Rollout, read_state
from parent.fleet.stack import Aws, FleetError, FleetLimits, Stack
from parent.fleet.template import TemplateOptions, options_of

pytestmark = pytest.mark.integration

REGION = "us-east-1"
ADMIN = "arn:aws:iam::123456789012:role/KeyAdmin"
FAST = FleetLimits(poll_seconds=0.05, stack_wait_seconds=60, refresh_wait_seconds=30)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with running_server() as url:
        yield url


@pytest.fixture
def aws(moto_url: str) -> Aws:
    reset(moto_url)
    session = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    return Aws(REGION, endpoint_url=moto_url, session=session)


def _eif(tmp_path: Path, tag: bytes) -> Eif:
    path = tmp_path / f"{tag.decode()}.eif"
    path.write_bytes(assemble_eif(b"kernel" * 100, b"cmdline", [b"boot", tag * 100]))
    return measure_eif(path)


def _fleet(aws: Aws, name: str = "fleet1") -> Fleet:
    return Fleet(Stack(aws, name, out=io.StringIO(), limits=FAST, sleep=lambda _: None))


def _deploy(aws: Aws, eif: Eif, desired: int = 2, **kw) -> Fleet:
    fleet = _fleet(aws)
    options = TemplateOptions(releases=(), desired=desired, **kw)
    fleet.deploy(options, eif, Placement(key_admin_arn=ADMIN), toolkit=b"toolkit archive")
    return fleet


def _key_policy(aws: Aws, fleet: Fleet) -> dict:
    kms = aws.client("kms")
    arn = fleet.stack.outputs()["EnclaveKeyArn"]
    policy = kms.get_key_policy(KeyId=arn, PolicyName="default")["Policy"]
    # moto answers a key created by CloudFormation with the policy as a JSON object
    return json.loads(policy) if isinstance(policy, str) else policy


def _accepted(policy: dict) -> list[dict[str, str]]:
    return [
        s["Condition"]["StringEqualsIgnoreCase"]
        for s in policy["Statement"]
        if s["Sid"].startswith("EnclaveRelease")
    ]


def _conditions(eif: Eif) -> dict[str, str]:
    return {
        "kms:RecipientAttestation:ImageSha384": eif.pcrs[0],
        "kms:RecipientAttestation:PCR1": eif.pcrs[1],
        "kms:RecipientAttestation:PCR2": eif.pcrs[2],
    }


def _launch_data(aws: Aws, fleet: Fleet) -> dict:
    ec2 = aws.client("ec2")
    lt = fleet.stack.outputs()["LaunchTemplateId"]
    versions = ec2.describe_launch_template_versions(LaunchTemplateId=lt)["LaunchTemplateVersions"]
    latest = max(versions, key=lambda v: v["VersionNumber"])
    return latest["LaunchTemplateData"]


def _user_data(aws: Aws, fleet: Fleet) -> str:
    return base64.b64decode(_launch_data(aws, fleet)["UserData"]).decode()


def _group(aws: Aws, fleet: Fleet) -> dict:
    name = fleet.stack.outputs()["AutoScalingGroupName"]
    asg = aws.client("autoscaling")
    (group,) = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    return group


class TerminateAndReplaceRefresher:
    """Stand-in for StartInstanceRefresh (moto lacks it): see the module docstring."""

    def __init__(self, aws: Aws, *, outcome: str = "Successful") -> None:
        self.asg = aws.client("autoscaling")
        self.outcome = outcome
        self.started: list[str] = []
        self.replaced: list[str] = []
        self.results: dict[str, str] = {}  # refresh id -> its outcome

    def start(self, group: str, min_healthy_percentage: int, warmup_seconds: int) -> str:
        refresh_id = f"stand-in-{len(self.started) + 1}"
        self.started.append(refresh_id)
        self.results[refresh_id] = self.outcome
        if self.outcome == "Successful":
            (found,) = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
                "AutoScalingGroups"
            ]
            for instance in found["Instances"]:
                self.asg.terminate_instance_in_auto_scaling_group(
                    InstanceId=instance["InstanceId"], ShouldDecrementDesiredCapacity=False
                )
                self.replaced.append(instance["InstanceId"])
        return refresh_id

    def describe(self, group: str, refresh_id: str) -> tuple[str, int | None, str]:
        outcome = self.results[refresh_id]
        if outcome == "Successful":
            return "Successful", 100, ""
        return outcome, 50, "instances failed their health checks"


def test_deploy_creates_the_stack_with_the_properties(aws: Aws, tmp_path: Path) -> None:
    eif = _eif(tmp_path, b"app-v1")
    fleet = _deploy(aws, eif, desired=2)
    stack = fleet.stack.require()
    assert stack["StackStatus"] in ("CREATE_COMPLETE", "UPDATE_COMPLETE")
    outputs = fleet.stack.outputs()

    data = _launch_data(aws, fleet)
    assert data["EnclaveOptions"] == {"Enabled": True}
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    script = _user_data(aws, fleet)
    bucket = outputs["ArtifactBucketName"]
    assert f"s3://{bucket}/{eif.key}" in script  # stack values substituted
    assert f'echo "{eif.sha384}  /opt/nitro-toolkit/app.eif" | sha384sum --check' in script
    assert "nitro-enclaves-allocator.service" in script and "${" not in script
    assert "systemctl enable --now nitro-toolkit-enclave.service" in script

    # the key policy's conditions are the measurements; the admin is not the enclave role
    policy = _key_policy(aws, fleet)
    assert _accepted(policy) == [_conditions(eif)]
    role_arn = outputs["InstanceRoleArn"]
    release = next(s for s in policy["Statement"] if s["Sid"] == "EnclaveRelease1")
    assert release["Principal"] == {"AWS": role_arn}
    admin = next(s for s in policy["Statement"] if s["Sid"] == "KeyAdministration")
    assert admin["Principal"] == {"AWS": ADMIN} and "kms:Decrypt" not in admin["Action"]
    from parent.key_policy import lint_policy

    assert lint_policy(policy) == []

    # the role: the two objects and the sealed-secret prefix; no KMS in IAM
    iam = aws.client("iam")
    role_name = role_arn.rsplit("/", 1)[1]
    (name,) = iam.list_role_policies(RoleName=role_name)["PolicyNames"]
    doc = iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"]
    if isinstance(doc, str):  # moto keeps a CloudFormation inline policy as Python text
        doc = ast.literal_eval(doc) if doc.startswith("{'") else json.loads(doc)
    read = next(s for s in doc["Statement"] if s["Sid"] == "ReadTheTwoArtifacts")
    assert read["Action"] == "s3:GetObject"
    assert sorted(read["Resource"]) == sorted(
        f"arn:aws:s3:::{bucket}/{k}"
        for k in (eif.key, fleet.stack.parameters()["ToolkitObjectKey"])
    )
    assert not [s for s in doc["Statement"] if "kms" in json.dumps(s["Action"])]

    s3 = aws.client("s3")
    enc = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    assert enc["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert s3.get_object(Bucket=bucket, Key=eif.key)["Body"].read() == eif.path.read_bytes()

    group = _group(aws, fleet)
    assert group["DesiredCapacity"] == 2 and len(group["Instances"]) == 2

    status = fleet.status()
    assert status["accepted_releases"] == [{f"PCR{i}": eif.pcrs[i] for i in (0, 1, 2)}]
    assert len(status["instances"]) == 2 and status["rollout"] is None


def test_rollout_goes_through_the_five_steps_in_order(aws: Aws, tmp_path: Path) -> None:
    old, new = _eif(tmp_path, b"app-v1"), _eif(tmp_path, b"app-v2")
    fleet = _deploy(aws, old)
    refresher = TerminateAndReplaceRefresher(aws)
    seen: list[tuple[int, list, str, list]] = []

    def observe(step: int) -> None:
        seen.append(
            (
                step,
                _accepted(_key_policy(aws, fleet)),
                fleet.stack.parameters()["EifSha384"],
                list(refresher.started),
            )
        )

    before = {i["InstanceId"] for i in _group(aws, fleet)["Instances"]}
    run = Rollout(fleet, refresher=refresher, on_step=observe)
    assert run.run(new) is None
    assert run.steps_run == [1, 2, 3, 4, 5]
    both = [_conditions(old), _conditions(new)]
    assert seen == [
        (1, [_conditions(old)], old.sha384, []),  # uploaded, nothing else changed
        (2, both, old.sha384, []),  # the key accepts old and new
        (3, both, new.sha384, []),  # the launch template runs the new EIF
        (4, both, new.sha384, ["stand-in-1"]),  # refreshed, old release still accepted
        (5, [_conditions(new)], new.sha384, ["stand-in-1"]),  # only then: new only
    ]
    assert f"{new.sha384}  /opt/nitro-toolkit/app.eif" in _user_data(aws, fleet)
    after = {i["InstanceId"] for i in _group(aws, fleet)["Instances"]}
    assert len(after) == 2 and not after & before
    bucket = fleet.stack.outputs()["ArtifactBucketName"]
    assert read_state(aws, bucket) is None  # done: no state left
    assert aws.client("s3").head_object(Bucket=bucket, Key=new.key)["ContentLength"] == new.size

    # rollback = rolling out the old EIF: the same five steps, back to the old release only
    back = Rollout(fleet, refresher=refresher)
    assert back.run(old) is None and back.steps_run == [1, 2, 3, 4, 5]
    assert _accepted(_key_policy(aws, fleet)) == [_conditions(old)]


def test_rollout_interrupted_after_step_2_resumes(aws: Aws, tmp_path: Path) -> None:
    old, new = _eif(tmp_path, b"app-v1"), _eif(tmp_path, b"app-v2")
    fleet = _deploy(aws, old)
    refresher = TerminateAndReplaceRefresher(aws)

    def crash(step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt  # the operator's terminal dies right after step 2

    with pytest.raises(KeyboardInterrupt):
        Rollout(fleet, refresher=refresher, on_step=crash).run(new)
    bucket = fleet.stack.outputs()["ArtifactBucketName"]
    state = read_state(aws, bucket)
    assert state is not None and state.completed == [1, 2]
    assert _accepted(_key_policy(aws, fleet)) == [_conditions(old), _conditions(new)]
    assert fleet.stack.parameters()["EifSha384"] == old.sha384

    # another EIF cannot start while this rollout is unfinished
    with pytest.raises(FleetError) as info:
        Rollout(fleet, refresher=refresher).run(_eif(tmp_path, b"app-v3"))
    assert info.value.code == "rollout-in-progress"

    resumed = Rollout(fleet, refresher=refresher)
    assert resumed.run(new) is None
    assert resumed.steps_run == [3, 4, 5]
    assert _accepted(_key_policy(aws, fleet)) == [_conditions(new)]
    assert fleet.stack.parameters()["EifSha384"] == new.sha384
    out = fleet.stack.out.getvalue()  # type: ignore[attr-defined]
    assert "step 1/5 (upload the EIF): done before" in out
    assert "step 2/5 (key policy accepts the old and the new release): done before" in out


def test_a_failed_refresh_keeps_the_old_release_and_says_so(aws: Aws, tmp_path: Path) -> None:
    old, new = _eif(tmp_path, b"app-v1"), _eif(tmp_path, b"app-v2")
    fleet = _deploy(aws, old)
    failing = TerminateAndReplaceRefresher(aws, outcome="Failed")
    with pytest.raises(FleetError) as info:
        Rollout(fleet, refresher=failing).run(new)
    assert info.value.code == "refresh-failed"
    assert "still accepts the old and the new release" in info.value.message
    assert _accepted(_key_policy(aws, fleet)) == [_conditions(old), _conditions(new)]
    bucket = fleet.stack.outputs()["ArtifactBucketName"]
    state = read_state(aws, bucket)
    assert state is not None and state.completed == [1, 2, 3] and state.failure

    # a second run retries the refresh with a new one, then finishes
    failing.outcome = "Successful"
    again = Rollout(fleet, refresher=failing)
    assert again.run(new) is None and again.steps_run == [4, 5]
    assert failing.started == ["stand-in-1", "stand-in-2"] and failing.replaced


def test_signed_release_mode_changes_no_key_policy(aws: Aws, tmp_path: Path) -> None:
    from parent.fleet.policy import pinned

    old, new = _eif(tmp_path, b"app-v1"), _eif(tmp_path, b"app-v2")
    signer = "ab" * 48  # PCR8: the same signing certificate for both images
    old = Eif(old.path, old.sha384, {**old.pcrs, 8: signer}, old.size)
    new = Eif(new.path, new.sha384, {**new.pcrs, 8: signer}, new.size)
    fleet = _deploy(aws, old, pin="signer")
    before = _key_policy(aws, fleet)
    assert _accepted(before) == [{"kms:RecipientAttestation:PCR8": signer}]
    assert pinned(new.pcrs, "signer") == pinned(old.pcrs, "signer")
    run = Rollout(fleet, refresher=TerminateAndReplaceRefresher(aws))
    assert run.run(new) is None
    assert _key_policy(aws, fleet) == before
    out = fleet.stack.out.getvalue()  # type: ignore[attr-defined]
    assert "signed-release mode" in out and "no key policy change" in out
    assert "key policy: old + new: the key policy already accepts exactly these releases" in out
    assert fleet.stack.parameters()["EifSha384"] == new.sha384


def test_teardown_leaves_nothing_behind(aws: Aws, tmp_path: Path) -> None:
    eif = _eif(tmp_path, b"app-v1")
    fleet = _deploy(aws, eif)
    outputs = fleet.stack.outputs()
    bucket, key_arn = outputs["ArtifactBucketName"], outputs["EnclaveKeyArn"]
    s3 = aws.client("s3")
    s3.put_object(Bucket=bucket, Key="sealed/db-password", Body=b"kms ciphertext")
    s3.put_object(Bucket=bucket, Key=STATE_KEY, Body=b"{}")

    with pytest.raises(FleetError) as info:  # sealed secrets: only with --force
        fleet.teardown()
    assert info.value.code == "bucket-not-empty" and "nothing was deleted" in info.value.message
    assert fleet.stack.describe() is not None

    summary = fleet.teardown(force=True)
    assert summary["deleted_objects"] == 4
    assert fleet.stack.describe() is None
    assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    kms = aws.client("kms")
    # CloudFormation schedules the key's deletion with the template's PendingWindowInDays (7);
    # moto deletes it at once instead. Either way it can never decrypt again.
    assert options_of is not None
    try:
        state = kms.describe_key(KeyId=key_arn)["KeyMetadata"]["KeyState"]
    except kms.exceptions.NotFoundException:
        state = "deleted"
    assert state in ("PendingDeletion", "deleted")
    aliases = [a["AliasName"] for a in kms.list_aliases()["Aliases"]]
    assert not [a for a in aliases if a.startswith("alias/nitro-toolkit/")]
    iam = aws.client("iam")
    assert (
        iam.list_roles()["Roles"] == [] and iam.list_instance_profiles()["InstanceProfiles"] == []
    )
    assert aws.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"] == []
    ec2 = aws.client("ec2")
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []
    groups = ec2.describe_security_groups()["SecurityGroups"]
    assert [g["GroupName"] for g in groups] == ["default"] * len(groups)
    states = {
        i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
    }
    assert states <= {"terminated", "shutting-down"}
    # and again: nothing to do, said plainly
    assert fleet.teardown() == {"stack": None}


def test_teardown_schedules_a_surviving_key_with_the_shortest_window(aws: Aws) -> None:
    fleet = _fleet(aws)
    arn = aws.client("kms").create_key()["KeyMetadata"]["Arn"]
    assert fleet._schedule_key_deletion(arn) == 7
    meta = aws.client("kms").describe_key(KeyId=arn)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion"
    out = fleet.stack.out.getvalue()  # type: ignore[attr-defined]
    assert "deletion scheduled in 7 days, the shortest window KMS allows" in out
    assert fleet._schedule_key_deletion(arn) == 7  # already pending: left as it is


def test_deploy_on_a_running_stack_with_another_eif_says_use_rollout(
    aws: Aws, tmp_path: Path
) -> None:
    fleet = _deploy(aws, _eif(tmp_path, b"app-v1"))
    with pytest.raises(FleetError) as info:
        _deploy(aws, _eif(tmp_path, b"app-v2"))
    assert info.value.code == "use-rollout"
    assert options_of(fleet.stack.template()).desired == 2


def test_cli_deploy_status_rollout_teardown(
    moto_url: str, aws: Aws, tmp_path: Path, capsys, monkeypatch
) -> None:
    from parent.__main__ import main

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    v1, v2 = _eif(tmp_path, b"app-v1"), _eif(tmp_path, b"app-v2")
    common = ["--stack-name", "cli", "--region", REGION, "--endpoint-url", moto_url]
    assert main(["fleet", "deploy", *common, "--eif", str(v1.path), "--key-admin", ADMIN]) == 0
    out = capsys.readouterr()
    assert "create: done" in out.err and "EnclaveKeyArn" in json.loads(out.out)
    assert main(["fleet", "status", *common]) == 0
    assert json.loads(capsys.readouterr().out)["eif_sha384"] == v1.sha384
    # the CLI's own refresher would ask moto for StartInstanceRefresh, which moto lacks:
    # stop after step 2, as an operator staging a release would
    assert main(["fleet", "rollout", *common, "--eif", str(v2.path), "--stop-after", "2"]) == 0
    result = capsys.readouterr()
    assert json.loads(result.out)["state"]["completed"] == [1, 2]
    assert "stopped after step 2" in result.err
    assert main(["fleet", "teardown", *common]) == 0
    assert "bucket " in capsys.readouterr().err


def test_the_fleet_refuses_its_enclave_role_as_key_administrator(aws: Aws, tmp_path: Path) -> None:
    """Issue 9 item 7: deploying with the instance (enclave) role as key admin (for example
    from the parent instance itself) would let that role rewrite the policy and decrypt."""
    eif = _eif(tmp_path, b"app-v1")
    fleet = _deploy(aws, eif, desired=1)
    role = fleet.stack.outputs()["InstanceRoleArn"]
    session = role.replace(":iam::", ":sts::").replace(":role/", ":assumed-role/") + "/i-0abc"
    for admin in (role, session):
        with pytest.raises(FleetError) as info:
            fleet.deploy(
                TemplateOptions(releases=(), desired=1), eif, Placement(key_admin_arn=admin),
                toolkit=b"toolkit archive",
            )
        assert info.value.code == "admin-is-enclave-role"
    assert _accepted(_key_policy(aws, fleet))  # the stack kept its policy
