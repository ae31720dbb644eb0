"""Size of what Dockerfile.enclave adds on top of its base image, measured without Docker.

Installs ``enclave/requirements.txt`` exactly as the Dockerfile does (wheels only, hashes
required, no cache, no byte code) into a fresh virtual environment, copies ``attestation/``
and ``enclave/`` like its COPY lines, and reports the bytes of each part next to the whole
installed toolkit (``pip install .`` with every dependency: what a non-minimal image would
carry), before and after the image's trim of unused AWS service models.
Run: ``.venv/bin/python bench/image.py``. Prints Markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIP_TIMEOUT_S = 300
BASELINE_DISTS = {
    "pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth"
}


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _site_packages(venv: Path) -> Path:
    rel = Path(sysconfig.get_path("purelib")).relative_to(sys.prefix)
    return venv / rel


def _installed_bytes(venv: Path, pip_args: list[str]) -> int:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    before = {p.name for p in _site_packages(venv).iterdir()}
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-cache-dir",
         "--no-compile", "--disable-pip-version-check", *pip_args],
        check=True, timeout=PIP_TIMEOUT_S,
    )
    site = _site_packages(venv)
    added = [p for p in site.iterdir() if p.name not in before and p.name not in BASELINE_DISTS]
    return sum(_tree_bytes(p) if p.is_dir() else p.stat().st_size for p in added)


def _baseline_bytes(venv: Path) -> int:
    site = _site_packages(venv)
    return sum(
        _tree_bytes(p) if p.is_dir() else p.stat().st_size
        for p in site.iterdir()
        if p.name in BASELINE_DISTS or p.name.startswith(("pip-", "setuptools-"))
    )


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        deps = _installed_bytes(
            base / "image",
            ["--no-deps", "--only-binary=:all:", "--require-hashes", "-r",
             str(ROOT / "enclave" / "requirements.txt")],
        )
        app = base / "app"
        for package in ("attestation", "enclave"):
            shutil.copytree(ROOT / package, app / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        code = _tree_bytes(app)
        trim = subprocess.run(
            [str(base / "image" / "bin" / "python"), "-m", "enclave._image_trim"],
            cwd=app, env={"PYTHONPATH": str(app), "PATH": "/usr/bin:/bin"},
            check=True, timeout=60, capture_output=True,
        )
        del trim
        trimmed = _tree_bytes(_site_packages(base / "image")) - _baseline_bytes(base / "image")
        full = _installed_bytes(base / "full", [str(ROOT)])
    mib = 1 << 20
    rows = [
        ("runtime dependencies (enclave/requirements.txt, wheels)", deps),
        ("the same after `python -m enclave._image_trim` (KMS model only)", trimmed),
        ("code: attestation/ + enclave/", code),
        ("**added by Dockerfile.enclave** (trimmed dependencies + code)", trimmed + code),
        ("for comparison: the whole toolkit with all its dependencies", full),
    ]
    print("| part of the enclave image (above the base) | MiB |")
    print("|---|---:|")
    for name, size in rows:
        print(f"| {name} | {size / mib:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
