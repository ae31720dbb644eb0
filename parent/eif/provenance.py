"""Write the signed build statement next to the EIF (checked by ``python -m attestation
provenance verify``; format in :mod:`attestation.provenance`)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from attestation.provenance import PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE, pae

from .build import BuildInputs, BuildResult, builder_version
from .errors import EifBuildError
from .signing import Signer, load_certificate

BUILD_TYPE = "urn:nitro-toolkit:eif-build:v1"
BUILDER_ID = "urn:nitro-toolkit:python-m-parent-eif-build"
GIT_TIMEOUT_S = 10.0
MAX_WHEELS = 10_000


@dataclass(frozen=True)
class SourceInfo:
    """Where the build came from (recorded as given; empty when unknown)."""

    repository: str = ""
    commit: str = ""
    base_image: str = ""  # e.g. debian@sha256:…
    wheels: Mapping[str, str] | None = None  # file name -> sha256


def git_source(directory: Path = Path(".")) -> tuple[str, str]:
    """(origin URL or the directory, HEAD commit) of the git checkout, or empty strings."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", "-C", str(directory), *args],
                capture_output=True, timeout=GIT_TIMEOUT_S, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.decode("utf-8", "replace").strip() if out.returncode == 0 else ""

    return public_url(git("config", "--get", "remote.origin.url")), git("rev-parse", "HEAD")


def public_url(url: str) -> str:
    """The URL without credentials (``https://user:token@host/x`` -> ``https://host/x``)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return url


def wheel_hashes(path: Path) -> dict[str, str]:
    """sha256 of every ``*.whl`` in a directory, or the ``--hash=sha256:`` pins of a
    requirements file (``name==version --hash=sha256:…``)."""
    out: dict[str, str] = {}
    if path.is_dir():
        for wheel in sorted(path.glob("*.whl"))[:MAX_WHEELS]:
            out[wheel.name] = hashlib.sha256(wheel.read_bytes()).hexdigest()
        return out
    try:
        text = path.read_text()
    except OSError as exc:
        raise EifBuildError("usage", f"cannot read wheels list {path}: {exc.strerror}") from exc
    for line in text.replace("\\\n", " ").splitlines():
        tokens = line.split("#", 1)[0].split() if "--hash" not in line else line.split()
        requirement = next((t for t in tokens if not t.startswith("-")), "")
        for token in tokens:
            if token.startswith("--hash=sha256:"):
                value = token.split(":", 1)[1]
                out[f"{requirement} sha256:{value[:12]}"] = value
    return dict(sorted(out.items()))


def statement(result: BuildResult, inputs: BuildInputs, source: SourceInfo) -> dict[str, Any]:
    """The in-toto Statement v1 with a SLSA-provenance-shaped predicate."""
    pcrs = {f"PCR{i}": v.hex() for i, v in sorted(result.pcrs.items())}
    deps: list[dict[str, Any]] = []
    for name, digest in result.inputs.items():
        algo, _, value = digest.partition(":")
        deps.append({"name": name, "digest": {algo: value}})
    if source.base_image:
        ref, _, digest = source.base_image.partition("@")
        algo, _, value = digest.partition(":")
        entry: dict[str, Any] = {"name": "base-image", "uri": ref}
        if value:
            entry["digest"] = {algo: value}
        deps.append(entry)
    for name, sha in sorted((source.wheels or {}).items()):
        deps.append({"name": f"wheel:{name}", "digest": {"sha256": sha}})
    built = datetime.fromtimestamp(inputs.epoch, UTC).isoformat()
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": result.path.name, "digest": {"sha384": result.sha384}, "annotations": pcrs}
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "source": {"repository": source.repository, "commit": source.commit},
                    "cmd": list(inputs.cmd),
                    "envNames": sorted({e.partition("=")[0] for e in inputs.env}),
                },
                "internalParameters": {"SOURCE_DATE_EPOCH": inputs.epoch},
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"nitro-toolkit": builder_version()}},
                "metadata": {"startedOn": built, "finishedOn": built},
            },
        },
    }


def envelope(payload: Mapping[str, Any], signer: Signer) -> dict[str, Any]:
    """A DSSE envelope around ``payload``, signed by ``signer`` (its certificate included)."""
    from attestation.provenance import key_id

    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    cert = load_certificate(signer.certificate_pem)
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(body).decode(),
        "signatures": [
            {
                "keyid": key_id(cert.public_key()),
                "sig": base64.b64encode(signer.sign_der(pae(PAYLOAD_TYPE, body))).decode(),
                "cert": cert.public_bytes(serialization.Encoding.PEM).decode(),
            }
        ],
    }


def write(path: Path, value: Mapping[str, Any]) -> None:
    try:
        path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise EifBuildError("io", f"cannot write {path}: {exc.strerror}") from exc


__all__ = ["SourceInfo", "envelope", "git_source", "statement", "wheel_hashes", "write"]
