"""parent.deploy against moto in server mode (real HTTP; boto3 unmodified via endpoint_url)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from attestation.eif import assemble_eif, read_eif
from attestation.pcr import pcr3_from_role_arn
from parent import _userdata
from parent.deploy import (
    TAG_KEY,
    DeployConfig,
    Deployer,
    DeployError,
    DeployLimits,
    main,
    supports_enclaves,
    toolkit_tarball,
)

REGION = "us-east-1"
ADMIN = "arn:aws:iam::123456789012:role/KeyAdmin"
FAST = DeployLimits(
    propagation_attempts=2,
    propagation_delay=0.01,
    waiter_delay=1,
    waiter_attempts=5,
    sg_delete_attempts=2,
)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    # AWS-managed policies (AmazonSSMManagedInstanceCore) exist in moto only when loaded
    saved = os.environ.get("MOTO_IAM_LOAD_MANAGED_POLICIES")
    os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        if saved is None:
            os.environ.pop("MOTO_IAM_LOAD_MANAGED_POLICIES", None)
        else:
            os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = saved


@pytest.fixture
def aws(moto_url: str) -> Iterator[tuple[boto3.Session, str]]:
    reset = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=10).close()
    session = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    yield session, moto_url


def client(aws: tuple[boto3.Session, str], service: str):
    session, url = aws
    return session.client(service, endpoint_url=url, region_name=REGION)


@pytest.fixture
def eif(tmp_path: Path) -> Path:
    path = tmp_path / "app.eif"
    path.write_bytes(assemble_eif(b"kernel" * 100, b"cmdline", [b"boot", b"app-v1" * 100]))
    return path


def deployer(aws, eif: Path | None, **overrides) -> Deployer:
    session, url = aws
    cfg = DeployConfig(region=REGION, eif=eif, admins=(ADMIN,), **overrides)
    return Deployer(cfg, session=session, endpoint_url=url, limits=FAST, out=io.StringIO())


def _capture_bodies(d: Deployer, service: str) -> list[bytes]:
    """The HTTP bodies boto3 really sends (botocore's before-send event)."""
    bodies: list[bytes] = []

    def keep(request, **_) -> None:
        body = request.body or b""
        bodies.append(body.encode() if isinstance(body, str) else bytes(body))

    d.client(service).meta.events.register("before-send", keep)
    return bodies


def test_deploy_creates_everything(aws, eif: Path) -> None:
    d = deployer(aws, eif, allow_cidr="10.0.0.0/8", ssm=True)
    ec2_bodies = _capture_bodies(d, "ec2")
    result = d.deploy()
    pcrs = read_eif(eif).pcrs

    iam = client(aws, "iam")
    role = iam.get_role(RoleName="nitro-toolkit-parent")["Role"]
    assert role["Arn"] == result.role_arn
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    profile = iam.get_instance_profile(InstanceProfileName="nitro-toolkit-parent")
    assert [r["RoleName"] for r in profile["InstanceProfile"]["Roles"]] == ["nitro-toolkit-parent"]
    # least privilege: one inline policy, s3:GetObject on exactly the two artifacts
    assert iam.list_role_policies(RoleName="nitro-toolkit-parent")["PolicyNames"] == [
        "read-deployment-artifacts"
    ]
    doc = iam.get_role_policy(
        RoleName="nitro-toolkit-parent", PolicyName="read-deployment-artifacts"
    )["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    (stmt,) = doc["Statement"]
    assert stmt["Action"] == "s3:GetObject" and len(stmt["Resource"]) == 2
    attached = iam.list_attached_role_policies(RoleName="nitro-toolkit-parent")
    assert [p["PolicyName"] for p in attached["AttachedPolicies"]] == [
        "AmazonSSMManagedInstanceCore"
    ]

    s3 = client(aws, "s3")
    got = s3.get_object(Bucket=result.bucket, Key="nitro-toolkit/app.eif")["Body"].read()
    assert got == eif.read_bytes()
    tgz = s3.get_object(Bucket=result.bucket, Key="nitro-toolkit/toolkit.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        assert "parent/deploy.py" in tar.getnames()

    kms = client(aws, "kms")
    meta = kms.describe_key(KeyId="alias/nitro-toolkit")["KeyMetadata"]
    assert meta["Arn"] == result.key_arn
    policy = json.loads(kms.get_key_policy(KeyId=meta["KeyId"], PolicyName="default")["Policy"])
    cond = next(s for s in policy["Statement"] if s["Sid"] == "EnclaveUseWithAttestation")
    values = cond["Condition"]["StringEqualsIgnoreCase"]
    assert values["kms:RecipientAttestation:ImageSha384"] == pcrs[0].hex()
    assert values["kms:RecipientAttestation:PCR3"] == pcr3_from_role_arn(result.role_arn).hex()
    assert cond["Principal"] == {"AWS": result.role_arn}

    ec2 = client(aws, "ec2")
    (inst,) = ec2.describe_instances(InstanceIds=[result.instance_id])["Reservations"][0][
        "Instances"
    ]
    assert inst["InstanceType"] == "m6i.xlarge"
    assert inst["IamInstanceProfile"]["Arn"] == result.instance_profile_arn
    assert {"Key": TAG_KEY, "Value": "nitro-toolkit"} in inst["Tags"]
    user_data = ec2.describe_instance_attribute(
        InstanceId=result.instance_id, Attribute="userData"
    )["UserData"]["Value"]
    script = base64.b64decode(user_data).decode()
    assert script == result.user_data
    assert "dnf install -y aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel" in script
    assert "memory_mib: 1024" in script and "cpu_count: 2" in script
    assert "-m parent kms-relay 8000 kms.us-east-1.amazonaws.com 443 --config" in script
    assert "-m parent proxy --enclave-cid 16 --port 8080 --host 0.0.0.0" in script  # allow_cidr
    assert "-m parent credentials --enclave-cid 16 --region us-east-1" in script
    # what went over the wire: EnclaveOptions enabled (moto does not echo it back)
    run = [b for b in ec2_bodies if b"Action=RunInstances" in b]
    assert run and b"EnclaveOptions.Enabled=true" in run[0]
    (sg,) = ec2.describe_security_groups(GroupIds=[result.security_group_id])["SecurityGroups"]
    assert sg["IpPermissions"][0]["FromPort"] == 8080
    assert sg["IpPermissions"][0]["IpRanges"][0]["CidrIp"] == "10.0.0.0/8"


def test_teardown_then_redeploy_reuses_the_key(aws, eif: Path, tmp_path: Path) -> None:
    first = deployer(aws, eif).deploy()
    summary = deployer(aws, None).teardown()
    assert summary["terminated_instances"] == [first.instance_id]
    assert summary["role"] == "nitro-toolkit-parent"
    assert summary["bucket"] == first.bucket and summary["key"] == first.key_arn

    iam, ec2, kms, s3 = (client(aws, s) for s in ("iam", "ec2", "kms", "s3"))
    assert not [r for r in iam.list_roles()["Roles"] if r["RoleName"] == "nitro-toolkit-parent"]
    assert not iam.list_instance_profiles()["InstanceProfiles"]
    state = ec2.describe_instances(InstanceIds=[first.instance_id])["Reservations"][0]["Instances"][
        0
    ]["State"]["Name"]
    assert state == "terminated"
    groups = ec2.describe_security_groups()["SecurityGroups"]
    assert first.security_group_id not in [g["GroupId"] for g in groups]
    assert kms.describe_key(KeyId=first.key_arn)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    assert first.bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]

    # a new image: same key (its deletion cancelled), policy updated to the new PCR0
    new_eif = tmp_path / "v2.eif"
    new_eif.write_bytes(assemble_eif(b"kernel" * 100, b"cmdline", [b"boot", b"app-v2" * 100]))
    second = deployer(aws, new_eif).deploy()
    assert second.key_arn == first.key_arn
    meta = kms.describe_key(KeyId=second.key_arn)["KeyMetadata"]
    assert meta["KeyState"] == "Enabled"
    policy = json.loads(kms.get_key_policy(KeyId=meta["KeyId"], PolicyName="default")["Policy"])
    values = policy["Statement"][0]["Condition"]["StringEqualsIgnoreCase"]
    assert values["kms:RecipientAttestation:ImageSha384"] == read_eif(new_eif).pcrs[0].hex()


def test_teardown_of_nothing_is_quiet(aws) -> None:
    summary = deployer(aws, None, name="ghost").teardown()
    assert summary["terminated_instances"] == [] and summary["key"] is None
    assert summary["role"] is None and summary["bucket"] is None


def test_unsupported_instance_type_is_refused_before_creating_anything(aws, eif: Path) -> None:
    with pytest.raises(DeployError) as info:
        deployer(aws, eif, instance_type="t3.large").deploy()
    assert info.value.code == "instance-type"
    assert client(aws, "iam").list_roles()["Roles"] == []


def test_memory_smaller_than_4x_eif_is_refused(aws, eif: Path) -> None:
    with pytest.raises(DeployError) as info:
        deployer(aws, eif, memory_mib=2).deploy()
    assert info.value.code == "memory-too-small" and "E26" in info.value.message


def test_explicit_key_policy_is_used_as_is(aws, eif: Path) -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Mine",
                "Effect": "Allow",
                "Principal": {"AWS": ADMIN},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }
    result = deployer(aws, eif, key_policy=policy).deploy()
    kms = client(aws, "kms")
    got = kms.get_key_policy(KeyId=result.key_arn, PolicyName="default")["Policy"]
    assert json.loads(got) == policy


class _NoAws:
    def client(self, *a, **k):
        raise AssertionError("a dry run must not create AWS clients")


def test_dry_run_calls_nothing_and_prints_everything(eif: Path) -> None:
    out = io.StringIO()
    cfg = DeployConfig(region="eu-west-1", eif=eif, account_id="111122223333", admins=(ADMIN,))
    d = Deployer(cfg, session=_NoAws(), dry_run=True, out=out)
    result = d.deploy()
    text = out.getvalue()
    operations = [op for _, op, _ in d.calls]
    assert operations == [
        "CreateRole",
        "CreateInstanceProfile",
        "AddRoleToInstanceProfile",
        "CreateBucket",
        "PutPublicAccessBlock",
        "PutBucketTagging",
        "PutObject",
        "PutObject",
        "PutRolePolicy",
        "CreateKey",
        "CreateAlias",
        "CreateSecurityGroup",
        "RunInstances",
    ]
    assert '"EnclaveOptions": {\n    "Enabled": true\n  }' in text
    assert "--- UserData ---" in text and "nitro-enclaves-allocator.service" in text
    assert '"LocationConstraint": "eu-west-1"' in text
    assert "arn:aws:iam::111122223333:role/nitro-toolkit-parent" in text
    assert read_eif(eif).pcrs[0].hex() in text  # the key policy, shown decoded
    assert result.user_data in text


def test_main_dry_run_and_teardown_dry_run(eif: Path, capsys) -> None:
    assert main(["--region", REGION, "--eif", str(eif), "--dry-run", "--admin", ADMIN]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# DRY RUN") and "ec2.RunInstances" in out
    assert main(["--region", REGION, "--teardown", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ec2.TerminateInstances" in out and "kms.ScheduleKeyDeletion" in out


def test_main_usage_and_errors(tmp_path: Path, capsys) -> None:
    assert main(["--region", REGION]) == 2
    bad = tmp_path / "bad.eif"
    bad.write_bytes(b"nope")
    assert main(["--region", REGION, "--eif", str(bad), "--dry-run"]) == 1
    assert "bad-eif" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("itype", "info", "ok"),
    [
        ("m6i.xlarge", None, True),
        ("m6i.large", None, False),
        ("m6g.large", None, True),
        ("t3.xlarge", None, False),
        ("m7i-flex.xlarge", None, False),
        ("c5.9xlarge", None, True),
        ("m6i.large", {"NitroEnclavesSupport": "unsupported"}, False),
        ("x9.huge", {"NitroEnclavesSupport": "supported"}, True),
        ("m6i.metal", {"VCpuInfo": {"DefaultVCpus": 128}}, True),
    ],
)
def test_supports_enclaves(itype: str, info, ok: bool) -> None:
    assert supports_enclaves(itype, info) is ok


# --- user data and units ------------------------------------------------------------------------


def _cfg(**kw) -> _userdata.UserDataConfig:
    base = dict(
        name="app",
        region="us-west-2",
        bucket="my-bucket",
        eif_key="app/app.eif",
        toolkit_key="app/toolkit.tar.gz",
        key_arn="arn:aws:kms:us-west-2:1:key/x",
    )
    base.update(kw)
    return _userdata.UserDataConfig(**base)  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_user_data_is_valid_bash() -> None:
    script = _userdata.render(_cfg())
    proc = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "app; rm -rf /"},
        {"region": "us-east-1 && curl x"},
        {"bucket": "Bad_Bucket"},
        {"eif_key": "a b"},
        {"enclave_cid": 3},
        {"memory_mib": 10},
        {"proxy_host": "0.0.0.0; reboot"},
    ],
)
def test_user_data_refuses_unsafe_values(bad: dict) -> None:
    with pytest.raises(ValueError, match="invalid deployment settings"):
        _userdata.render(_cfg(**bad))


