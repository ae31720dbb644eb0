"""Shared fixtures: where the real AWS vectors live."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _vectors_dir() -> Path | None:
    env = os.environ.get("NITRO_VECTORS")
    candidates = [Path(env)] if env else [ROOT.parent / "shared" / "vectors"]
    for c in candidates:
        if (c / "MANIFEST.json").is_file():
            return c
    return None


VECTORS_DIR = _vectors_dir()


def _missing_vectors() -> None:
    reason = (
        "real AWS vectors not found at ../shared/vectors (set NITRO_VECTORS=DIR to point at them)"
    )
    if os.environ.get("NITRO_REQUIRE_VECTORS") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The folder holding MANIFEST.json, the real documents and the AWS root."""
    if VECTORS_DIR is None:
        _missing_vectors()
    assert VECTORS_DIR is not None
    return VECTORS_DIR


@pytest.fixture(scope="session")
def manifest(vectors_dir: Path) -> dict:
    """MANIFEST.json of the vectors folder, parsed."""
    return json.loads((vectors_dir / "MANIFEST.json").read_text())
