"""``python -m parent deploy``: one instance as the fleet stack (moto in server mode, a real
process; boto3 unmodified), the instance-family checks, the units and the toolkit archive."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from fleet_moto_server import reset, running_server

from attestation.eif import assemble_eif
from parent import _userdata
from parent.deploy import main, supports_enclaves
from parent.fleet.artifacts import toolkit_tarball

REGION = "us-east-1"
ADMIN = "arn:aws:iam::123456789012:role/KeyAdmin"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with running_server() as url:
        yield url


@pytest.fixture
def aws(moto_url: str, monkeypatch) -> Iterator[str]:
    reset(moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    yield moto_url


def client(url: str, service: str):
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def eif(tmp_path: Path) -> Path:
    path = tmp_path / "app.eif"
    path.write_bytes(assemble_eif(b"kernel" * 100, b"cmdline", [b"boot", b"app-v1" * 100]))
    return path


def test_dry_run_prints_the_template_and_the_change_set_and_changes_nothing(
    aws: str, eif: Path, capsys
) -> None:
    argv = ["--region", REGION, "--endpoint-url", aws, "--eif", str(eif), "--key-admin", ADMIN]
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr()
    template = json.loads(out.out)
    assert template["Parameters"]["DesiredCapacity"]["Default"] == 1
    data = template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["EnclaveOptions"] == {"Enabled": True}
    assert "change set for stack nitro-toolkit (nothing executed):" in out.err
    assert "Add     AutoScalingGroup" in out.err and "<" not in out.err  # no placeholders
    cfn = client(aws, "cloudformation")
    live = [s for s in cfn.list_stacks()["StackSummaries"] if s["StackStatus"] != "DELETE_COMPLETE"]
    assert live == [] and client(aws, "s3").list_buckets()["Buckets"] == []


def test_deploy_is_a_stack_with_one_instance_and_teardown_deletes_it(
    aws: str, eif: Path, capsys
) -> None:
    argv = ["--region", REGION, "--endpoint-url", aws]
    assert main([*argv, "--eif", str(eif), "--key-admin", ADMIN]) == 0
    outputs = json.loads(capsys.readouterr().out)
    asg = client(aws, "autoscaling")
    (group,) = asg.describe_auto_scaling_groups(
        AutoScalingGroupNames=[outputs["AutoScalingGroupName"]]
    )["AutoScalingGroups"]
    assert group["DesiredCapacity"] == 1 and len(group["Instances"]) == 1
    assert client(aws, "cloudformation").describe_stacks(StackName="nitro-toolkit")["Stacks"]
    assert main([*argv, "--teardown"]) == 0
    assert "bucket " in capsys.readouterr().err
    assert client(aws, "s3").list_buckets()["Buckets"] == []


def test_usage_and_typed_errors(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.eif"
    bad.write_bytes(b"nope")
    argv = ["--region", REGION, "--endpoint-url", "http://127.0.0.1:9", "--eif", str(bad)]
    assert main(argv) == 1
    assert "error [bad-eif]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--region", REGION])  # no --eif
    assert info.value.code == 2
    assert main(["--help"]) == 0 and "fleet deploy --desired 1" in capsys.readouterr().out


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
    a, b = toolkit_tarball(), toolkit_tarball()
    assert a == b
    with tarfile.open(fileobj=io.BytesIO(a)) as tar:
        names = tar.getnames()
        assert "pyproject.toml" in names and "attestation/eif.py" in names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert {m.mtime for m in tar.getmembers()} == {0}
