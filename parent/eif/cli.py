"""``python -m parent eif build ...``: the EIF builder's command line.

Prints nitro-cli's measurements JSON on stdout (and writes it to ``--measurements``); every
failure is one line ``error (CODE): MESSAGE`` on stderr. Exit 0 built, 2 bad input or failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .blobs import DEFAULT_BLOBS
from .build import BuildInputs, build, source_date_epoch
from .errors import EifBuildError
from .limits import DEFAULT_LIMITS
from .signing import KMS_ARN_RE, KmsSigner, LocalSigner, Signer

EXIT_OK, EXIT_FAIL = 0, 2
PROVENANCE_SUFFIX = ".intoto.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m parent eif build",
        description="Build an EIF v4 (nitro-cli's layout) from a flattened image, reproducibly.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--rootfs-tar", type=Path, metavar="FILE", help="a `docker export` tar")
    src.add_argument("--docker-image", metavar="NAME", help="flatten this image via the daemon")
    p.add_argument("--blobs", type=Path, default=DEFAULT_BLOBS, metavar="DIR",
                   help=f"kernel, cmdline, init, nsm.ko (default {DEFAULT_BLOBS})")  # fmt: skip
    p.add_argument("--output", type=Path, required=True, metavar="EIF")
    p.add_argument("--cmd", metavar="JSON", help="command as a JSON list, e.g. '[\"/app\"]'")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="repeatable")
    p.add_argument("--signing-key", metavar="PEM|KMS-ARN", help="P-384 key file or KMS key ARN")
    p.add_argument("--signing-cert", type=Path, metavar="PEM", help="its certificate")
    p.add_argument("--kms-endpoint", metavar="URL", help="KMS endpoint (e.g. the local KMS)")
    p.add_argument("--measurements", type=Path, metavar="JSON", help="also write them here")
    p.add_argument("--name", help="ImageName in the metadata (default: the image's name, or app)")
    p.add_argument("--version", default=None, help="ImageVersion (default: the image id)")
    prov = p.add_argument_group("provenance (written to EIF.intoto.json when a key is known)")
    prov.add_argument("--provenance", type=Path, metavar="FILE", help="where to write it")
    prov.add_argument("--provenance-key", type=Path, metavar="PEM", help="sign with this key…")
    prov.add_argument("--provenance-cert", type=Path, metavar="PEM", help="…and certificate")
    prov.add_argument("--source-repo", help="default: git remote.origin.url")
    prov.add_argument("--source-commit", help="default: git rev-parse HEAD")
    prov.add_argument("--base-image", default="", metavar="REF@sha256:…")
    prov.add_argument("--wheels", type=Path, metavar="DIR|FILE", help="wheels dir or lock file")
    return p


def _cmd(value: str | None) -> list[str] | None:
    if value is None:
        return None
    try:
        cmd = json.loads(value)
    except ValueError:
        raise EifBuildError("usage", "--cmd must be a JSON list of strings") from None
    if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
        raise EifBuildError("usage", "--cmd must be a non-empty JSON list of strings")
    return cmd


def _merge_env(base: Sequence[str], extra: Sequence[str]) -> list[str]:
    """Image ENV then --env, one entry per variable (the later value wins, in place)."""
    merged: dict[str, str] = {}
    for item in [*base, *extra]:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise EifBuildError("usage", f"env entries are K=V, got {item[:40]!r}")
        merged[key] = item
    return list(merged.values())


def _signer(key: str | None, cert: Path | None, endpoint: str | None) -> Signer | None:
    if key is None and cert is None:
        return None
    if key is None or cert is None:
        raise EifBuildError("usage", "--signing-key and --signing-cert go together")
    if KMS_ARN_RE.match(key) or key.startswith("alias/"):
        return KmsSigner.connect(key, cert, endpoint_url=endpoint)
    return LocalSigner.from_files(Path(key), cert)


def run(args: argparse.Namespace) -> int:
    from . import docker
    from .provenance import SourceInfo, envelope, git_source, statement, wheel_hashes, write

    epoch = source_date_epoch()
    signer = _signer(args.signing_key, args.signing_cert, args.kms_endpoint)
    cmd = _cmd(args.cmd)
    prov_signer: Signer | None = signer
    if args.provenance_key or args.provenance_cert:
        if not (args.provenance_key and args.provenance_cert):
            raise EifBuildError("usage", "--provenance-key and --provenance-cert go together")
        prov_signer = LocalSigner.from_files(args.provenance_key, args.provenance_cert)
    with tempfile.TemporaryDirectory(prefix="eif-rootfs-") as tmp:
        if args.docker_image:
            if not docker.daemon_answers():
                raise EifBuildError("docker", "no Docker daemon answers (docker info)")
            config = docker.inspect(args.docker_image)
            rootfs = Path(tmp) / "rootfs.tar"
            docker.export(args.docker_image, rootfs)
            inputs = BuildInputs(
                blobs_dir=args.blobs, rootfs_tar=rootfs,
                cmd=cmd or list(config.cmd), env=_merge_env(config.env, args.env), epoch=epoch,
                image_name=args.name or args.docker_image.rsplit(":", 1)[0],
                image_version=args.version or config.image_id.removeprefix("sha256:"),
                docker_info={"Id": config.image_id, "RepoDigests": list(config.repo_digests)},
                signer=signer, image_arch=config.arch,
                rootfs_label="image", rootfs_digest=config.image_id,
            )  # fmt: skip
        else:
            if cmd is None:
                raise EifBuildError("usage", "--rootfs-tar needs --cmd (a tar has no image config)")
            inputs = BuildInputs(
                blobs_dir=args.blobs, rootfs_tar=args.rootfs_tar, cmd=cmd,
                env=_merge_env([], args.env), epoch=epoch, image_name=args.name or "app",
                image_version=args.version or "unversioned", signer=signer,
            )  # fmt: skip
        result = build(inputs, args.output, DEFAULT_LIMITS)
    measurements = result.measurements()
    text = json.dumps(measurements, indent=2) + "\n"
    if args.measurements:
        try:
            args.measurements.parent.mkdir(parents=True, exist_ok=True)
            args.measurements.write_text(text)
        except OSError as exc:
            raise EifBuildError("io", f"cannot write {args.measurements}: {exc.strerror}") from exc
    where = args.provenance or args.output.with_name(args.output.name + PROVENANCE_SUFFIX)
    if prov_signer is not None:
        repo, commit = git_source()
        source = SourceInfo(
            repository=args.source_repo if args.source_repo is not None else repo,
            commit=args.source_commit if args.source_commit is not None else commit,
            base_image=args.base_image,
            wheels=wheel_hashes(args.wheels) if args.wheels else None,
        )
        write(where, envelope(statement(result, inputs, source), prov_signer))
        print(f"provenance: {where}", file=sys.stderr)
    else:
        print("provenance: not written (no signing key; pass --provenance-key)", file=sys.stderr)
    print(f"built {result.path} (sha384 {result.sha384})", file=sys.stderr)
    sys.stdout.write(text)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m parent eif build ...``; see the module docstring."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] in ("-h", "--help"):
        print("usage: python -m parent eif build --help")
        return EXIT_OK if args_list else EXIT_FAIL
    if args_list[0] != "build":
        print(
            f"python -m parent eif: unknown command {args_list[0]!r} (try: build)", file=sys.stderr
        )
        return EXIT_FAIL
    args = _parser().parse_args(args_list[1:])
    try:
        return run(args)
    except EifBuildError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    raise SystemExit(main())
