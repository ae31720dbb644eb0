"""``python -m attestation pcrs``: measurements from an EIF, a role ARN, an instance id; and
verify-before-deploy (compare an EIF with a running enclave's document or a measurements file).

Exit codes: 0 ok / match, 1 mismatch or invalid document, 2 usage, I/O error or bad EIF
(``bad-eif``: the file is not an EIF nitro-cli would accept; JSON error on stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._cli import UsageError, _load_roots, _parse_at, _read_input
from .errors import AttestationError, EifError
from .pcr import pcr3_from_role_arn, pcr4_from_instance_id

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    """Add the ``pcrs`` subcommand to the ``python -m attestation`` parser."""
    p = subparsers.add_parser(
        "pcrs",
        help="PCRs from an EIF / role ARN / instance id; compare an EIF with a document",
        description=(
            "Print nitro-cli-shaped measurements. --eif gives PCR0/1/2 (+PCR8 when signed), "
            "--role-arn PCR3, --instance-id PCR4. With --check-doc or --check-measurements, "
            "compare instead and exit 1 on any mismatch."
        ),
    )
    p.add_argument("--eif", metavar="FILE", help="Enclave Image File to measure")
    p.add_argument("--role-arn", metavar="ARN", help="parent instance role ARN (PCR3)")
    p.add_argument("--instance-id", metavar="ID", help="parent instance id (PCR4)")
    p.add_argument(
        "--ignore-crc", action="store_true", help="measure even if the EIF CRC does not match"
    )
    p.add_argument(
        "--check-doc",
        metavar="DOC",
        help="attestation document (raw CBOR, base64 or hex; '-' = stdin) to compare with",
    )
    p.add_argument("--root", metavar="PEM", help="trust this root instead of the AWS root")
    p.add_argument(
        "--at",
        metavar="ISO8601|document",
        help="verify the document's chain at this time ('document' = its own timestamp)",
    )
    p.add_argument(
        "--check-measurements",
        metavar="JSON",
        help="measurements/policy JSON (nitro-cli build output, {'PCR0':..} or {'pcrs':..})",
    )
    p.set_defaults(func=run_pcrs, handler=run_pcrs)


def run_pcrs(args: argparse.Namespace) -> int:
    """Handler of ``pcrs``; prints JSON on stdout, problems on stderr; returns the exit code."""
    try:
        return _run(args)
    except EifError as exc:
        _emit_error(exc)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    from .eif import compare_pcrs, load_measurements, measurements_json, read_eif

    if not (args.eif or args.role_arn or args.instance_id):
        raise UsageError("give --eif FILE, --role-arn ARN and/or --instance-id ID")
    if (args.check_doc or args.check_measurements) and not args.eif:
        raise UsageError("--check-doc / --check-measurements compare an EIF: give --eif FILE")
    pcrs: dict[int, bytes] = {}
    image = None
    if args.eif:
        if not Path(args.eif).is_file():
            raise UsageError(f"no such EIF file: {args.eif}")
        image = read_eif(args.eif, check_crc=not args.ignore_crc)
        pcrs.update(image.pcrs)
    if args.role_arn:
        pcrs[3] = pcr3_from_role_arn(args.role_arn)
    if args.instance_id:
        try:
            pcrs[4] = pcr4_from_instance_id(args.instance_id)
        except UnicodeEncodeError as exc:
            raise UsageError("--instance-id must be ASCII (e.g. i-0123456789abcdef0)") from exc

    if args.check_measurements:
        expected_file = load_measurements(Path(args.check_measurements))
        # the file states what is expected; the EIF is what was found
        status = _report(compare_pcrs(expected_file, pcrs), what="measurements file")
        if not args.check_doc:
            return status
    else:
        status = EXIT_OK
    if args.check_doc:
        return max(status, _check_document(args, image))
    print(json.dumps(measurements_json(pcrs), indent=2))
    return EXIT_OK


def _check_document(args: argparse.Namespace, image: Any) -> int:
    from .eif import PcrComparison, compare_eif_with_document

    data = _read_input(args.check_doc)
    roots = _load_roots([args.root] if args.root else None)
    at = _parse_at(args.at)
    try:
        result: PcrComparison = compare_eif_with_document(
            image, data, roots=roots, at=at, role_arn=args.role_arn, instance_id=args.instance_id
        )
    except EifError:
        raise
    except AttestationError as exc:
        print(json.dumps({"match": False, "error": exc.to_dict()}, indent=2))
        print(f"document rejected: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_MISMATCH
    return _report(result, what="attestation document")


def _report(result: Any, *, what: str) -> int:
    out = {
        "match": result.matches,
        "against": what,
        "checked": [f"PCR{i}" for i in result.checked],
        "mismatches": [m.to_dict() for m in result.mismatches],
    }
    print(json.dumps(out, indent=2))
    for m in result.mismatches:
        print(f"{what}: {m.describe()}", file=sys.stderr)
    return EXIT_OK if result.matches else EXIT_MISMATCH


def _emit_error(exc: AttestationError) -> None:
    print(json.dumps({"error": exc.to_dict()}, indent=2))
    print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
