"""``python -m simulator demo`` (``make demo``): the whole story on a fresh local stack.

1. start the stack (KMS, NSM, enclave, KMS relay, credentials, proxy) in a temporary directory;
2. the operator creates a KMS key whose policy names the simulated enclave's PCRs;
3. the operator seals a signing key (KMS Encrypt) and hands the ciphertext to the parent;
4. the enclave opens it with attested KMS and signs; the signature verifies with its public key;
5. a client verifies the enclave's attestation and sends an end-to-end encrypted request;
6. envelope data is opened in the enclave, which returns only a digest of it;
7. the parent's own Decrypt of the sealed secret is refused (AccessDeniedException);
8. an enclave built from one changed file gets another PCR0, and KMS refuses it;
9. attested HTTPS: curl reaches an ASGI app in the enclave through the parent's ingress,
   ``attestation connect`` verifies the TLS binding, and a man-in-the-middle with another
   certificate is refused (``public-key-mismatch``).

Exit 0 only if every step behaved as expected; 1 (with the failing step) otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

DEMO_CID_CHANGED = 17
DEMO_ASGI = "enclave.ingress.example:app"
DEMO_DEADLINE_S = 60.0


class DemoFailure(Exception):
    pass


class _Story:
    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.start = time.monotonic()
        self.steps = 0

    def step(self, title: str) -> None:
        self.steps += 1
        self.out(f"\n[{self.steps}] {title}")

    def ok(self, text: str) -> None:
        self.out(f"    ✔ {text}")

    def info(self, text: str) -> None:
        self.out(f"      {text}")


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailure(message)


def run_demo(
    state_dir: Path, *, out: Callable[[str], None] = print, secrets_out: Path | None = None
) -> None:
    """Run every step; raises DemoFailure (or StackError) on the first unexpected outcome."""
    import boto3
    from botocore.exceptions import ClientError
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from attestation import Policy
    from attestation.client import EnclaveClient, EnclaveClientError, from_b64
    from enclave.app import app_user_data
    from enclave.handlers import DEFAULT_APP_NAME, DEFAULT_APP_VERSION
    from parent.key_policy import key_policy, select_pcrs

    from .stack import DEFAULT_ENCLAVE_SOURCE, Stack, StackConfig

    story = _Story(out)
    story.step("Start the local stack (each part its own process)")
    stack = Stack(StackConfig(state_dir=state_dir, asgi=DEMO_ASGI), echo=story.info)
    try:
        info = stack.start()
        story.ok(f"stack up in {time.monotonic() - story.start:.1f} s; logs in {info['logs']}")
        pcrs = info["pcrs"]
        creds = info["credentials"]

        def kms_as(who: str) -> Any:
            c = creds[who]
            return boto3.client(
                "kms",
                endpoint_url=info["kms_url"],
                region_name=info["region"],
                aws_access_key_id=c["access_key_id"],
                aws_secret_access_key=c["secret_access_key"],
            )

        operator_kms, parent_kms = kms_as("operator"), kms_as("parent")

        # ---------------------------------------------------------------- 2. key
        story.step("Operator creates a KMS key whose policy names the enclave's PCRs")
        measured = {int(i): v for i, v in pcrs.items()}
        policy = key_policy(
            pcrs=select_pcrs(measured, [1, 2]),
            enclave_role=creds["parent"]["principal"],
            admin=creds["operator"]["principal"],
        )
        key_id = operator_kms.create_key(
            Policy=json.dumps(policy), Description="nitro-toolkit demo"
        )["KeyMetadata"]["KeyId"]
        story.ok(f"key {key_id}")
        story.info(f"ImageSha384 (PCR0) = {pcrs['0'][:32]}…  (+ PCR1, PCR2)")

        # ---------------------------------------------------------------- 3. seal
        story.step("Operator seals a P-256 signing key (KMS Encrypt) and gives it to the parent")
        private = ec.generate_private_key(ec.SECP256R1())
        secret = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        expected_public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        del private
        context = {"app": "demo"}
        blob = operator_kms.encrypt(KeyId=key_id, Plaintext=secret, EncryptionContext=context)[
            "CiphertextBlob"
        ]
        story.ok(f"ciphertext of {len(blob)} bytes; the plaintext key is not kept")

        # ---------------------------------------------------------------- 4. load + sign
        story.step("The enclave opens it with attested KMS and signs with it")
        root = x509.load_pem_x509_certificate(Path(info["root_pem"]).read_bytes())
        client_policy = Policy(
            pcrs={0: pcrs["0"], 1: pcrs["1"], 2: pcrs["2"]},
            user_data=app_user_data(DEFAULT_APP_NAME, DEFAULT_APP_VERSION),
            max_age=timedelta(minutes=5),
        )
        client = EnclaveClient(info["proxy_url"], client_policy, roots=[root])
        health = client.health()
        _expect(health.get("enclave") == "ok", f"proxy health says {health}")
        loaded = client.call(
            "seal-load",
            {"name": "signing-key", "kind": "ec-p256", "ciphertext": blob,
             "encryption_context": context},
        )
        _expect(from_b64(loaded["public_key"]) == expected_public,
                "the enclave's public key differs from the sealed key's")
        story.ok("seal-load: the enclave holds 'signing-key' (its public key matches)")
        message = b"transfer 100 to alice"
        signature = from_b64(client.call("sign", {"name": "signing-key", "message": message})[
            "signature"])
        public = serialization.load_der_public_key(
            from_b64(client.call("public-key", {"name": "signing-key"})["public_key"])
        )
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise DemoFailure("the sealed signing key is not an EC key")
        try:
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise DemoFailure("the enclave's signature does not verify") from None
        story.ok(f"sign: {len(signature)}-byte ECDSA signature verifies with the public key")

        # ---------------------------------------------------------------- 5. e2e
        story.step("A client verifies the attestation and sends an end-to-end encrypted request")
        session = client.attest()
        story.ok(
            f"document verified: chain to the test root, PCR0-2, our nonce, app user_data; "
            f"module {session.document.module_id}"
        )
        key_hash = hashlib.sha256(session.public_key).hexdigest()[:24]
        story.info(f"enclave HPKE key sha256 {key_hash}…")
        e2e_message = b"e2e: approve payment #42"
        result = client.call_e2e("sign", {"name": "signing-key", "message": e2e_message})
        try:
            public.verify(result["signature"], e2e_message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise DemoFailure("the end-to-end signature does not verify") from None
        story.ok("sealed request -> proxy (ciphertext only) -> enclave -> sealed reply: verified")
        forged = _post_raw(info["proxy_url"], "/attestation",
                           {"nonce": base64.b64encode(b"n" * 16).decode(),
                            "public_key": base64.b64encode(b"parent's own key").decode()})
        _expect(forged[0] == 400 and forged[1]["error"]["code"] == "forbidden-field",
                f"a document for an outside key was not refused: {forged}")
        story.ok("asking for a document carrying an outside key is refused (forbidden-field)")

        # ---------------------------------------------------------------- 6. envelope
        story.step("Envelope data is opened inside the enclave; only a MAC under our key comes out")
        data_key = AESGCM.generate_key(bit_length=256)
        document = b"quarterly numbers: confidential"
        iv = os.urandom(12)
        sealed_doc = AESGCM(data_key).encrypt(iv, document, None)
        encrypted_key = operator_kms.encrypt(KeyId=key_id, Plaintext=data_key)["CiphertextBlob"]
        del data_key
        mac_key = os.urandom(32)  # travels sealed: the parent cannot test guesses of the data
        digest = client.call_e2e(
            "envelope-decrypt",
            {"encrypted_key": encrypted_key, "iv": iv, "ciphertext": sealed_doc,
             "result": "hmac-sha256", "mac_key": mac_key},
        )
        _expect(digest.get("mac") == hmac.new(mac_key, document, hashlib.sha256).digest(),
                "the enclave's MAC of the envelope data is wrong")
        story.ok(f"HMAC-SHA256 {digest['mac'].hex()[:24]}… over {digest['length']} bytes matches")

        # ---------------------------------------------------------------- 7. parent refused
        story.step("The parent tries KMS Decrypt itself with the same role credentials")
        try:
            parent_kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            _expect(code == "AccessDeniedException", f"expected AccessDeniedException, got {code}")
            story.ok("refused: AccessDeniedException (no attestation, no plaintext)")
        else:
            raise DemoFailure("the parent could decrypt the sealed secret")

        # ---------------------------------------------------------------- 8. changed code
        story.step("An enclave built from one changed file asks KMS for the same secret")
        changed_root = state_dir / "changed-src"
        changed = changed_root / "enclave"
        shutil.copytree(DEFAULT_ENCLAVE_SOURCE, changed,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        target = changed / "handlers" / "sealed.py"
        target.write_text(target.read_text() + "\n# one changed line\n")
        other = stack.start_enclave("changed-enclave", changed, DEMO_CID_CHANGED)
        _expect(other.pcrs["0"] != pcrs["0"], "changing the code did not change PCR0")
        story.ok(f"PCR0 {other.pcrs['0'][:16]}… (was {pcrs['0'][:16]}…)")
        code = asyncio.run(
            _seal_load_direct(stack.vsock_dir, DEMO_CID_CHANGED, blob, context)
        )
        _expect(code == "kms-access-denied", f"expected kms-access-denied, got {code!r}")
        story.ok("KMS refused the changed enclave (kms-access-denied): PCR0 is not in the policy")
        # ---------------------------------------------------------------- 9. attested HTTPS
        _attested_https_step(story, info)
        if secrets_out is not None:  # for the log-hygiene test only
            secrets_out.write_text(json.dumps({
                "signing_key_pkcs8": secret.hex(), "envelope_plaintext": document.hex(),
                "e2e_message": e2e_message.hex(),
                "parent_secret_access_key": creds["parent"]["secret_access_key"],
            }))
    except EnclaveClientError as exc:
        raise DemoFailure(f"{exc.code}: {exc.message}") from None
    finally:
        stack.stop()
    story.out(f"\nAll {story.steps} steps behaved as expected "
              f"({time.monotonic() - story.start:.1f} s).")


def _attested_https_step(story: _Story, info: dict) -> None:
    import subprocess

    from attestation.connect import split_url

    from .mitm import TlsMitm

    story.step("Attested HTTPS: an ASGI app in the enclave, TLS ending inside it")
    url = info["ingress_url"]
    curl = shutil.which("curl")
    if curl:
        got = subprocess.run([curl, "-sS", "-k", "--max-time", "30", url + "/"],
                             capture_output=True, timeout=60)
        _expect(got.returncode == 0 and b"hello from inside the enclave" in got.stdout,
                f"curl through the parent's ingress failed: {got.stderr[-300:]!r}")
        story.ok(f"curl {url}/ -> the app's answer (the parent relayed TLS bytes only)")
    else:
        story.info("curl is not installed: skipping the curl request")
    pcrs = [f"--pcr={i}={info['pcrs'][str(i)]}" for i in (0, 1, 2)]

    def connect(target: str) -> tuple[int, dict]:
        done = subprocess.run(
            [sys.executable, "-m", "attestation", "connect", target, "--root", info["root_pem"],
             *pcrs, "--max-age", "300", "--json"], capture_output=True, text=True, timeout=120)
        try:
            return done.returncode, json.loads(done.stdout)
        except ValueError:
            return done.returncode, {"stderr": done.stderr[-300:]}

    code, result = connect(url)
    _expect(code == 0 and result.get("bound") is True, f"attestation connect: {code} {result}")
    story.ok(f"attestation connect: document verified and bound to the presented certificate "
             f"(sha256 {result['certificate_sha256'][:16]}…)")
    host, port = split_url(url)
    with TlsMitm(host, port) as mitm:
        code, result = connect(mitm.url)
    error = result.get("error", {}).get("code")
    _expect(code == 1 and error == "public-key-mismatch",
            f"a man-in-the-middle was not refused as public-key-mismatch: {code} {result}")
    story.ok("a man-in-the-middle with another certificate: refused (public-key-mismatch)")


async def _seal_load_direct(vsock_dir: Path, cid: int, blob: bytes, context: dict) -> str | None:
    """``seal-load`` straight over vsock (the parent's view), returning the error code."""
    from enclave.protocol import ProtocolClient, RemoteError
    from enclave.transport import VsockAddress

    from .stack import ENCLAVE_PORT

    client = await ProtocolClient.connect(
        VsockAddress(cid, ENCLAVE_PORT), sim_dir=vsock_dir, deadline=5.0
    )
    try:
        await client.request(
            "seal-load",
            {"name": "signing-key", "kind": "ec-p256", "ciphertext": blob,
             "encryption_context": context},
            timeout=30.0,
        )
    except RemoteError as exc:
        return exc.code
    finally:
        await client.close()
    return None


def _post_raw(base_url: str, path: str, body: dict) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        base_url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator demo", description=__doc__)
    parser.add_argument("--state", type=Path, help="state directory (default: a fresh temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the state directory")
    parser.add_argument("--secrets-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from .stack import StackError

    state = args.state or Path(tempfile.mkdtemp(prefix="nitro-demo-"))
    print(f"nitro-toolkit demo — state in {state}", flush=True)
    try:
        run_demo(state, out=lambda line: print(line, flush=True), secrets_out=args.secrets_out)
    except (DemoFailure, StackError) as exc:
        print(f"\n✘ demo failed: {exc}", file=sys.stderr)
        print(f"  logs kept in {state / 'logs'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    if not args.keep and args.state is None:
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
