"""`python -m simulator.kms --port P --state DIR [--trust-root PEM]...` (or `simulator kms`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import ssl
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from aiohttp import web
from cryptography import x509

from attestation import AWS_NITRO_ROOT_G1
from enclave.service import Started, run_service
from simulator.kms.credentials import CredentialError, parse_credential_flag
from simulator.kms.server import KmsServer, create_app
from simulator.kms.store import StoreError, atomic_write

__all__ = ["main"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

DEFAULT_ATTESTATION_MAX_AGE = 300
"""Seconds an attestation document stays acceptable after its timestamp."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulator.kms",
        description="Local AWS KMS endpoint (JSON 1.1 over HTTP, SigV4, key policies with "
        "Nitro attestation conditions). boto3 talks to it unmodified.",
    )
    p.add_argument("--port", type=int, default=0, help="TCP port (0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--state", required=True, type=Path, help="state directory (keys persist here)")
    p.add_argument(
        "--trust-root",
        action="append",
        default=[],
        type=Path,
        metavar="PEM",
        help="root certificate(s) attestation documents must chain to; repeatable. "
        "Default: the pinned AWS Nitro Enclaves Root-G1 only. Given roots replace the default.",
    )
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--account", default="111122223333", help="12-digit account id of the keys")
    p.add_argument(
        "--credentials",
        action="append",
        default=[],
        metavar="ACCESS:SECRET:ARN",
        help="extra access key for principal ARN (IAM allow list kms:*); repeatable",
    )
    p.add_argument(
        "--attestation-max-age",
        type=int,
        default=DEFAULT_ATTESTATION_MAX_AGE,
        metavar="SECONDS",
        help="refuse attestation documents older than this (0 = only the certificate validity)",
    )
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this chain")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="private key for --tls-cert")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _load_roots(paths: Sequence[Path]) -> list[x509.Certificate]:
    if not paths:
        return [AWS_NITRO_ROOT_G1]
    roots: list[x509.Certificate] = []
    for path in paths:
        roots.extend(x509.load_pem_x509_certificates(path.read_bytes()))
    return roots


def _tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


async def _start(
    server: KmsServer,
    host: str,
    port: int,
    endpoint_file: Path,
    tls: ssl.SSLContext | None = None,
) -> Started:
    app = create_app(server)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=server.limits.header_timeout,  # also bounds a slow request head
        lingering_time=server.limits.lingering_time,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=tls)
    await site.start()
    bound = runner.addresses[0]
    url = f"{'https' if tls else 'http'}://{bound[0]}:{bound[1]}"
    atomic_write(
        endpoint_file,
        json.dumps({"url": url, "port": bound[1], "pid": os.getpid()}).encode(),
        mode=0o644,
    )
    print(f"kms listening on {url}", flush=True)
    print(
        f"access keys and principals: {server.credentials.path} (defaults in docs/kms.md)",
        flush=True,
    )

    async def close() -> None:
        with contextlib.suppress(OSError):
            endpoint_file.unlink()
        await runner.cleanup()

    return Started(ready={"url": url, "port": bound[1]}, close=close)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the endpoint until SIGINT/SIGTERM. Exit 0 on a clean stop, 2 on bad usage."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s kms %(levelname)s %(message)s")
    try:
        roots = _load_roots(args.trust_root)
        tls = _tls_context(args.tls_cert, args.tls_key)
        extra = [parse_credential_flag(c) for c in args.credentials]
        max_age = (
            timedelta(seconds=args.attestation_max_age) if args.attestation_max_age > 0 else None
        )
        server = KmsServer(
            state_dir=args.state,
            roots=roots,
            region=args.region,
            account=args.account,
            extra_credentials=extra,
            attestation_max_age=max_age,
        )
    except (OSError, ValueError, ssl.SSLError, CredentialError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.host not in LOOPBACK_HOSTS:
        logging.getLogger("simulator.kms").warning(
            "listening on %s: anyone who can reach it may use the documented default "
            "credentials in %s",
            args.host,
            server.credentials.path,
        )
    try:
        endpoint = server.store.root / "endpoint.json"
        run_service(lambda: _start(server, args.host, args.port, endpoint, tls))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0
