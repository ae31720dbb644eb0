"""What a build of Dockerfile.enclave cannot check: a pinned base, pinned runtime dependencies.

The build itself, its reproducibility and the running image are tested in test_image.py.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.enclave"
REQUIREMENTS = ROOT / "enclave" / "requirements.txt"
BUILD_REQUIREMENTS = ROOT / "image" / "build-requirements.txt"
DIGEST_RE = re.compile(r"@sha256:[0-9a-f]{64}$")
RUNTIME_DEPS = {"cbor2", "cryptography", "boto3", "asn1crypto"}
# import name -> distribution, for the third-party imports of attestation/ and enclave/
IMPORT_TO_DIST = {
    "cbor2": "cbor2",
    "cryptography": "cryptography",
    "boto3": "boto3",
    "botocore": "botocore",
    "asn1crypto": "asn1crypto",
    "pycose": "pycose",
    "yaml": "pyyaml",
    "aiohttp": "aiohttp",
}


def test_base_image_pinned_by_digest() -> None:
    """The default base is fixed by digest (a build would happily use a moving tag)."""
    (image,) = re.findall(r"^ARG BASE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert image.startswith("python:3.11-slim-bookworm@sha256:")
    assert DIGEST_RE.search(image), f"base not pinned by digest: {image}"


def _pins(path: Path) -> dict[str, str]:
    text = path.read_text().replace("\\\n", " ")
    reqs = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *hashes = line.split("--hash=")
        name, _, version = spec.strip().partition("==")
        assert version, f"not an exact pin: {spec}"
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h.strip()) for h in hashes)
        reqs[name.lower()] = version
    return reqs


def test_requirements_pinned_with_hashes() -> None:
    reqs = _pins(REQUIREMENTS)
    assert set(reqs) >= RUNTIME_DEPS
    assert list(reqs) == sorted(reqs)
    assert not {"aiohttp", "pyyaml", "moto", "pytest", "pip"} & set(reqs)
    assert set(_pins(BUILD_REQUIREMENTS)) == {"pip"}  # build stage only


def _third_party_imports(package: Path) -> set[str]:
    found = set()
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in IMPORT_TO_DIST:
                    found.add(IMPORT_TO_DIST[top])
    return found


def test_every_third_party_import_of_the_image_code_is_installed() -> None:
    wanted = _third_party_imports(ROOT / "attestation") | _third_party_imports(ROOT / "enclave")
    pinned = {
        line.split("==")[0].strip().lower()
        for line in REQUIREMENTS.read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert wanted <= pinned, f"imported but not in enclave/requirements.txt: {wanted - pinned}"
