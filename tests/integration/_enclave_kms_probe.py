"""A tiny enclave app for the attested-KMS integration test, wired like the real app:

    bring_up_loopback()  ->  CredentialStore  ->  AttestedKms.for_enclave (tunnel -> relay)
    protocol.serve on (VMADDR_CID_ANY, --port) with "set-credentials" and test operations.

It never returns a plaintext to the parent: "decrypt" answers with the SHA-256 of it.
Environment: NITRO_NSM_SOCKET, NITRO_VSOCK_SIM_DIR, NITRO_VSOCK_SIM_CID, and NITRO_KMS_SCHEME=http
for a plain-HTTP KMS (else TLS through CONNECT, as on hardware, with --ca-bundle).
Prints one JSON line {"event": "ready", ...} when serving; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import sys

from enclave.kms import AttestedKms, KmsError
from enclave.kms.credentials import SET_CREDENTIALS_OP, CredentialStore
from enclave.kms.tunnel import LoopbackError, bring_up_loopback
from enclave.protocol import HandlerError, serve
from enclave.transport import PARENT_CID, VMADDR_CID_ANY, VsockAddress


def build_handlers(kms: AttestedKms, store: CredentialStore) -> dict:
    async def blocking(fn, *args, **kwargs):
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except KmsError as exc:
            raise HandlerError(exc.code, exc.message) from None

    async def decrypt(body):
        plaintext = await blocking(
            kms.decrypt, body["ciphertext"], encryption_context=body.get("context")
        )
        return {"sha256": hashlib.sha256(plaintext).digest(), "length": len(plaintext)}

    async def data_key(body):
        dk = await blocking(kms.generate_data_key, body["key_id"])
        again = await blocking(kms.decrypt, dk.ciphertext_blob)
        return {"length": len(dk.plaintext), "round_trip": again == dk.plaintext}

    async def random(body):
        return {"length": len(await blocking(kms.generate_random, body["n"]))}

    async def keyring(body):
        return {"rotations": kms.keyring.rotations, "documents": kms.keyring.documents}

    return {
        SET_CREDENTIALS_OP: store.handle_set_credentials,
        "decrypt": decrypt,
        "data-key": data_key,
        "random": random,
        "keyring": keyring,
    }


async def run(args: argparse.Namespace) -> int:
    try:
        changed = bring_up_loopback()  # on hardware lo is down; here it is already up
    except LoopbackError as exc:
        print(json.dumps({"event": "error", "code": exc.code}), flush=True)
        return 1
    store = CredentialStore()
    kms = AttestedKms.for_enclave(
        store, region=args.region, relay=VsockAddress(PARENT_CID, args.relay_port),
        ca_bundle=args.ca_bundle,
    )
    server = await serve(VsockAddress(VMADDR_CID_ANY, args.port), build_handlers(kms, store))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"event": "ready", "port": args.port, "loopback_changed": changed}),
          flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        kms.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--relay-port", type=int, default=8000)
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--ca-bundle", help="CA file for KMS's certificate (https only)")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
