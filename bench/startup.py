"""Whole-process start-up cost of ``python -m attestation verify``, against a bare interpreter.

Each round runs, back to back and in alternating order, ``python -c pass`` (the baseline) and
``python -m attestation verify DOC --at document`` on one document: a real AWS document from
../shared/vectors when present, else a TestPKI document with its root. The table gives the
median wall time of each with the median of the per-round ratios, and the least CPU time of
each with their ratio (target: at most 2.5x). On a busy machine the CPU ratio is the steadier:
contention only ever adds to CPU time, so the least of many runs is the cost itself.

Run: ``.venv/bin/python bench/startup.py [--rounds N]``. It stops by itself (a few seconds).
"""

from __future__ import annotations

import argparse
import os
import resource
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
FLOOR_IMPORTS = (
    "import argparse, json, dataclasses, cbor2, cryptography.x509.verification; "
    "from cryptography.hazmat.primitives.asymmetric import ec"
)
"""What verifying cannot avoid importing: the libraries it parses and checks with."""


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


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run; CPU time moves less with the machine's load."""
    cpu, start = _cpu(), time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=RUN_TIMEOUT_S)
    elapsed, used = time.perf_counter() - start, _cpu() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"{argv!r} failed ({proc.returncode}): {proc.stderr.decode()[-400:]}")
    return elapsed, used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found = _vector() or _testpki(Path(tmp))
        doc, extra = found
        bare = [sys.executable, "-c", "pass"]
        floor = [sys.executable, "-c", FLOOR_IMPORTS]
        verify = [sys.executable, "-m", "attestation", "verify", str(doc), "--at", "document"]
        verify += extra
        _time(bare), _time(verify), _time(floor)  # warm the page cache
        bares: list[tuple[float, float]] = []
        verifies: list[tuple[float, float]] = []
        floors: list[tuple[float, float]] = []
        for i in range(args.rounds):
            order = [(bare, bares), (floor, floors), (verify, verifies)]
            for argv, out in order[i % 3 :] + order[: i % 3]:
                out.append(_time(argv))
    def ratio(runs: list[tuple[float, float]], i: int) -> float:
        if i == 1:  # CPU: the least of each (contention only ever adds)
            return min(r[1] for r in runs) / min(b[1] for b in bares)
        return statistics.median(r[i] / b[i] for r, b in zip(runs, bares, strict=True))

    wall, cpu = ratio(verifies, 0), ratio(verifies, 1)
    load = os.getloadavg()[0]
    print(f"document: {doc.name}; {args.rounds} rounds; Python {sys.version.split()[0]}; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs\n")
    print("| command | median wall ms | least CPU ms | wall ratio | CPU ratio |")
    print("|---|---:|---:|---:|---:|")

    def ms(runs: list[tuple[float, float]], i: int) -> str:
        pick = min if i == 1 else statistics.median
        return f"{pick(r[i] for r in runs) * 1e3:.1f}"

    print(f"| `python -c pass` | {ms(bares, 0)} | {ms(bares, 1)} | 1.0x | 1.0x |")
    print(f"| floor: `python -c '{FLOOR_IMPORTS}'` | {ms(floors, 0)} | {ms(floors, 1)} | "
          f"{ratio(floors, 0):.2f}x | {ratio(floors, 1):.2f}x |")
    verb = "python -m attestation verify DOC --at document"
    print(f"| `{verb}` | {ms(verifies, 0)} | {ms(verifies, 1)} | {wall:.2f}x | {cpu:.2f}x |")
    met = "met" if min(wall, cpu) <= TARGET_RATIO else "NOT met"
    print(f"\ntarget <= {TARGET_RATIO}x (CPU ratio on a loaded machine, wall when idle): {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
