"""The enclave image, built for real by `make image` and run (issue 11).

Needs a Docker daemon (`.ci/run` starts one). Without one every test here skips with the
reason, except under ``CI=true``, where that is a failure. The base is the pinned
python:3.11-slim-bookworm when the daemon has it, else the Debian stand-in of `make
base-image` (or ``NITRO_IMAGE_BASE``). Two ``--no-cache`` builds of this checkout must give the
same flattened filesystem (tests/build/image_fs.py: every path, type, mode, owner, mtime and
content) and the same layers; a BuildKit build (cache allowed: a cached build must not keep
files of an older commit) must give the same filesystem and layers too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_fs import Entry, digest, flatten, save
from image_imports import IMPORT_ALL

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 900
RUN_TIMEOUT_S = 120
NO_NSM_EXIT_S = 30
"""Bound on "exits at once" when neither vsock nor /dev/nsm is there (container start included)."""
APP_UID = 10001
TAG = f"nitro-toolkit-image-test-{os.getpid()}"  # parallel runs never share tags
ADDED_TREES = ("/app/attestation", "/app/enclave", "/opt/enclave/site-packages")
ADDED_FILES = {"/etc/passwd", "/etc/group", "/opt/enclave/source-date-epoch"}
ADDED_DIRS = {"/", "/app", "/etc", "/opt", "/opt/enclave"}

pytestmark = [pytest.mark.integration, pytest.mark.timeout(4 * BUILD_TIMEOUT_S)]


def docker_unavailable() -> str | None:
    """Why the image tests cannot run here, or None."""
    if shutil.which("docker") is None:
        return "the docker client is not installed (apt-get install docker.io)"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    if info.returncode != 0:
        return (
            "no Docker daemon answers (.ci/run starts one; or: dockerd &): "
            + (info.stderr.strip().splitlines() or ["?"])[-1]
        )
    return None


def _run(argv: list[str], timeout: float = RUN_TIMEOUT_S, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def _docker_run(image: str, *args: str, opts: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return _run(["docker", "run", "--rm", "--network", "none", *opts, image, *args])


def _base() -> str:
    if os.environ.get("NITRO_IMAGE_BASE"):
        return os.environ["NITRO_IMAGE_BASE"]
    text = (ROOT / "Dockerfile.enclave").read_text()
    pinned = next(
        line[len("ARG BASE=") :] for line in text.splitlines() if line.startswith("ARG BASE=")
    )
    if _run(["docker", "image", "inspect", pinned]).returncode == 0:
        return pinned
    made = _run(["image/base-image.sh"], timeout=BUILD_TIMEOUT_S, cwd=ROOT)
    assert made.returncode == 0, made.stderr[-3000:]
    return made.stdout.strip()


def _buildkit_client() -> str | None:
    """A docker client that builds with BuildKit (buildx, or a pre-23 client's own BuildKit)."""
    if _run(["docker", "buildx", "version"]).returncode == 0:
        return "docker"
    for client in ("docker", "/usr/bin/docker"):
        if shutil.which(client) is None:
            continue
        v = _run([client, "version", "--format", "{{.Client.Version}}"])
        major = v.stdout.strip().split(".")[0]
        if v.returncode == 0 and major.isdigit() and int(major) < 23:
            return client
    return None


@dataclass
class Built:
    base: str
    tags: list[str]
    epoch: str  # SOURCE_DATE_EPOCH of every build in this run (commits made meanwhile don't count)
    seconds: dict[str, float] = field(default_factory=dict)
    saved: dict[str, Path] = field(default_factory=dict)
    files: dict[str, dict[str, Entry]] = field(default_factory=dict)

    def fs(self, tag: str) -> dict[str, Entry]:
        if tag not in self.files:
            self.files[tag] = flatten(self.saved[tag])
        return self.files[tag]


def make_image(
    tag: str, base: str, epoch: str, *flags: str, env: dict[str, str] | None = None
) -> float:
    started = time.monotonic()
    proc = _run(
        [
            "make",
            "--no-print-directory",
            "-o",
            ".venv/.installed",
            "image",
            f"IMAGE={tag}",
            f"BASE_IMAGE={base}",
            f"SOURCE_DATE_EPOCH={epoch}",
            f"DOCKER_BUILD_FLAGS={' '.join(flags)}",
        ],
        timeout=BUILD_TIMEOUT_S,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, f"make image failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return time.monotonic() - started


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    reason = docker_unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"image tests cannot run under CI=true: {reason}")
        pytest.skip(f"image NOT built: {reason}")
    tmp = tmp_path_factory.mktemp("image")
    started = time.monotonic()
    epoch = _run(["git", "log", "-1", "--format=%ct"], cwd=ROOT).stdout.strip() or "0"
    result = Built(base=_base(), tags=[f"{TAG}:a", f"{TAG}:b"], epoch=epoch)
    result.seconds["base"] = time.monotonic() - started
    try:
        for tag in result.tags:
            result.seconds[tag] = make_image(tag, result.base, result.epoch, "--no-cache")
        for tag in [*result.tags, result.base]:
            result.saved[tag] = save(tag, tmp / (tag.replace(":", "_").replace("/", "_") + ".tar"))
        print(f"\nimage build seconds: {result.seconds}")
        yield result
    finally:
        for tag in [*result.tags, f"{TAG}:buildkit"]:
            _run(["docker", "image", "rm", "--force", tag])
        # the legacy builder keeps each build stage as an untagged image (~190 MB)
        _run(["docker", "image", "prune", "--force", "--filter", "label=nitro-toolkit.stage=build"])


def _differences(a: dict[str, Entry], b: dict[str, Entry], limit: int = 15) -> list[str]:
    out = []
    for path in sorted(set(a) | set(b)):
        if a.get(path) != b.get(path):
            out.append(f"{path}: {a.get(path)} != {b.get(path)}")
    return out[:limit]


def test_two_no_cache_builds_give_the_same_filesystem(built: Built) -> None:
    a, b = (built.fs(tag) for tag in built.tags)
    print(f"\nflattened filesystem digests: {digest(a)} {digest(b)} ({len(a)} paths)")
    assert digest(a) == digest(b), "two --no-cache builds differ in files:\n" + "\n".join(
        _differences(a, b)
    )


def _layers(image: str) -> list[str]:
    out = _run(["docker", "image", "inspect", "--format", '{{join .RootFS.Layers " "}}', image])
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_two_no_cache_builds_give_the_same_layers(built: Built) -> None:
    base_layers = _layers(built.base)
    a, b = (_layers(tag) for tag in built.tags)
    print(f"\napp layer: {a[-1]}")
    assert a[: len(base_layers)] == base_layers and len(a) == len(base_layers) + 1, (
        "the image should be its base plus exactly one layer"
    )
    assert a == b, (
        "same files, but the layer tarballs differ (docker image inspect .RootFS.Layers): "
        f"{a[-1]} != {b[-1]}"
    )


def test_buildkit_gives_the_same_filesystem_and_layers(built: Built, tmp_path: Path) -> None:
    client = _buildkit_client()
    if client is None:
        reason = "no docker client here builds with BuildKit (no buildx, no client < 23)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    tag = f"{TAG}:buildkit"
    env = dict(os.environ, DOCKER_BUILDKIT="1", DOCKER=client)
    make_image(tag, built.base, built.epoch, env=env)
    files = flatten(save(tag, tmp_path / "buildkit.tar"))
    legacy = built.fs(built.tags[0])
    assert digest(files) == digest(legacy), "BuildKit and the legacy builder differ:\n" + "\n".join(
        _differences(legacy, files)
    )
    assert _layers(tag) == _layers(built.tags[0]), "same files, but BuildKit's layers differ"


def _source_files(package: str) -> set[str]:
    return {
        "/app/" + str(p.relative_to(ROOT))
        for p in (ROOT / package).rglob("*")
        if "__pycache__" not in p.parts and p.suffix != ".pyc" and ".egg-info" not in str(p)
    }


def test_the_image_adds_only_the_app_its_dependencies_and_the_user(built: Built) -> None:
    image, base = built.fs(built.tags[0]), built.fs(built.base)
    changed = {p for p in image if image[p] != base.get(p)}
    assert not set(base) - set(image), (
        f"removed from the base: {sorted(set(base) - set(image))[:10]}"
    )
    stray = {
        p
        for p in changed - ADDED_FILES - ADDED_DIRS
        if not any(p == t or p.startswith(t + "/") for t in ADDED_TREES)
    }
    assert not stray, f"unexpected paths in the image: {sorted(stray)[:20]}"
    assert {p for p in image if p.startswith("/app/")} == (
        _source_files("attestation")
        | _source_files("enclave")
        | {"/app/attestation", "/app/enclave"}
    )
    for p in changed:
        assert "__pycache__" not in p and not p.endswith(".pyc"), p
        assert image[p].uid == 0 and image[p].gid == 0, p
    for leftover in ("/.dockerenv", "/etc/mtab", "/etc/hosts", "/etc/resolv.conf", "/root/.cache"):
        assert image.get(leftover) == base.get(leftover), leftover
    assert not any(p.startswith("/wheels") or p.startswith("/out") for p in image)


def test_added_files_have_the_commit_time(built: Built) -> None:
    image, base = built.fs(built.tags[0]), built.fs(built.base)
    for path, entry in image.items():
        if entry != base.get(path):
            assert entry.mtime == float(built.epoch), (path, entry.mtime, built.epoch)


def test_the_user_is_not_root(built: Built) -> None:
    user = _run(["docker", "image", "inspect", "--format", "{{.Config.User}}", built.tags[0]])
    assert user.stdout.strip() == "enclave"
    ids = _docker_run(built.tags[0], "id", "-u")
    assert ids.returncode == 0 and ids.stdout.strip() == str(APP_UID), ids


def test_help_exits_0(built: Built) -> None:
    for argv in (
        ["python3", "-m", "enclave", "--help"],
        ["/bin/sh", "/app/enclave/entrypoint.sh", "--help"],
    ):
        proc = _docker_run(built.tags[0], *argv)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "--app" in proc.stdout


@pytest.mark.parametrize("user", ["enclave", "0"])
def test_without_nsm_it_exits_at_once_with_a_clear_message(built: Built, user: str) -> None:
    started = time.monotonic()
    proc = _docker_run(built.tags[0], opts=("--user", user))  # the image's CMD
    elapsed = time.monotonic() - started
    assert proc.returncode == 6, (proc.returncode, proc.stderr[-2000:])
    assert "no /dev/nsm: not inside a Nitro Enclave" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < NO_NSM_EXIT_S


PROBE = """
import os, sys
print("probe", os.getuid(), os.geteuid(), os.getgid(), sorted(os.getgroups()), flush=True)
sys.exit(0)
"""


def test_started_as_root_it_drops_to_the_app_user(built: Built, tmp_path: Path) -> None:
    """nitro-cli starts CMD as root; the entrypoint must run the app as `enclave` (10001)."""
    (tmp_path / "uidprobe.py").write_text(PROBE)
    tmp_path.chmod(0o755)
    (tmp_path / "uidprobe.py").chmod(0o644)
    proc = _docker_run(
        built.tags[0],
        "/bin/sh",
        "/app/enclave/entrypoint.sh",
        "--app",
        "uidprobe:app",
        opts=(
            "--user",
            "0",
            "-v",
            f"{tmp_path}:/probe:ro",
            "-e",
            "PYTHONPATH=/app:/opt/enclave/site-packages:/probe",
            "-e",
            "NITRO_NSM_SOCKET=/probe/none",
        ),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"probe {APP_UID} {APP_UID} {APP_UID} [{APP_UID}]" in proc.stdout, proc.stdout




def test_every_module_of_the_app_imports_in_the_image(built: Built) -> None:
    proc = _docker_run(built.tags[0], "python3", "-c", IMPORT_ALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip()) > 20


KMS_ONLY = """
import boto3, botocore.exceptions
kw = dict(region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
kms = boto3.client("kms", endpoint_url="http://127.0.0.1:9", **kw)
assert kms.meta.service_model.operation_model("Decrypt").input_shape.members["Recipient"]
try:
    boto3.client("s3", **kw)
except botocore.exceptions.UnknownServiceError:
    print("trimmed")
"""


def test_kms_client_works_and_other_models_are_gone(built: Built) -> None:
    proc = _docker_run(built.tags[0], "python3", "-c", KMS_ONLY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "trimmed"
