"""Fixtures the proxy and client tests share: a TestPKI and a simulated-vsock directory."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from attestation import TestPKI


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.generate()


@pytest.fixture
def sim_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh simulated-vsock directory, also set as NITRO_VSOCK_SIM_DIR for the test."""
    with tempfile.TemporaryDirectory(prefix="vsock-") as d:
        path = os.path.join(d, "v")
        monkeypatch.setenv("NITRO_VSOCK_SIM_DIR", path)
        yield path
