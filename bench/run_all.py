"""Run every benchmark script in bench/ in turn and print their tables (see docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = ["verify.py", "transport.py", "kms.py", "attested_kms.py", "proxy.py", "image.py",
           "ingress.py", "eif_build.py"]
TIMEOUT_S = 300


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = []
    for name in BENCHES:
        script = here / name
        if not script.exists():
            print(f"## {name}: not present", flush=True)
            continue
        print(f"\n## {name}\n", flush=True)
        try:
            rc = subprocess.run([sys.executable, str(script)], timeout=TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            rc = -1
            print(f"{name}: stopped after {TIMEOUT_S} s")
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
