"""Build Enclave Image Files without nitro-cli: reproducible, optionally signed, with a signed
provenance statement. ``python -m parent eif build --help``; see docs/eif-build.md."""

from __future__ import annotations

from .build import BuildInputs, BuildResult, build
from .errors import EifBuildError
from .limits import BuildLimits

__all__ = ["BuildInputs", "BuildLimits", "BuildResult", "EifBuildError", "build"]
