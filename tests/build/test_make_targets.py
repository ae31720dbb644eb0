"""mk/enclave.mk: targets explain missing prerequisites and drive the real tools.

nitro-cli is the fake from tests/parent/fake_nitro_cli (installed on a private PATH); the venv
stamp is treated as up to date (`make -o`) so no test ever reinstalls the venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attestation.eif import assemble_eif, read_eif

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "parent"))
from fake_nitro import make_fake  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env or dict(os.environ),
    )


def test_help_lists_the_targets() -> None:
    out = make("help").stdout
    for target in (
        "image",
        "wheels",
        "base-image",
        "eif",
        "measurements",
        "run-enclave",
        "console",
        "describe",
        "terminate",
        "policy",
        "deploy-dry-run",
    ):
        assert f"  {target} " in out, target


def test_missing_measurements_is_explained(tmp_path: Path) -> None:
    proc = make("measurements", f"MEASUREMENTS={tmp_path}/m.json")
    assert proc.returncode != 0
    assert "is missing: run 'make eif' first" in proc.stdout


def test_missing_nitro_cli_is_explained(tmp_path: Path) -> None:
    proc = make("describe", f"NITRO_CLI={tmp_path}/nitro-cli")
    assert proc.returncode != 0 and "dnf install -y aws-nitro-enclaves-cli" in proc.stdout


def test_run_enclave_without_device_is_explained(tmp_path: Path) -> None:
    if Path("/dev/nitro_enclaves").exists():
        pytest.skip("this machine has /dev/nitro_enclaves")
    fake = make_fake(tmp_path)
    proc = make("run-enclave", f"NITRO_CLI={fake.bin_dir}/nitro-cli", env=fake.env)
    assert proc.returncode != 0
    assert "/dev/nitro_enclaves does not exist" in proc.stdout and "EnclaveOptions" in proc.stdout


def test_describe_and_terminate_through_the_wrapper(tmp_path: Path) -> None:
    fake = make_fake(tmp_path)
    proc = make("describe", f"NITRO_CLI={fake.bin_dir}/nitro-cli", env=fake.env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.split("\n", 1)[1]) == []
    proc = make(
        "terminate", "ENCLAVE_NAME=ghost", f"NITRO_CLI={fake.bin_dir}/nitro-cli", env=fake.env
    )
    assert proc.returncode != 0 and "error [E58]" in proc.stderr


def test_image_without_daemon_is_explained() -> None:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    ):
        pytest.skip("a Docker daemon runs here")
    proc = make("image")
    assert proc.returncode != 0
    assert "Docker" in proc.stdout and ("daemon" in proc.stdout or "not installed" in proc.stdout)


def test_policy_and_deploy_dry_run(tmp_path: Path) -> None:
    eif = tmp_path / "app.eif"
    eif.write_bytes(assemble_eif(b"k" * 64, b"cmdline", [b"r0", b"r1"]))
    measurements = tmp_path / "measurements.json"
    measurements.write_text(json.dumps(read_eif(eif).measurements()))
    role = "arn:aws:iam::123456789012:role/nitro-toolkit-parent"
    admin = "arn:aws:iam::123456789012:role/KeyAdmin"
    proc = make("policy", f"MEASUREMENTS={measurements}", f"KEY_POLICY={tmp_path}/p.json")
    assert proc.returncode != 0 and "set ENCLAVE_ROLE" in proc.stdout
    proc = make(
        "policy",
        f"MEASUREMENTS={measurements}",
        f"KEY_POLICY={tmp_path}/p.json",
        f"ENCLAVE_ROLE={role}",
        f"ADMIN={admin}",
    )
    assert proc.returncode == 0, proc.stderr
    policy = json.loads((tmp_path / "p.json").read_text())
    assert read_eif(eif).pcrs[0].hex() in json.dumps(policy)
    from fleet_moto_server import running_server  # moto_server as a process (CloudFormation)

    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    with running_server() as url:
        proc = make(
            "deploy-dry-run",
            f"EIF={eif}",
            f"ADMIN={admin}",
            "REGION=eu-central-1",
            f"ENDPOINT_URL={url}",
            env=env,
        )
    assert proc.returncode == 0, proc.stderr
    assert '"EnclaveOptions": {' in proc.stdout and "Add     AutoScalingGroup" in proc.stderr
