"""``python -m parent.eif.reproduce``: rebuild a commit from a fresh clone and compare PCRs.

Steps: clone REPO (default: this checkout) into a temporary directory; check out COMMIT;
SOURCE_DATE_EPOCH = that commit's time (as ``make image`` sets it); make the rootfs (the given
``--rootfs-tar``, else ``make image`` in the clone with a Docker daemon, then ``docker
export``); build with the clone's own builder (``python -m parent eif build``, so the code of
that commit runs) and the pinned blobs; compare PCR0/1/2 (and PCR8 when a certificate is
given) with the published measurements.

Exit 0 the rebuild matches, 1 it does not (each differing PCR printed), 2 it could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from attestation.eif import load_measurements
from attestation.errors import EifError

from .errors import EifBuildError

EXIT_MATCH, EXIT_MISMATCH, EXIT_ERROR = 0, 1, 2
STEP_TIMEOUT_S = 1800.0
"""Longest single step (clone, image build, EIF build)."""


class ReproduceError(Exception):
    """A step failed: exit 2 with this message."""


def _run(args: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         what: str) -> str:  # fmt: skip
    try:
        done = subprocess.run(
            list(args), cwd=cwd, env=env, capture_output=True, text=True,
            timeout=STEP_TIMEOUT_S, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReproduceError(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise ReproduceError(f"{what} failed: {(done.stderr or done.stdout).strip()[-800:]}")
    return done.stdout


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m parent.eif.reproduce", description=__doc__)
    p.add_argument("--commit", required=True, help="commit (or tag) to rebuild")
    p.add_argument("--measurements", required=True, type=Path, help="published measurements")
    p.add_argument("--repo", default=".", help="repository to clone (default: this one)")
    p.add_argument("--blobs", type=Path, default=Path("/usr/share/nitro_enclaves/blobs"))
    p.add_argument("--rootfs-tar", type=Path, help="pinned rootfs (else make image + export)")
    p.add_argument("--cmd", help="JSON command, with --rootfs-tar")
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("--signing-cert", type=Path, help="compare PCR8 for this certificate too")
    p.add_argument("--keep", type=Path, help="keep the rebuilt EIF here")
    p.add_argument(
        "--statement",
        type=Path,
        help="the release's provenance statement: check the blobs against its digests first",
    )
    return p


def check_blobs(statement_path: Path, blobs_dir: Path) -> None:
    """Refuse blobs whose SHA-384 differs from the statement's (the inputs are pinned there).

    The statement is read, not verified: this only says early which input differs."""
    import base64

    from .blobs import load_blobs

    try:
        envelope = json.loads(statement_path.read_bytes()[: 1 << 20])
        statement = json.loads(base64.b64decode(envelope["payload"]))
        deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        recorded = {d["name"]: d["digest"].get("sha384") for d in deps if "digest" in d}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReproduceError(f"cannot read the statement {statement_path}: {exc}") from None
    for name, digest in load_blobs(blobs_dir).digests().items():
        want = recorded.get(f"blobs/{name}")
        if want is not None and want != digest:
            raise ReproduceError(
                f"blob {name} differs from the published build's (sha384 {want[:16]}…, "
                f"here {digest[:16]}…): use the release's blobs"
            )


def rebuild(args: argparse.Namespace, work: Path) -> dict[int, bytes]:
    src = work / "src"
    _run(["git", "clone", "--quiet", "--no-hardlinks", args.repo, str(src)], what="git clone")
    _run(["git", "-C", str(src), "checkout", "--quiet", "--detach", args.commit],
         what=f"git checkout {args.commit}")  # fmt: skip
    epoch = _run(["git", "-C", str(src), "log", "-1", "--format=%ct"], what="git log").strip()
    if not (src / "parent" / "eif" / "cli.py").is_file():
        raise ReproduceError(f"commit {args.commit} has no EIF builder (parent/eif)")
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch, "PYTHONPATH": str(src)}
    build = [sys.executable, "-m", "parent", "eif", "build", "--blobs", str(args.blobs)]
    if args.rootfs_tar:
        if not args.cmd:
            raise ReproduceError("--rootfs-tar needs --cmd")
        build += ["--rootfs-tar", str(args.rootfs_tar.resolve()), "--cmd", args.cmd]
    else:
        image = f"nitro-toolkit-reproduce:{args.commit[:12]}"
        _run(["make", "-C", str(src), "--no-print-directory", "image", f"IMAGE={image}",
              f"SOURCE_DATE_EPOCH={epoch}"], env=env, what="make image")  # fmt: skip
        build += ["--docker-image", image]
        if args.cmd:
            build += ["--cmd", args.cmd]
    for item in args.env:
        build += ["--env", item]
    if args.signing_cert:
        print("note: PCR8 is computed from the certificate; the rebuild is not signed")
    eif = (args.keep or work / "rebuilt.eif").resolve()
    out = _run([*build, "--output", str(eif)], cwd=src, env=env, what="eif build")
    pcrs = load_measurements(json.loads(out))
    if args.signing_cert:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        from attestation.pcr import pcr8_from_certificate

        cert = x509.load_pem_x509_certificate(args.signing_cert.read_bytes())
        pcrs[8] = pcr8_from_certificate(cert.public_bytes(Encoding.DER))
    return pcrs


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        published = load_measurements(args.measurements)
        if args.statement:
            check_blobs(args.statement, args.blobs)
        with tempfile.TemporaryDirectory(prefix="eif-reproduce-") as tmp:
            rebuilt = rebuild(args, Path(tmp))
    except (ReproduceError, EifError, EifBuildError, OSError, ValueError) as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    compared = [i for i in sorted(published) if i in (0, 1, 2) or (i == 8 and 8 in rebuilt)]
    differ = [i for i in compared if published[i] != rebuilt.get(i)]
    for i in compared:
        state = "MATCH" if i not in differ else "DIFFER"
        print(f"PCR{i} {state} published {published[i].hex()}")
        if i in differ:
            print(f"{'':>12}rebuilt   {rebuilt[i].hex()}")
    if differ:
        print(f"reproduce: commit {args.commit} does NOT reproduce the published measurements")
        return EXIT_MISMATCH
    print(f"reproduce: commit {args.commit} reproduces PCR{'/'.join(map(str, compared))}")
    return EXIT_MATCH


if __name__ == "__main__":
    raise SystemExit(main())
