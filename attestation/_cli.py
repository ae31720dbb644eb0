"""``python -m attestation verify | inspect | pcrs | connect`` (DESIGN §3).

Exit status: 0 valid (or decoded, for inspect), 1 rejected, 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import importlib
import json
import os
import string
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from cryptography import x509

from .document import MAX_DOCUMENT_SIZE, AttestationDocument, parse_document
from .errors import AttestationError, MalformedError, PolicyError
from .policy import Policy
from .roots import AWS_NITRO_ROOT_G1, der_sha256, load_root_pem
from .verifier import At, Verifier, policy_has_max_age

EXIT_VALID = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
MAX_INPUT_SIZE = 3 * MAX_DOCUMENT_SIZE
"""Bytes read from FILE or stdin: a maximal document as hex, plus whitespace."""
MAX_ROOT_FILE_SIZE = 64 * 1024

_HEX_CHARS = frozenset(string.hexdigits.encode())
_B64_CHARS = frozenset((string.ascii_letters + string.digits + "+/=-_").encode())
_RAW_FIRST_BYTES = (0x84, 0xD2)  # untagged / tagged COSE_Sign1
_UNVERIFIED = "UNVERIFIED: decoded only; nothing below is authenticated"


class UsageError(Exception):
    """Bad arguments or unreadable input: exit status 2."""


def decode_input(data: bytes) -> bytes:
    """Raw CBOR as is; otherwise hex or base64 text (whitespace ignored), detected."""
    if not data or data[0] in _RAW_FIRST_BYTES:
        return data
    text = bytes(b for b in data if b not in b" \t\r\n")
    if text and all(b in _HEX_CHARS for b in text) and len(text) % 2 == 0:
        return bytes.fromhex(text.decode())
    if text and all(b in _B64_CHARS for b in text):
        padded = text.rstrip(b"=") + b"=" * (-len(text.rstrip(b"=")) % 4)
        try:
            if b"-" in text or b"_" in text:
                return base64.urlsafe_b64decode(padded)
            return base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            pass
    return data  # not text we understand: let the parser say why it is malformed


def _read_input(source: str) -> bytes:
    try:
        if source == "-":
            data = sys.stdin.buffer.read(MAX_INPUT_SIZE + 1)
        else:
            with open(source, "rb") as f:
                data = f.read(MAX_INPUT_SIZE + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    if len(data) > MAX_INPUT_SIZE:
        # Readable, but not a document: a rejection (exit 1, JSON under --json), not usage.
        raise MalformedError(
            f"input is larger than {MAX_INPUT_SIZE} bytes; not a document",
            expected=f"<= {MAX_INPUT_SIZE}",
            found=f"> {MAX_INPUT_SIZE}",
        )
    return decode_input(data)


def _hex_arg(value: str | None, name: str) -> bytes | None:
    if value is None:
        return None
    text = value.strip()
    if text[:2].lower() == "0x":
        text = text[2:]
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"{name} is not hex: {value[:40]!r}") from None


def _parse_at(value: str | None) -> At:
    if value is None:
        return None
    if value == "document":
        return "document"
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--at {value!r} is not ISO 8601 or 'document'") from None
    if when.tzinfo is None:
        raise UsageError("--at needs a time zone, e.g. 2024-07-31T19:56:11Z")
    return when


def _parse_pcrs(items: Sequence[str]) -> dict[int, str] | None:
    if not items:
        return None
    out: dict[int, str] = {}
    for item in items:
        index, sep, value = item.partition("=")
        if not sep or not index.strip().isdigit():
            raise UsageError(f"--pcr expects N=HEX, got {item[:40]!r}")
        if int(index) in out:
            raise UsageError(f"--pcr {int(index)} given twice")
        out[int(index)] = value
    return out


def _load_roots(paths: Sequence[str] | None) -> list[x509.Certificate] | None:
    if not paths:
        return None
    roots = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_ROOT_FILE_SIZE + 1)
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            roots.append(load_root_pem(data))
        except AttestationError as exc:
            raise UsageError(f"--root {path}: {exc.message}") from None
    return roots


def _policy(args: argparse.Namespace) -> Policy:
    max_age = None
    if args.max_age is not None:
        if not args.max_age > 0:
            raise UsageError("--max-age must be a positive number of seconds")
        max_age = timedelta(seconds=args.max_age)
    try:
        return Policy(
            pcrs=_parse_pcrs(args.pcr),
            nonce=_hex_arg(args.nonce, "--nonce"),
            user_data=_hex_arg(args.user_data, "--user-data"),
            public_key=_hex_arg(args.public_key, "--public-key"),
            max_age=max_age,
            allow_debug=args.allow_debug,
        )
    except AttestationError as exc:
        raise UsageError(exc.message) from None


def _hex_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def document_json(doc: AttestationDocument) -> dict[str, Any]:
    """The claims of a document, bytes as hex and ``None`` for absent fields."""
    return {
        "module_id": doc.module_id,
        "timestamp": doc.timestamp,
        "digest": doc.digest,
        "pcrs": {str(i): v.hex() for i, v in sorted(doc.pcrs.items())},
        "public_key": _hex_or_none(doc.public_key),
        "user_data": _hex_or_none(doc.user_data),
        "nonce": _hex_or_none(doc.nonce),
    }


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _print_claims(doc: AttestationDocument, out: TextIO) -> None:
    print(f"  module_id:  {doc.module_id}", file=out)
    print(f"  timestamp:  {_iso_ms(doc.timestamp)} ({doc.timestamp} ms)", file=out)
    print(f"  digest:     {doc.digest}", file=out)
    print(f"  debug mode: {'yes (PCR0 all zero)' if doc.is_debug else 'no'}", file=out)
    for index, value in sorted(doc.pcrs.items()):
        print(f"  PCR{index:<2}      {value.hex()}", file=out)
    for name in ("public_key", "user_data", "nonce"):
        value = getattr(doc, name)
        shown = "(absent)" if value is None else (value.hex() or "(empty)")
        print(f"  {name + ':':<11} {shown}", file=out)


def _cmd_verify(args: argparse.Namespace) -> int:
    roots = _load_roots(args.root)
    policy = _policy(args)
    at = _parse_at(args.at)
    if at == "document" and policy_has_max_age(policy):
        raise UsageError(
            "--max-age cannot be checked with --at document (a document is never old at its "
            "own timestamp)"
        )
    verifier = Verifier(roots)
    try:
        data = _read_input(args.file)
        doc = verifier.verify(data, policy, at=at)
    except PolicyError as exc:
        raise UsageError(exc.message) from None
    except AttestationError as exc:
        if args.json:
            print(json.dumps({"valid": False, "error": {"code": exc.code, "message": exc.message}}))
        else:
            print(f"REJECTED [{exc.code}]: {exc.message}")
            details = exc.to_dict()
            for key in ("expected", "found"):
                if key in details:
                    print(f"  {key}: {json.dumps(details[key])}")
        return EXIT_REJECTED
    if args.json:
        print(json.dumps({"valid": True, **document_json(doc)}))
        return EXIT_VALID
    anchors = ", ".join(
        "AWS Nitro Root-G1" if r == AWS_NITRO_ROOT_G1 else f"root {der_sha256(r)[:16]}..."
        for r in verifier.roots
    )
    if at == "document":
        when = "the document's timestamp"
    else:
        when = at.isoformat() if isinstance(at, datetime) else "now"
    print(f"VALID attestation document (chain to {anchors}, checked at {when})")
    _print_claims(doc, sys.stdout)
    return EXIT_VALID


def _cert_summary(der: bytes) -> dict[str, Any]:
    try:
        cert = x509.load_der_x509_certificate(der)
        return {
            "subject": cert.subject.rfc4514_string(),
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
        }
    except ValueError:
        return {"subject": None, "error": "not a valid DER certificate"}


def _cmd_inspect(args: argparse.Namespace) -> int:
    try:
        doc = parse_document(_read_input(args.file))
    except AttestationError as exc:
        if args.json:
            print(json.dumps({"verified": False, "error": exc.to_dict()}))
        else:
            print(f"NOT A DOCUMENT [{exc.code}]: {exc.message}")
        return EXIT_REJECTED
    certs = [_cert_summary(d) for d in (*doc.cabundle, doc.certificate)]
    if args.json:
        out = {
            "verified": False,
            "warning": _UNVERIFIED,
            **document_json(doc),
            "certificate": certs[-1],
            "cabundle": certs[:-1],
        }
        print(json.dumps(out))
        return EXIT_VALID
    print(f"*** {_UNVERIFIED} ***")
    _print_claims(doc, sys.stdout)
    print("  chain (root first, as claimed):")
    for i, c in enumerate(certs):
        label = f"cabundle[{i}]" if i < len(certs) - 1 else "certificate"
        span = f"{c.get('not_before', '')} .. {c.get('not_after', '')}"
        print(f"    {label}: {c.get('subject')}  {span}")
    return EXIT_VALID


def add_root_option(parser: Any) -> None:
    """``--root PEM`` (repeatable): the trust anchors of ``verify`` and ``connect``."""
    parser.add_argument(
        "--root",
        action="append",
        metavar="PEM",
        help="trust this root instead of the AWS Nitro Root-G1 (repeatable)",
    )


def _register_verify(sub: Any) -> None:
    v = sub.add_parser(
        "verify",
        help="verify a document (signature, chain to the pinned root, policy)",
        description="Input: raw CBOR, base64 or hex (detected). "
        "Exit 0 valid, 1 rejected, 2 usage or I/O error.",
    )
    v.add_argument("file", metavar="FILE|-", help="document file, or - for stdin")
    add_root_option(v)
    v.add_argument(
        "--at",
        metavar="ISO8601|document",
        help="check validity at this time, or at the document's own timestamp (default: now)",
    )
    v.add_argument(
        "--pcr", action="append", default=[], metavar="N=HEX", help="expected PCR (repeatable)"
    )
    v.add_argument("--nonce", metavar="HEX", help="expected nonce")
    v.add_argument("--user-data", metavar="HEX", help="expected user_data")
    v.add_argument("--public-key", metavar="HEX", help="expected public_key")
    v.add_argument("--max-age", type=float, metavar="SECONDS", help="oldest accepted timestamp")
    v.add_argument(
        "--allow-debug", action="store_true", help="accept debug-mode documents (PCR0 all zero)"
    )
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=_cmd_verify)


def _register_inspect(sub: Any) -> None:
    i = sub.add_parser("inspect", help="decode a document WITHOUT verifying it")
    i.add_argument("file", metavar="FILE|-", help="document file, or - for stdin")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=_cmd_inspect)


def _registrar(module: str) -> Callable[[Any], None]:
    def register(sub: Any) -> None:
        # Imported here, not at the top: only when its subcommand runs (or for --help), and
        # each of these modules imports helpers from this one.
        importlib.import_module(f".{module}", __package__).register(sub)

    return register


COMMANDS: dict[str, Callable[[Any], None]] = {
    "verify": _register_verify,
    "inspect": _register_inspect,
    "pcrs": _registrar("_cli_pcrs"),
    "connect": _registrar("_cli_connect"),
    "provenance": _registrar("_cli_provenance"),
}
"""Each subcommand, in --help order, and what adds it to the parser."""
PROG = "python -m attestation"
_FALLBACK_COLUMNS = 80


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, without importing shutil: argparse does so for
    every argument it adds, and shutil loads the bz2 and lzma libraries (~3 ms of start-up)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        stdout = sys.__stdout__
        size = os.get_terminal_size(stdout.fileno()) if stdout else None
    except (AttributeError, ValueError, OSError):
        size = None
    return (size.columns if size else 0) or _FALLBACK_COLUMNS


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help formatter; its default width (the terminal's, less 2) found as above."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
        width: int | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        width = _terminal_columns() - 2 if width is None else width
        super().__init__(prog, indent_increment, max_help_position, width, **kwargs)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with the formatter above, for the subcommands' parsers too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; or, given a known ``command``, the parser with that subcommand alone,
    so that running one subcommand imports and builds nothing of the others."""
    parser = _ArgumentParser(
        prog=PROG,
        description="Verify and inspect AWS Nitro Enclaves attestation documents.",
    )
    # prog given, as argparse would compute it, spares it a help formatter
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", prog=PROG)
    for name, register in COMMANDS.items():
        if command not in COMMANDS or name == command:
            register(sub)
    return parser


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named by ``argv``: its first word, as the top level has no options but
    --help (anything else builds the whole parser, which then reports it)."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(_chosen(argv)).parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MalformedError as exc:  # defensive: should have been reported as a rejection
        print(f"REJECTED [{exc.code}]: {exc.message}")
        return EXIT_REJECTED
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_USAGE