def test_units() -> None:
    units = _userdata.render_units(_cfg(enclave_cid=21, proxy_port=9090, memory_mib=2048))
    enclave = units["nitro-toolkit-enclave.service"]
    assert (
        "ExecStart=/usr/bin/nitro-cli run-enclave --eif-path /opt/nitro-toolkit/app.eif "
        "--cpu-count 2 --memory 2048 --enclave-cid 21 --enclave-name app"
    ) in enclave
    assert "ExecStop=/usr/bin/nitro-cli terminate-enclave --enclave-name app" in enclave
    relay = units["nitro-toolkit-kms-relay.service"]
    assert (
        "ExecStart=/opt/nitro-toolkit/venv/bin/python -m parent kms-relay 8000 "
        "kms.us-west-2.amazonaws.com 443 --config /etc/nitro-toolkit/vsock-proxy.yaml"
    ) in relay
    proxy = units["nitro-toolkit-proxy.service"]
    assert "-m parent proxy --enclave-cid 21 --port 9090 --host 127.0.0.1" in proxy
    creds = units["nitro-toolkit-credentials.service"]
    assert "-m parent credentials --enclave-cid 21 --region us-west-2" in creds
    assert "User=nitro-toolkit" in proxy and "User=nitro-toolkit" in relay
    for text in units.values():
        assert "{" not in text and "[Install]" in text


def test_toolkit_tarball_is_reproducible() -> None:
    a, b = (
        toolkit_tarball(Path(__file__).resolve().parents[2]),
        toolkit_tarball(Path(__file__).resolve().parents[2]),
    )
    assert a == b
    with tarfile.open(fileobj=io.BytesIO(a)) as tar:
        names = tar.getnames()
        assert "pyproject.toml" in names and "attestation/eif.py" in names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert {m.mtime for m in tar.getmembers()} == {0}
