"""Attestation verification throughput, per core, as ratios against baselines of the same run.

Cases: the real AWS documents of ../shared/vectors (checked at their own timestamp) and
TestPKI documents, each verified cold (a fresh Verifier per document: full chain) and warm
(one Verifier: verified CA and leaf signatures cached). Baselines measured here too:

* the floor of one P-384 ECDSA verification per document (what warm cannot beat) and of five
  (what cold cannot beat: four certificate signatures + the COSE signature);
* evervault-attestation-bindings (Rust, PyO3) on the same documents. It checks against the
  wall clock, so each document runs in a subprocess under libfaketime set to the document's
  time; its call then fails only at its final step (binding the document to a TLS
  certificate), after parsing, the chain and the COSE signature, so the time of one call is
  its validation cost.

Run: ``.venv/bin/python bench/verify.py`` (needs ``pip install evervault-attestation-bindings
==0.5.0`` and ``apt-get install faketime`` for the comparison; without them it says so).
Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cryptography  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.backends.openssl.backend import backend  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from attestation import Policy, TestPKI, Verifier, parse_document  # noqa: E402
from attestation._cose import raw_to_der, sig_structure  # noqa: E402

ROUNDS = 15  # short rounds, best of N: other processes share the machine
WARM_PASSES = 2
COLD_PASSES = 1
FLOOR_OPS = 40  # verifications per floor round, interleaved with every measured round
GENERATED_DOCS = 24
EVERVAULT_CALLS = 10
EVERVAULT_ROUNDS = 5
EVERVAULT_TIMEOUT_S = 60
ALLOW_DEBUG = Policy(allow_debug=True)


def vectors_dir() -> Path | None:
    env = os.environ.get("NITRO_VECTORS")
    path = Path(env) if env else ROOT.parent / "shared" / "vectors"
    return path if (path / "MANIFEST.json").is_file() else None


class Floor:
    """One P-384 ECDSA-SHA384 verification of a document-sized Sig_structure, re-measured
    between the rounds of every case so that both see the same machine load."""

    def __init__(self, sample: bytes) -> None:
        doc = parse_document(sample)
        key = x509.load_der_x509_certificate(doc.certificate).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        self._key = key
        self._message = sig_structure(doc.protected, doc.payload)
        self._signature = raw_to_der(doc.signature)
        self._algorithm = ec.ECDSA(hashes.SHA384())
        self.best = math.inf

    def round(self) -> None:
        key, sig, msg, alg = self._key, self._signature, self._message, self._algorithm
        start = time.perf_counter()
        for _ in range(FLOOR_OPS):
            key.verify(sig, msg, alg)
        self.best = min(self.best, (time.perf_counter() - start) / FLOOR_OPS)


def best_per_op(floor: Floor, fn: Callable[[], int], setup: Callable[[], None] | None = None):
    """Seconds per operation: best of ROUNDS runs of ``fn`` (which returns its op count)."""
    best = math.inf
    for _ in range(ROUNDS):
        floor.round()
        if setup is not None:
            setup()
        start = time.perf_counter()
        ops = fn()
        best = min(best, (time.perf_counter() - start) / ops)
    return best


def cold(floor: Floor, docs: Sequence[bytes], roots) -> float:
    def run() -> int:
        for _ in range(COLD_PASSES):
            for data in docs:
                Verifier(roots).verify(data, ALLOW_DEBUG, at="document")
        return COLD_PASSES * len(docs)

    return best_per_op(floor, run)


def warm(floor: Floor, docs: Sequence[bytes], roots) -> float:
    verifier = Verifier(roots)
    for data in docs:
        verifier.verify(data, ALLOW_DEBUG, at="document")

    def run() -> int:
        for _ in range(WARM_PASSES):
            for data in docs:
                verifier.verify(data, ALLOW_DEBUG, at="document")
        return WARM_PASSES * len(docs)

    return best_per_op(floor, run)


def warm_new_leaf(floor: Floor, docs: Sequence[bytes], warmup: bytes, roots) -> float:
    """CA certificates cached, but every document has a leaf never seen: 2 verifications."""
    verifier = Verifier(roots)

    def setup() -> None:
        verifier.clear_cache()
        verifier.verify(warmup, ALLOW_DEBUG, at="document")  # same CAs, another leaf

    def run() -> int:
        for data in docs:
            verifier.verify(data, ALLOW_DEBUG, at="document")
        return len(docs)

    return best_per_op(floor, run, setup)


_EVERVAULT_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import evervault_attestation_bindings as ev
    data = open(sys.argv[1], "rb").read()
    cert = bytes.fromhex(sys.argv[2])
    calls = int(sys.argv[3])
    def once():
        try:
            ev.attest_enclave(cert, [], data)
            return "accepted"
        except Exception as exc:
            return str(exc)
    message = once()  # warm-up (imports, first allocation)
    best = float("inf")
    for _ in range(int(sys.argv[4])):
        start = time.perf_counter()
        for _ in range(calls):
            once()
        best = min(best, (time.perf_counter() - start) / calls)
    print(json.dumps({"seconds": best, "message": message}))
    """
)
_FINAL_STEP_MARKERS = ("public key", "user data", "accepted")  # the TLS-binding step


