"""Size of the enclave image, built for real, with and without the trim of AWS service models.

Builds Dockerfile.enclave twice with `make image` on one base: as shipped (``TRIM_AWS_MODELS=1``:
``python -m enclave._image_trim`` keeps only botocore's/boto3's KMS model) and as the baseline
without the trim (``TRIM_AWS_MODELS=0``), then reads the sizes the daemon reports (uncompressed
layers). The base is ``--base``, else the pinned base if the daemon has it, else the Debian
stand-in of ``make base-image``. Needs a Docker daemon.
Run: ``.venv/bin/python bench/image.py``. Prints Markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 900
MIB = 1 << 20


def _out(argv: list[str], timeout: float = 120) -> str:
    return subprocess.run(
        argv, capture_output=True, text=True, check=True, timeout=timeout, cwd=ROOT
    ).stdout.strip()


def _base() -> str:
    pinned = re.search(r"^ARG BASE=(\S+)$", (ROOT / "Dockerfile.enclave").read_text(), re.M)
    assert pinned
    inspect = ["docker", "image", "inspect", pinned[1]]
    if subprocess.run(inspect, capture_output=True, timeout=60).returncode == 0:
        return pinned[1]
    return _out(["image/base-image.sh"], timeout=BUILD_TIMEOUT_S)


def _build(tag: str, base: str, trim: bool) -> None:
    subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-o",
            ".venv/.installed",
            "image",
            f"IMAGE={tag}",
            f"BASE_IMAGE={base}",
            f"DOCKER_BUILD_FLAGS=--build-arg TRIM_AWS_MODELS={int(trim)}",
        ],
        check=True,
        timeout=BUILD_TIMEOUT_S,
        cwd=ROOT,
        capture_output=True,
    )


def _size(image: str) -> int:
    return int(_out(["docker", "image", "inspect", "--format", "{{.Size}}", image]))


FILE_BYTES = (
    "import os, sys; print(sum(os.lstat(os.path.join(d, f)).st_size"
    " for d, _, fs in os.walk(sys.argv[1]) for f in fs))"
)


def _du(image: str, path: str) -> int:
    """Bytes of the files under ``path`` in ``image`` (as layer sizes count them)."""
    return int(
        _out(
            ["docker", "run", "--rm", "--network", "none", image, "python3", "-c", FILE_BYTES, path]
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="base image (default: pinned if present, else stand-in)")
    args = parser.parse_args(argv)
    base = args.base or _base()
    trimmed, full = "nitro-toolkit-bench:trimmed", "nitro-toolkit-bench:untrimmed"
    try:
        _build(trimmed, base, trim=True)
        _build(full, base, trim=False)
        base_size, trimmed_size, full_size = _size(base), _size(trimmed), _size(full)
        site = "/opt/enclave/site-packages"
        rows = [
            (f"base `{base}`", base_size, base_size),
            ("image", full_size, trimmed_size),
            ("added above the base (one layer)", full_size - base_size, trimmed_size - base_size),
            (f"  of which `{site}`", _du(full, site), _du(trimmed, site)),
            (
                f"  of which `{site}/botocore/data`",
                _du(full, f"{site}/botocore/data"),
                _du(trimmed, f"{site}/botocore/data"),
            ),
            ("  of which `/app` (the code)", _du(full, "/app"), _du(trimmed, "/app")),
        ]
    finally:
        subprocess.run(
            ["docker", "image", "rm", "--force", trimmed, full], capture_output=True, timeout=120
        )
    print("| part | without trim (MiB) | with trim, as shipped (MiB) | trimmed / untrimmed |")
    print("|---|---:|---:|---:|")
    for name, before, after in rows:
        print(f"| {name} | {before / MIB:.1f} | {after / MIB:.1f} | {after / before:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
