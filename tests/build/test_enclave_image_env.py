"""The enclave image's Python environment, rebuilt without Docker.

Dockerfile.enclave installs only ``enclave/requirements.txt`` (exact versions, hashes required)
and copies only ``attestation/`` and ``enclave/``. This test does the same in a fresh virtual
environment outside the repository, then imports every module and runs ``python -m enclave
--help``: a missing runtime dependency, a wrong hash, or an import of ``parent``/``simulator``
from enclave code fails here instead of inside a Nitro Enclave. The image's trim step (only
the KMS service model is kept) runs too, and boto3's KMS client must still work after it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from image_imports import IMPORT_ALL

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "enclave" / "requirements.txt"
PIP_TIMEOUT_S = 300
RUN_TIMEOUT_S = 60

pytestmark = pytest.mark.timeout(PIP_TIMEOUT_S + 2 * RUN_TIMEOUT_S)



KMS_ONLY = """
import boto3, botocore.exceptions
kw = dict(region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
kms = boto3.client("kms", endpoint_url="http://127.0.0.1:9", **kw)
assert kms.meta.service_model.operation_model("Decrypt").input_shape.members["Recipient"]
try:
    boto3.client("s3", **kw)
except botocore.exceptions.UnknownServiceError:
    pass
else:
    raise AssertionError("the s3 model should have been trimmed")
"""


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float):
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_enclave_code_runs_on_exactly_the_image_dependencies(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=RUN_TIMEOUT_S)
    py = venv / "bin" / "python"
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    env.update({k: v for k, v in os.environ.items() if k.startswith(("PIP_", "SSL_CERT"))})
    install = _run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ],
        tmp_path,
        env,
        PIP_TIMEOUT_S,
    )
    if install.returncode != 0:
        offline = "No matching distribution" in install.stderr or "connection" in install.stderr
        if offline and os.environ.get("CI") != "true":
            pytest.skip(f"the package registry is unreachable: {install.stderr[-300:]}")
        pytest.fail(f"pip install -r enclave/requirements.txt failed:\n{install.stderr[-2000:]}")

    app = tmp_path / "app"  # what COPY puts in /app: these two packages only
    for package in ("attestation", "enclave"):
        shutil.copytree(ROOT / package, app / package, ignore=shutil.ignore_patterns("__pycache__"))
    env["PYTHONPATH"] = str(app)

    trimmed = _run([str(py), "-m", "enclave._image_trim"], app, env, RUN_TIMEOUT_S)
    assert trimmed.returncode == 0, trimmed.stderr[-2000:]
    assert "removed" in trimmed.stderr

    imported = _run([str(py), "-c", IMPORT_ALL], app, env, RUN_TIMEOUT_S)
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert int(imported.stdout.strip()) > 20

    clients = _run([str(py), "-c", KMS_ONLY], app, env, RUN_TIMEOUT_S)
    assert clients.returncode == 0, clients.stderr[-3000:]

    helped = _run([str(py), "-m", "enclave", "--help"], app, env, RUN_TIMEOUT_S)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "--app" in helped.stdout