def evervault(files: Sequence[Path]) -> tuple[float | None, str]:
    """Mean seconds per document for the Rust bindings, or (None, why not)."""
    try:
        import evervault_attestation_bindings  # noqa: F401
    except ImportError:
        return None, "not installed (pip install evervault-attestation-bindings==0.5.0)"
    faketime = shutil.which("faketime")
    if faketime is None:
        return None, "libfaketime not found (apt-get install faketime libfaketime)"
    times, reached = [], 0
    for path in files:
        doc = parse_document(path.read_bytes())
        when = datetime.fromtimestamp(math.ceil(doc.timestamp / 1000) + 1, UTC)
        env = {
            **os.environ,
            "TZ": "UTC",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
        cmd = [
            faketime,
            when.strftime("%Y-%m-%d %H:%M:%S"),
            sys.executable,
            "-c",
            _EVERVAULT_CHILD,
            str(path),
            doc.certificate.hex(),
            str(EVERVAULT_CALLS),
            str(EVERVAULT_ROUNDS),
        ]
        try:
            done = subprocess.run(
                cmd, capture_output=True, timeout=EVERVAULT_TIMEOUT_S, env=env, check=True
            )
            result = json.loads(done.stdout)
        except (subprocess.SubprocessError, ValueError, OSError) as exc:
            return None, f"could not run under faketime: {exc}"
        times.append(result["seconds"])
        if any(m in result["message"].lower() for m in _FINAL_STEP_MARKERS):
            reached += 1
    note = f"{reached}/{len(files)} documents reached the final (TLS-binding) step"
    return statistics.fmean(times), note


def main() -> int:
    print(
        f"Python {platform.python_version()}, cryptography {cryptography.__version__}, "
        f"{backend.openssl_version_text()}, {platform.machine()} "
        f"({os.cpu_count()} CPUs; single thread)\n"
    )
    rows: list[tuple[str, str, float]] = []
    vdir = vectors_dir()
    real_files: list[Path] = []
    if vdir is None:
        print("real vectors not found (set NITRO_VECTORS=DIR); generated documents only\n")
    else:
        manifest = json.loads((vdir / "MANIFEST.json").read_text())
        real_files = [
            vdir / d["file"]
            for d in manifest["attestation_documents"]
            if d["signature_ok"] and d["chain_signatures_ok"]
        ]
    real_docs = [p.read_bytes() for p in real_files]

    pki = TestPKI.generate()
    same_leaf = [
        pki.sign_document(pcrs={i: bytes([i + 1]) * 48 for i in range(16)}, module_id="i-0a-enc0")
        for _ in range(GENERATED_DOCS)
    ]
    new_leaves = [
        pki.sign_document(
            pcrs={i: bytes([i + 1]) * 48 for i in range(16)}, module_id=f"i-0a-enc{n:016x}"
        )
        for n in range(GENERATED_DOCS)
    ]
    meter = Floor(real_docs[0] if real_docs else same_leaf[0])

    if real_docs:
        label = f"real AWS ({len(real_docs)} docs)"
        rows.append((label, "cold", cold(meter, real_docs, None)))
        rows.append((label, "warm", warm(meter, real_docs, None)))
    roots = [pki.root_certificate]
    rows.append(("TestPKI, one enclave", "cold", cold(meter, same_leaf, roots)))
    rows.append(("TestPKI, one enclave", "warm", warm(meter, same_leaf, roots)))
    rows.append(
        (
            "TestPKI, new leaf per doc",
            "warm CAs",
            warm_new_leaf(meter, new_leaves, same_leaf[0], roots),
        )
    )
    floor = meter.best

    ev_seconds, ev_note = evervault(real_files) if real_files else (None, "no real vectors")

    print("| documents | mode | docs/s | µs/doc | vs 1-verify floor | vs 5-verify floor |"
          " x evervault |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, mode, seconds in rows:
        ev = f"{ev_seconds / seconds:.1f}x" if ev_seconds and name.startswith("real") else "n/a"
        print(
            f"| {name} | {mode} | {1 / seconds:,.0f} | {seconds * 1e6:,.0f} | "
            f"{floor / seconds:.0%} | {5 * floor / seconds:.0%} | {ev} |"
        )
    print(f"| floor: 1 P-384 verification | - | {1 / floor:,.0f} | {floor * 1e6:,.0f} | 100% | | |")
    print(f"| floor: 5 P-384 verifications | - | {1 / (5 * floor):,.0f} | {5 * floor * 1e6:,.0f} |"
          " | 100% | |")  # fmt: skip
    if ev_seconds is not None:
        print(
            f"| evervault-attestation-bindings 0.5.0 (real AWS) | per call | "
            f"{1 / ev_seconds:,.0f} | {ev_seconds * 1e6:,.0f} | {floor / ev_seconds:.0%} | "
            f"{5 * floor / ev_seconds:.0%} | 1.0x |"
        )
    print(f"\nevervault-attestation-bindings: {ev_note}")
    warm_real = next((s for n, m, s in rows if m == "warm"), None)
    cold_real = next((s for n, m, s in rows if m == "cold"), None)
    if warm_real and cold_real:
        print(
            f"targets: warm >= 80% of the 1-verify floor: {floor / warm_real:.0%}; "
            f"cold >= 80% of the 5-verify floor: {5 * floor / cold_real:.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
