"""``python -m attestation connect URL``: is this HTTPS server the attested enclave? (DESIGN §3)

Exit 0 bound and valid, 1 rejected (``public-key-mismatch`` when the certificate is not the
attested one), 2 usage or network error. ``--get PATH`` then sends that request on the same
connection and prints the answer's body (the summary goes to stderr).
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
from datetime import timedelta
from typing import Any

from ._cli import (
    EXIT_REJECTED,
    EXIT_USAGE,
    EXIT_VALID,
    UsageError,
    _load_roots,
    _parse_pcrs,
    _print_claims,
    add_root_option,
    document_json,
)
from .binding import BINDINGS
from .errors import AttestationError

MAX_GET_BODY = 16 * 1024 * 1024
"""Most bytes of the --get answer read and printed."""


def register(sub: Any) -> None:
    c = sub.add_parser(
        "connect",
        help="check that an HTTPS server's certificate is its enclave's attested key",
        description="Handshake, fetch a document with a fresh nonce over that connection, "
        "verify it and its binding to the presented certificate. "
        "Exit 0 bound and valid, 1 rejected, 2 usage or network error.",
    )
    c.add_argument("url", metavar="URL", help="https://HOST[:PORT]")
    add_root_option(c)
    c.add_argument(
        "--pcr", action="append", default=[], metavar="N=HEX", help="expected PCR (repeatable)"
    )
    c.add_argument("--max-age", type=float, metavar="S", help="oldest accepted timestamp")
    c.add_argument(
        "--allow-debug", action="store_true", help="accept debug-mode documents (PCR0 all zero)"
    )
    c.add_argument(
        "--binding",
        choices=BINDINGS,
        default="public-key",
        help="how the document binds the TLS key: public-key (this toolkit, "
        "default), nitriding (user_data multihash), evervault (user_data = SPKI)",
    )
    c.add_argument("--get", metavar="PATH", help="then GET PATH on the attested connection")
    c.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds for each network step (default 10)",
    )
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=_cmd_connect)


def _expectations(args: argparse.Namespace) -> Any:
    from .connect import Expectations
    from .verifier import Verifier

    if args.max_age is not None and not args.max_age > 0:
        raise UsageError("--max-age must be a positive number of seconds")
    if not args.timeout > 0:
        raise UsageError("--timeout must be positive")
    try:
        return Expectations(
            verifier=Verifier(_load_roots(args.root)),
            pcrs=_parse_pcrs(args.pcr),
            max_age=timedelta(seconds=args.max_age) if args.max_age else None,
            allow_debug=args.allow_debug,
            binding=args.binding,
        )
    except AttestationError as exc:
        raise UsageError(exc.message) from None


def _get(conn: Any, path: str) -> tuple[int, bytes]:
    from ._http_exchange import get_request

    if not path.startswith("/"):
        raise UsageError("--get PATH must start with /")
    conn.tls.sendall(get_request(conn.host, path, close=True))
    response = http.client.HTTPResponse(conn.tls)
    response.begin()
    return response.status, response.read(MAX_GET_BODY)


def _cmd_connect(args: argparse.Namespace) -> int:
    from .connect import attest_url, split_url

    expect = _expectations(args)
    try:
        split_url(args.url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        conn = attest_url(args.url, expect, timeout=args.timeout)
    except AttestationError as exc:
        if args.json:
            print(json.dumps({"valid": False, "error": {"code": exc.code, "message": exc.message}}))
        else:
            print(f"REJECTED [{exc.code}]: {exc.message}")
        return EXIT_REJECTED
    except (OSError, ssl.SSLError) as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with conn:
        result: dict[str, Any] = {
            "valid": True,
            "bound": True,
            "binding": args.binding,
            "certificate_sha256": conn.cert_sha256,
            "seconds": round(conn.seconds, 4),
            **document_json(conn.document),
        }
        status_body = None
        if args.get:
            try:
                status_body = _get(conn, args.get)
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                print(f"error: GET {args.get} failed: {exc}", file=sys.stderr)
                return EXIT_USAGE
    if args.json:
        if status_body is not None:
            result["response"] = {
                "status": status_body[0],
                "body": status_body[1].decode("utf-8", "replace"),
            }
        print(json.dumps(result))
        return EXIT_VALID
    out = sys.stderr if status_body is not None else sys.stdout
    print(
        f"BOUND: {args.url} presents the attested key ({args.binding} binding, "
        f"certificate sha256 {conn.cert_sha256[:16]}..., {conn.seconds * 1000:.0f} ms)",
        file=out,
    )
    _print_claims(conn.document, out)
    if status_body is not None:
        print(f"GET {args.get} -> {status_body[0]}", file=sys.stderr)
        sys.stdout.buffer.write(status_body[1])
        sys.stdout.flush()
    return EXIT_VALID
