"""Flatten a Docker image through a running daemon: ``docker export`` plus its config.

The daemon is used only if ``docker info`` answers; this module never starts or stops one.
nitro-cli's rule for the command: the image's CMD wins, ENTRYPOINT only when there is no CMD
(``enclave_build/src/docker.rs extract_image``); the image's ENV goes to the env file.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EifBuildError
from .limits import DEFAULT_LIMITS, BuildLimits

DOCKER = "docker"
ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
INFO_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ImageConfig:
    """What the EIF takes from ``docker image inspect``."""

    image_id: str
    repo_digests: tuple[str, ...]
    arch: str  # x86_64 | aarch64
    cmd: tuple[str, ...]
    env: tuple[str, ...]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            [DOCKER, *args],
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise EifBuildError("docker", "the docker client is not installed") from None
    except subprocess.TimeoutExpired:
        raise EifBuildError(
            "docker", f"`docker {args[0]}` took longer than {timeout:.0f} s"
        ) from None


def _check(result: subprocess.CompletedProcess[bytes], what: str) -> bytes:
    if result.returncode != 0:
        detail = result.stderr.decode("utf-8", "replace").strip()[:500]
        raise EifBuildError("docker", f"{what} failed: {detail}")
    return result.stdout


def daemon_answers() -> bool:
    """True when ``docker info`` answers (a daemon runs and we may use it)."""
    try:
        return _run(["info", "--format", "{{.ServerVersion}}"], INFO_TIMEOUT_S).returncode == 0
    except EifBuildError:
        return False


def select_cmd(config: dict[str, Any]) -> list[str]:
    """nitro-cli's rule: CMD if set, else ENTRYPOINT, else nothing."""
    cmd, entrypoint = config.get("Cmd"), config.get("Entrypoint")
    if cmd:
        return [str(c) for c in cmd]
    if entrypoint:
        return [str(c) for c in entrypoint]
    return []


def inspect(image: str, limits: BuildLimits = DEFAULT_LIMITS) -> ImageConfig:
    out = _check(_run(["image", "inspect", image], limits.docker_timeout_s), "docker image inspect")
    try:
        data = json.loads(out)[0]
        config = data.get("Config") or {}
        arch = ARCHES.get(data.get("Architecture", ""), data.get("Architecture", ""))
        return ImageConfig(
            image_id=str(data["Id"]),
            repo_digests=tuple(str(d) for d in data.get("RepoDigests") or ()),
            arch=arch,
            cmd=tuple(select_cmd(config)),
            env=tuple(str(e) for e in config.get("Env") or ()),
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise EifBuildError("docker", f"unexpected `docker image inspect` output: {exc}") from exc


def export(image: str, dest: Path, limits: BuildLimits = DEFAULT_LIMITS) -> None:
    """Write the image's flattened filesystem to ``dest`` (a tar), via a created container."""
    # a command is given so images without CMD/ENTRYPOINT can be created; it never runs
    created = _check(_run(["create", image, "/"], limits.docker_timeout_s), "docker create")
    container = created.decode().strip()
    try:
        _check(
            _run(["export", "--output", str(dest), container], limits.docker_timeout_s),
            "docker export",
        )
    finally:
        _run(["rm", "--force", container], limits.docker_timeout_s)
