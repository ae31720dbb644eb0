"""``python -m attestation provenance verify STATEMENT (--eif EIF | --document DOC)``.

Exit 0 the statement is signed by a trusted key and its subject is this EIF (or the image
the document attests), 1 rejected (the reason's code on stdout), 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    """Add ``provenance verify`` to the ``python -m attestation`` parser."""
    p = subparsers.add_parser(
        "provenance",
        help="check a signed EIF build statement against an EIF or an attestation document",
    )
    sub = p.add_subparsers(dest="provenance_command", required=True, metavar="verify")
    v = sub.add_parser(
        "verify",
        help="verify STATEMENT's signature and match its subject",
        description="Exit 0 verified, 1 rejected, 2 usage or I/O error.",
    )
    v.add_argument("statement", metavar="STATEMENT", help="DSSE envelope (EIF.intoto.json)")
    target = v.add_mutually_exclusive_group(required=True)
    target.add_argument("--eif", metavar="EIF", help="the EIF the statement describes")
    target.add_argument("--document", metavar="DOC", help="attestation document (CBOR/b64/hex)")
    v.add_argument(
        "--key",
        metavar="PEM",
        help="trusted signer (public key or certificate); without it the statement's own "
        "certificate is accepted only when it is the EIF's signing certificate (PCR8)",
    )
    v.add_argument("--root", action="append", metavar="PEM", help="trust root for --document")
    v.add_argument("--at", metavar="ISO8601|document", help="verify the document at this time")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    from ._cli import UsageError, _load_roots, _parse_at, _read_input
    from .errors import AttestationError
    from .provenance import MAX_ENVELOPE_BYTES, load_trusted_key, verify_statement

    try:
        with open(args.statement, "rb") as fh:
            envelope = fh.read(MAX_ENVELOPE_BYTES + 1)
        key = None
        if args.key:
            with open(args.key, "rb") as fh:
                key = load_trusted_key(fh.read(64 * 1024))
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    except AttestationError as exc:
        raise UsageError(exc.message) from None
    try:
        if args.eif:
            result = verify_statement(envelope, eif=args.eif, trusted_key=key)
        else:
            result = verify_statement(
                envelope,
                document=_read_input(args.document),
                trusted_key=key,
                roots=_load_roots(args.root),
                at=_parse_at(args.at),
            )
    except AttestationError as exc:
        if args.json:
            print(json.dumps({"valid": False, "error": exc.to_dict()}))
        else:
            print(f"REJECTED [{exc.code}]: {exc.message}")
        return EXIT_REJECTED
    source = dict(result.source())
    if args.json:
        print(json.dumps({
            "valid": True,
            "eif_sha384": result.eif_sha384,
            "pcrs": {str(i): v.hex() for i, v in sorted(result.pcrs.items())},
            "source": source,
            "signer_keyid": result.signer_keyid,
            "trusted_by": result.trusted_by,
        }))  # fmt: skip
    else:
        print(
            f"OK: built from {source.get('repository') or '?'} at {source.get('commit') or '?'}; "
            f"signer {result.signer_keyid[:16]}… (trusted by {result.trusted_by}); "
            f"PCR0 {result.pcrs[0].hex()[:16]}…"
        )
    return EXIT_OK
