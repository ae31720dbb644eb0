"""A/B of attestation verification between two source trees, alternated in the same minutes.

    .venv/bin/python bench/ab_verify.py BASE_TREE [NEW_TREE] [--rounds 3]

BASE_TREE / NEW_TREE are checkouts of this repository (e.g. ``git archive REV | tar -x -C
/tmp/base``); NEW_TREE defaults to this one. Each round runs BASE, NEW, NEW, BASE in fresh
processes, each verifying the real AWS documents of ../shared/vectors (or $NITRO_VECTORS)
that verify at their own time: *warm* (one Verifier, chain cached; best of 7 passes of 10)
and *cold* (a new Verifier per document; best of 5 passes). Prints the median µs per
document for each tree and NEW / BASE (docs/benchmarks.md §14). Stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRIAL_TIMEOUT_S = 300

_TRIAL = r"""
import glob, json, os, sys, time
sys.path.insert(0, sys.argv[1])
from attestation import Policy, Verifier, parse_document
policy = Policy(allow_debug=True)
docs = []
warm = Verifier()
for path in sorted(glob.glob(os.path.join(sys.argv[2], "*.cbor"))):
    data = open(path, "rb").read()
    try:
        at = parse_document(data).datetime
        warm.verify(data, policy, at=at)
    except Exception:
        continue  # the negative vectors
    docs.append((data, at))
best_warm = best_cold = float("inf")
for _ in range(7):
    t = time.perf_counter()
    for _ in range(10):
        for data, at in docs:
            warm.verify(data, policy, at=at)
    best_warm = min(best_warm, (time.perf_counter() - t) / (10 * len(docs)))
for _ in range(5):
    t = time.perf_counter()
    for data, at in docs:
        Verifier().verify(data, policy, at=at)
    best_cold = min(best_cold, (time.perf_counter() - t) / len(docs))
print(json.dumps({"docs": len(docs), "warm_us": best_warm * 1e6, "cold_us": best_cold * 1e6}))
"""


def _vectors() -> Path:
    env = os.environ.get("NITRO_VECTORS")
    return Path(env) if env else ROOT.parent / "shared" / "vectors"


def _trial(tree: Path, vectors: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _TRIAL, str(tree), str(vectors)],
        capture_output=True, text=True, timeout=TRIAL_TIMEOUT_S, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("new", type=Path, nargs="?", default=ROOT)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    vectors = _vectors()
    if not (vectors / "MANIFEST.json").is_file():
        print(f"no vectors at {vectors} (set NITRO_VECTORS)", file=sys.stderr)
        return 2
    runs: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
    for _ in range(args.rounds):
        for name in ("base", "new", "new", "base"):
            runs[name].append(_trial(getattr(args, name), vectors))
    print(f"{runs['new'][0]['docs']} real documents, {args.rounds} rounds (B N N B)\n")
    print("| tree | warm µs/doc | cold µs/doc |\n|---|---:|---:|")
    med = {n: {k: statistics.median(r[k] for r in runs[n]) for k in ("warm_us", "cold_us")}
           for n in runs}
    for name in ("base", "new"):
        print(f"| {name} | {med[name]['warm_us']:,.0f} | {med[name]['cold_us']:,.0f} |")
    print(f"| new / base | {med['new']['warm_us'] / med['base']['warm_us']:.2f} | "
          f"{med['new']['cold_us'] / med['base']['cold_us']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
