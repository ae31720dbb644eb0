"""`make eif` / `make measurements` / `make reproduce` with the Python builder (real make, real
git clone; fake blobs and a rootfs tar, so no Docker daemon is needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from eif_build_helpers import ROOT, SIMPLE_ROOTFS, make_blobs, make_rootfs

from attestation.eif import read_eif

pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or shutil.which("git") is None or not (ROOT / ".git").exists(),
    reason="needs make, git and a git checkout",
)


def make(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "SOURCE_DATE_EPOCH")}
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip


@pytest.fixture()
def inputs(tmp_path: Path) -> list[str]:
    blobs = make_blobs(tmp_path / "blobs")
    rootfs = make_rootfs(tmp_path / "rootfs.tar", SIMPLE_ROOTFS)
    return [
        f"BLOBS={blobs}",
        f"ROOTFS_TAR={rootfs}",
        'CMD_JSON=["/app/main.py"]',
        f"EIF={tmp_path}/out/app.eif",
        f"MEASUREMENTS={tmp_path}/out/measurements.json",
        "NITRO_CLI=/nonexistent/nitro-cli",
    ]


def test_make_eif_uses_the_python_builder_without_nitro_cli(
    inputs: list[str], tmp_path: Path
) -> None:
    done = make("eif", *inputs)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "building with the Python builder" in done.stdout
    assert "because nitro-cli is not installed" in done.stdout
    measurements = json.loads((tmp_path / "out" / "measurements.json").read_text())
    assert read_eif(tmp_path / "out" / "app.eif").measurements() == measurements
    (tmp_path / "out" / "measurements.json").unlink()
    shown = make("measurements", *inputs)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert json.loads(shown.stdout) == measurements


def test_make_reproduce_says_match_or_not(inputs: list[str], tmp_path: Path) -> None:
    if subprocess.run(
        ["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "parent", "attestation"]
    ).returncode:
        pytest.skip("uncommitted builder changes: the clone at HEAD would run other code")
    assert make("eif", *inputs).returncode == 0
    published = tmp_path / "out" / "measurements.json"
    done = make("reproduce", "COMMIT=HEAD", *inputs)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reproduces PCR0/1/2" in done.stdout
    tampered = json.loads(published.read_text())
    tampered["Measurements"]["PCR2"] = "00" * 48
    published.write_text(json.dumps(tampered))
    done = make("reproduce", "COMMIT=HEAD", *inputs)
    assert done.returncode != 0
    assert "PCR2 DIFFER" in done.stdout and "does NOT reproduce" in done.stdout
    assert "PCR0 DIFFER" not in done.stdout


def test_make_reproduce_needs_a_commit(inputs: list[str]) -> None:
    done = make("reproduce", *inputs)
    assert done.returncode != 0 and "set COMMIT=" in done.stdout


def test_reproduce_refuses_blobs_that_differ_from_the_statement(tmp_path: Path) -> None:
    import sys

    from eif_build_helpers import run_cli, signing_pair

    blobs = make_blobs(tmp_path / "blobs")
    rootfs = make_rootfs(tmp_path / "rootfs.tar", SIMPLE_ROOTFS)
    key, cert = signing_pair(tmp_path)
    out = tmp_path / "app.eif"
    done = run_cli(
        "parent", "eif", "build", "--rootfs-tar", str(rootfs), "--blobs", str(blobs),
        "--output", str(out), "--cmd", '["/a"]', "--measurements", str(tmp_path / "m.json"),
        "--provenance-key", str(key), "--provenance-cert", str(cert),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    other = make_blobs(tmp_path / "other-blobs", kernel=b"PATCHED")
    done = subprocess.run(
        [sys.executable, "-m", "parent.eif.reproduce", "--commit", "HEAD",
         "--measurements", str(tmp_path / "m.json"), "--blobs", str(other),
         "--rootfs-tar", str(rootfs), "--cmd", '["/a"]',
         "--statement", f"{out}.intoto.json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "blob bzImage differs from the published build's" in done.stderr
