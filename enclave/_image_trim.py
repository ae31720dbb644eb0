"""Build-time step of Dockerfile.enclave: drop the AWS service models the enclave never loads.

botocore ships a JSON model for every AWS service; the enclave calls KMS only. With botocore
1.44.5 this removes 17.5 MiB of the 39.8 MiB the image adds above its base (22.2 MiB left;
``bench/image.py`` builds the image both ways, docs/benchmarks.md §6).
``python -m enclave._image_trim`` removes every other service's model directory from
botocore's and boto3's data folders, keeping the shared files (endpoints, partitions, retry
and default configuration). Run once in the build stage of Dockerfile.enclave, before the
files are copied into the image's single app layer, never at run time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

KEEP_SERVICES = frozenset({"kms"})
"""Service models the enclave loads."""


def data_dirs() -> list[Path]:
    """botocore's and boto3's model folders in this environment."""
    import boto3
    import botocore

    return [Path(botocore.__file__).parent / "data", Path(boto3.__file__).parent / "data"]


def trim(directories: Iterable[Path], keep: frozenset[str] = KEEP_SERVICES) -> int:
    """Remove the service folders not in ``keep``; returns the bytes freed."""
    freed = 0
    for directory in directories:
        for entry in sorted(directory.iterdir()):
            if entry.is_dir() and not entry.is_symlink() and entry.name not in keep:
                freed += sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
                shutil.rmtree(entry)
    return freed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enclave._image_trim", description=__doc__)
    parser.add_argument("--keep", action="append", default=[], metavar="SERVICE",
                        help="also keep this service's model (repeatable)")
    args = parser.parse_args(argv)
    freed = trim(data_dirs(), KEEP_SERVICES | set(args.keep))
    print(f"removed {freed / (1 << 20):.1f} MiB of unused AWS service models", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
