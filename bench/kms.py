"""Attested decrypt through the local KMS, as ratios against a plain Decrypt of the same run.

Starts ``python -m simulator.kms`` (real process, loopback HTTP, SigV4) trusting a fresh TestPKI,
puts a policy from ``parent.key_policy`` on a key, and measures with unmodified boto3:

* plain Decrypt (baseline: HTTP + SigV4 + policy + AES-GCM);
* Decrypt with a Recipient (+ attestation verification, RSA-OAEP wrap, CMS build);
* the same plus opening CiphertextForRecipient with ``enclave.kms.cms`` (what the enclave pays).

Also the in-process costs of CMS build/open against their floors (one RSA-2048 OAEP public /
private operation). Run: ``.venv/bin/python bench/kms.py [--requests N]``. Prints Markdown for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402

from attestation import TestPKI  # noqa: E402
from enclave.kms.cms import decrypt_enveloped_data  # noqa: E402
from parent.key_policy import key_policy  # noqa: E402
from simulator.kms.cms_builder import build_ciphertext_for_recipient  # noqa: E402
from simulator.kms.credentials import DEFAULT_CREDENTIALS  # noqa: E402

START_DEADLINE_S = 30.0
WARMUP = 20
MICRO_ROUNDS = 2000


def _measure(call: Callable[[], object], count: int) -> tuple[float, float]:
    """(calls per second, median latency in ms)."""
    for _ in range(WARMUP):
        call()
    latencies = []
    started = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
    return count / (time.perf_counter() - started), statistics.median(latencies) * 1000


def _start(state: Path, root_pem: Path) -> tuple[subprocess.Popen[bytes], str]:
    endpoint = state / "kms" / "endpoint.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.kms", "--state", str(state),
         "--trust-root", str(root_pem), "--log-level", "WARNING"],
        cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + START_DEADLINE_S
    while not endpoint.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("kms did not start")
        time.sleep(0.05)
    return proc, json.loads(endpoint.read_text())["url"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    count = parser.parse_args().requests
    operator_cred, parent_cred = DEFAULT_CREDENTIALS
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        pki = TestPKI.generate()
        (state / "root.pem").write_bytes(pki.root_pem)
        proc, url = _start(state, state / "root.pem")
        try:

            def client(cred):
                return boto3.client(
                    "kms", endpoint_url=url, region_name="us-east-1",
                    aws_access_key_id=cred.access_key_id,
                    aws_secret_access_key=cred.secret_access_key,
                    config=Config(retries={"total_max_attempts": 1}),
                )  # fmt: skip

            operator, parent = client(operator_cred), client(parent_cred)
            pcrs = {i: bytes(48) for i in range(16)}
            pcrs[0] = os.urandom(48)
            key_id = operator.create_key()["KeyMetadata"]["KeyId"]
            policy = key_policy(
                pcrs={0: pcrs[0]}, enclave_role=parent_cred.principal, admin=operator_cred.principal
            )
            # baseline only: let the operator Decrypt without attestation
            policy["Statement"][2]["Action"].append("kms:Decrypt")
            operator.put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(policy))
            blob = operator.encrypt(KeyId=key_id, Plaintext=os.urandom(32))["CiphertextBlob"]
            enclave_key = rsa.generate_private_key(65537, 2048)
            spki = enclave_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            document = pki.sign_document(
                pcrs=pcrs, module_id="i-0123456789abcdef0-enc0123456789abcdef", public_key=spki
            )
            recipient = {
                "AttestationDocument": document,
                "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
            }

            def plain():
                return operator.decrypt(CiphertextBlob=blob)

            def attested():
                return parent.decrypt(CiphertextBlob=blob, Recipient=recipient)

            def attested_and_open():
                answer = attested()
                return decrypt_enveloped_data(answer["CiphertextForRecipient"], enclave_key)

            rows = [
                ("plain Decrypt (baseline)", _measure(plain, count)),
                ("Decrypt with Recipient", _measure(attested, count)),
                ("Decrypt with Recipient + CMS open", _measure(attested_and_open, count)),
            ]
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    public = enclave_key.public_key()
    wrapped = public.encrypt(os.urandom(32), oaep)
    cms = build_ciphertext_for_recipient(os.urandom(32), public)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("RSA-2048 OAEP encrypt (floor of build)", lambda: public.encrypt(b"k" * 32, oaep)),
        (
            "CMS build (simulator.kms.cms_builder)",
            lambda: build_ciphertext_for_recipient(b"k", public),
        ),
        ("RSA-2048 OAEP decrypt (floor of open)", lambda: enclave_key.decrypt(wrapped, oaep)),
        ("CMS open (enclave.kms.cms)", lambda: decrypt_enveloped_data(cms, enclave_key)),
    ]
    micro = [(name, _measure(step, MICRO_ROUNDS)) for name, step in steps]

    print(f"Python {platform.python_version()} on {platform.machine()}, {count} requests each, "
          "one client, loopback HTTP.\n")  # fmt: skip
    print("| request (boto3 → local KMS) | per second | p50 ms | vs plain Decrypt |")
    print("|---|---|---|---|")
    base = rows[0][1][0]
    for name, (rate, p50) in rows:
        print(f"| {name} | {rate:.0f} | {p50:.2f} | {rate / base:.2f}x |")
    print("\n| in-process step | per second | p50 ms | vs its floor |")
    print("|---|---|---|---|")
    for (name, (rate, p50)), floor in zip(micro, (None, micro[0], None, micro[2]), strict=True):
        ratio = "floor" if floor is None else f"{rate / floor[1][0]:.2f}x"
        print(f"| {name} | {rate:.0f} | {p50:.3f} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
