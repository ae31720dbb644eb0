"""Fixtures of the attestation tests: one TestPKI per session and the real vectors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from attestation_helpers import NOW, Vector

from attestation import TestPKI


@pytest.fixture(scope="session")
def pki() -> TestPKI:
    """A chain that started two days ago, so tests can sign documents in the recent past."""
    return TestPKI.generate(not_before=NOW - timedelta(days=2))


@pytest.fixture(scope="session")
def vectors(vectors_dir: Path, manifest: dict) -> list[Vector]:
    out = []
    for facts in manifest["attestation_documents"]:
        out.append(Vector(facts["file"], (vectors_dir / facts["file"]).read_bytes(), facts))
    assert out, "MANIFEST.json lists no attestation documents"
    return out


@pytest.fixture(scope="session")
def genuine(vectors: list[Vector]) -> list[Vector]:
    return [v for v in vectors if v.genuine]


@pytest.fixture(scope="session")
def forged(vectors: list[Vector]) -> list[Vector]:
    return [v for v in vectors if not v.genuine]
