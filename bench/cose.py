"""COSE_Sign1 signature check of the real documents: attestation/_cose.py against pycose.

Both check the same ES384 signature of each of the real AWS documents of ../shared/vectors
with the leaf certificate's key; the CBOR envelope is decoded once beforehand (both paths get
the same four parts), so the rows compare the COSE step alone. The baseline, in the same run,
is one bare ``cryptography`` P-384 verification of the document's Sig_structure.

Run: ``.venv/bin/python bench/cose.py`` (needs pycose: ``pip install 'pycose>=1.1,<2'``).
Prints a Markdown table for docs/benchmarks.md §13.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from attestation import parse_document  # noqa: E402
from attestation._cose import es384_verify, raw_to_der, sig_structure  # noqa: E402

ROUNDS = 7  # best of N: other processes share the machine
PASSES = 2  # passes over the documents per round


def documents() -> list[bytes]:
    env = os.environ.get("NITRO_VECTORS")
    vdir = Path(env) if env else ROOT.parent / "shared" / "vectors"
    manifest = json.loads((vdir / "MANIFEST.json").read_text())
    return [
        (vdir / d["file"]).read_bytes()
        for d in manifest["attestation_documents"]
        if d["signature_ok"] and d["chain_signatures_ok"]
    ]


def best_per_op(cases: list[Callable[[], int]]) -> list[float]:
    """Best seconds per operation of each case; the cases take turns in every round, so that
    all of them see the same machine load."""
    best = [math.inf] * len(cases)
    for _ in range(ROUNDS):
        for i, fn in enumerate(cases):
            start = time.perf_counter()
            ops = fn()
            best[i] = min(best[i], (time.perf_counter() - start) / ops)
    return best


def main() -> int:
    try:
        from pycose.keys import EC2Key
        from pycose.messages import Sign1Message
    except ImportError:
        print("pycose is not installed: pip install 'pycose>=1.1,<2'")
        return 2
    docs = [parse_document(d) for d in documents()]
    keys = []
    for doc in docs:
        key = x509.load_der_x509_certificate(doc.certificate).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        keys.append(key)
    pems = [
        k.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        for k in keys
    ]
    pairs = list(zip(docs, keys, strict=True))
    algorithm = ec.ECDSA(hashes.SHA384())

    def floor() -> int:
        for _ in range(PASSES):
            for doc, key in pairs:
                key.verify(
                    raw_to_der(doc.signature), sig_structure(doc.protected, doc.payload), algorithm
                )
        return PASSES * len(pairs)

    def ours() -> int:
        for _ in range(PASSES):
            for doc, key in pairs:
                assert es384_verify(key, doc.protected, doc.payload, doc.signature)
        return PASSES * len(pairs)

    def theirs() -> int:  # key object made per document, as a verifier meets a new leaf
        for _ in range(PASSES):
            for doc, pem in zip(docs, pems, strict=True):
                msg = Sign1Message.from_cose_obj(
                    [doc.protected, {}, doc.payload, doc.signature], True
                )
                msg.key = EC2Key.from_pem_public_key(pem)
                assert msg.verify_signature()
        return PASSES * len(pairs)

    names = (
        "bare cryptography verify (floor)",
        "attestation/_cose.es384_verify",
        "pycose Sign1Message.verify_signature",
    )
    rows = list(zip(names, best_per_op([floor, ours, theirs]), strict=True))
    base = rows[0][1]
    print(f"Python {platform.python_version()}, {platform.machine()}, {len(docs)} real documents\n")
    print("| COSE_Sign1 ES384 check | µs/doc | vs floor |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e6:,.0f} | {base / seconds:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
