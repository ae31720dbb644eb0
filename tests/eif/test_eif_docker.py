"""`--docker-image`: flatten through the Docker daemon (`docker export`) and take CMD/ENV from
`docker image inspect`.

The first test uses a real daemon when `docker info` answers (it never starts or stops one) and
builds a `FROM scratch` image, so no registry is needed. The second runs the same flow against a
stand-in `docker` program on PATH (it answers `info`, `image inspect`, `create`, `export`, `rm`
from files), so the flow is exercised where no daemon runs; it is not a Docker daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from eif_build_helpers import SIMPLE_ROOTFS, make_blobs, make_rootfs, parse_newc, ramdisks, run_cli

from attestation.eif import read_eif


def _daemon_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.skipif(not _daemon_answers(), reason="no Docker daemon answers (docker info)")
def test_real_daemon_builds_the_same_eif_twice(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "hello").write_bytes(b"#!/hello\n")
    (context / "Dockerfile").write_text(
        "FROM scratch\nCOPY hello /hello\nENV GREETING=hi\n"
        'ENTRYPOINT ["/ignored"]\nCMD ["/hello"]\n'
    )
    tag = f"eif-builder-test:{uuid.uuid4().hex[:12]}"
    subprocess.run(["docker", "build", "-q", "-t", tag, str(context)], check=True, timeout=300,
                   capture_output=True)  # fmt: skip
    try:
        blobs = make_blobs(tmp_path / "blobs")
        outs = []
        for name in ("a", "b"):
            out = tmp_path / f"{name}.eif"
            done = run_cli("parent", "eif", "build", "--docker-image", tag, "--blobs", str(blobs),
                           "--output", str(out))  # fmt: skip
            assert done.returncode == 0, done.stderr
            outs.append(out.read_bytes())
        assert outs[0] == outs[1]
        members = {m.name: m for m in parse_newc(ramdisks(outs[0])[1])}
        assert members["cmd"].data == b"/hello\n"  # CMD wins over ENTRYPOINT
        assert b"GREETING=hi\n" in members["env"].data
        assert members["rootfs/hello"].data == b"#!/hello\n"
        meta = read_eif(tmp_path / "a.eif").metadata
        assert meta is not None and meta["DockerInfo"]["Id"].startswith("sha256:")
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60, check=False)


STAND_IN = r'''#!PYTHON
"""A stand-in for the docker CLI: answers from files in $STAND_IN_DIR."""
import json, os, shutil, sys
d = os.environ["STAND_IN_DIR"]
args = sys.argv[1:]
with open(os.path.join(d, "calls.log"), "a") as log:
    log.write(" ".join(args) + "\n")
if args[0] == "info":
    print("27.0.0"); sys.exit(0)
if args[:2] == ["image", "inspect"]:
    if args[2] != "app:1":
        print(f"Error: No such image: {args[2]}", file=sys.stderr); sys.exit(1)
    print(open(os.path.join(d, "inspect.json")).read()); sys.exit(0)
if args[0] == "create":
    print("c0ffee"); sys.exit(0)
if args[0] == "export":
    shutil.copy(os.path.join(d, "rootfs.tar"), args[args.index("--output") + 1]); sys.exit(0)
if args[0] == "rm":
    sys.exit(0)
sys.exit(2)
'''


def test_docker_flow_against_a_stand_in_cli(tmp_path: Path) -> None:
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(STAND_IN.replace("PYTHON", sys.executable))
    script.chmod(0o755)
    make_rootfs(tmp_path / "rootfs.tar", SIMPLE_ROOTFS)
    (tmp_path / "inspect.json").write_text(json.dumps([{
        "Id": "sha256:" + "ab" * 32, "RepoDigests": ["app@sha256:" + "cd" * 32],
        "Architecture": "amd64",
        "Config": {"Cmd": ["/app/main.py"], "Entrypoint": ["/ignored"],
                   "Env": ["PATH=/bin", "A=1"]},
    }]))  # fmt: skip
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STAND_IN_DIR": str(tmp_path)}
    blobs = make_blobs(tmp_path / "blobs")
    out = tmp_path / "app.eif"
    done = run_cli("parent", "eif", "build", "--docker-image", "app:1", "--blobs", str(blobs),
                   "--output", str(out), "--env", "A=2", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    members = {m.name: m for m in parse_newc(ramdisks(out.read_bytes())[1])}
    assert members["cmd"].data == b"/app/main.py\n"
    assert members["env"].data == b"PATH=/bin\nA=2\n"
    meta = read_eif(out).metadata
    assert meta is not None and meta["ImageVersion"] == "ab" * 32
    assert meta["CustomMetadata"]["Inputs"]["image"] == "sha256:" + "ab" * 32
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls[-1] == "rm --force c0ffee"  # the container is always removed
    missing = run_cli("parent", "eif", "build", "--docker-image", "nope:1", "--blobs", str(blobs),
                      "--output", str(tmp_path / "x.eif"), env=env)  # fmt: skip
    assert missing.returncode == 2 and "error (docker):" in missing.stderr
    # an arm64 image with an x86_64 kernel is refused
    inspect = json.loads((tmp_path / "inspect.json").read_text())
    inspect[0]["Architecture"] = "arm64"
    (tmp_path / "inspect.json").write_text(json.dumps(inspect))
    done = run_cli("parent", "eif", "build", "--docker-image", "app:1", "--blobs", str(blobs),
                   "--output", str(tmp_path / "y.eif"), env=env)  # fmt: skip
    assert done.returncode == 2 and "error (bad-blobs):" in done.stderr
