"""Whole-process start-up cost of ``python -m attestation verify``, against a bare interpreter.

Each round runs, back to back and in alternating order, ``python -c pass`` (the baseline) and
``python -m attestation verify DOC --at document`` on one document: a real AWS document from
../shared/vectors when present, else a TestPKI document with its root. The table gives the
median wall time of each and the median of the per-round ratios (target: at most 2.5x).

Run: ``.venv/bin/python bench/startup.py [--rounds N]``. It stops by itself (a few seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 30
TARGET_RATIO = 2.5
RUN_TIMEOUT_S = 30


def _vector() -> tuple[Path, list[str]] | None:
    env = os.environ.get("NITRO_VECTORS")
    base = Path(env) if env else ROOT.parent / "shared" / "vectors"
    docs = sorted(base.glob("*.cbor")) if (base / "MANIFEST.json").is_file() else []
    return (docs[0], []) if docs else None


def _testpki(tmp: Path) -> tuple[Path, list[str]]:
    sys.path.insert(0, str(ROOT))
    from attestation import TestPKI

    pki = TestPKI.generate()
    doc = tmp / "doc.cbor"
    module_id = "i-0123456789abcdef0-enc0123456789abcd"
    doc.write_bytes(pki.sign_document(pcrs={0: bytes(48)}, module_id=module_id))
    root = tmp / "root.pem"
    root.write_bytes(pki.root_pem)
    return doc, ["--root", str(root), "--allow-debug"]


def _time(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=RUN_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{argv!r} failed ({proc.returncode}): {proc.stderr.decode()[-400:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found = _vector() or _testpki(Path(tmp))
        doc, extra = found
        bare = [sys.executable, "-c", "pass"]
        verify = [sys.executable, "-m", "attestation", "verify", str(doc), "--at", "document"]
        verify += extra
        _time(bare), _time(verify)  # warm the page cache
        bares: list[float] = []
        verifies: list[float] = []
        ratios: list[float] = []
        for i in range(args.rounds):
            if i % 2:
                v, b = _time(verify), _time(bare)
            else:
                b, v = _time(bare), _time(verify)
            bares.append(b)
            verifies.append(v)
            ratios.append(v / b)
    ratio = statistics.median(ratios)
    print(f"document: {doc.name}; {args.rounds} rounds; Python {sys.version.split()[0]}\n")
    print("| command | median ms | ratio |")
    print("|---|---:|---:|")
    print(f"| `python -c pass` | {statistics.median(bares) * 1e3:.1f} | 1.0x |")
    verb = "python -m attestation verify DOC --at document"
    print(f"| `{verb}` | {statistics.median(verifies) * 1e3:.1f} | {ratio:.2f}x |")
    print(f"\ntarget <= {TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
