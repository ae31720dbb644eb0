"""``python -m parent fleet COMMAND``: template, deploy, rollout, status, teardown, k8s.

Exit 0 done, 1 a fleet or AWS error (``error [code]: message`` on stderr), 2 bad usage.
Progress goes to stderr, results (templates, manifests, JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attestation.errors import CodedError

from ..key_policy import MAX_MEASUREMENTS_BYTES, KeyPolicyError
from .instance_types import ARCHS
from .policy import PIN_MODES
from .template import DEFAULT_INGRESS_PORT, TemplateOptions
from .userdata import EnclaveSettings

LIFECYCLE = ("deploy", "rollout", "status", "teardown")


def _read_measurements(path: str) -> str:
    if path == "-":
        return sys.stdin.read(MAX_MEASUREMENTS_BYTES + 1)
    with open(path, encoding="utf-8") as fh:
        return fh.read(MAX_MEASUREMENTS_BYTES + 1)


def add_template_options(p: argparse.ArgumentParser, *, desired: int = 1) -> None:
    g = p.add_argument_group("template")
    g.add_argument("--pin", choices=PIN_MODES, default="image", help="PCRs the key pins")
    g.add_argument("--arch", choices=ARCHS, default="x86_64")
    g.add_argument("--instance-type", help="default: m6i.xlarge (x86_64), m6g.large (arm64)")
    g.add_argument("--desired", type=int, default=desired, help="desired parents")
    g.add_argument("--min", dest="min_size", type=int, help="default: --desired")
    g.add_argument("--max", dest="max_size", type=int, help="default: --desired + 1")
    g.add_argument("--nlb", action="store_true", help="a Network Load Balancer in front")
    g.add_argument("--internal", action="store_true", help="the NLB is internal")
    g.add_argument("--ingress-port", type=int, default=DEFAULT_INGRESS_PORT)
    g.add_argument("--ssm", action="store_true", help="allow SSM Session Manager access")
    g.add_argument("--cpu-count", type=int, default=2, help="enclave vCPUs")
    g.add_argument("--memory-mib", type=int, default=1024, help="enclave memory")
    g.add_argument("--enclave-cid", type=int, default=16)
    g.add_argument("--proxy-port", type=int, default=8080)


def template_options(
    args: argparse.Namespace, releases: Sequence[dict[int, str]]
) -> TemplateOptions:
    return TemplateOptions(
        releases=tuple(releases),
        pin=args.pin,
        arch=args.arch,
        instance_type=args.instance_type,
        desired=args.desired,
        min_size=args.min_size,
        max_size=args.max_size,
        nlb=args.nlb,
        internal_nlb=args.internal,
        ingress_port=args.ingress_port,
        ssm=args.ssm,
        enclave=EnclaveSettings(
            cpu_count=args.cpu_count,
            memory_mib=args.memory_mib,
            enclave_cid=args.enclave_cid,
            proxy_port=args.proxy_port,
            proxy_public=args.nlb,
        ),
    )


def add_stack_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stack-name", required=True)
    p.add_argument("--region", help="default: the AWS configuration's region")
    p.add_argument("--endpoint-url", help="AWS endpoint override (moto, local stacks)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m parent fleet", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("template", help="print the CloudFormation template")
    t.add_argument(
        "--measurements",
        action="append",
        default=[],
        metavar="FILE",
        help="nitro-cli measurements JSON; repeat to accept several releases (oldest first)",
    )
    t.add_argument("--eif", type=Path, action="append", default=[], help="measure an EIF instead")
    t.add_argument("--format", choices=("json", "yaml"), default="json")
    add_template_options(t)

    d = sub.add_parser("deploy", help="create the stack (or update its capacity)")
    add_stack_options(d)
    d.add_argument("--eif", type=Path, required=True)
    d.add_argument("--measurements", help="check the EIF against nitro-cli's measurements")
    d.add_argument("--key-admin", help="key administrator ARN (default: you)")
    d.add_argument("--vpc-id", help="default: the default VPC")
    d.add_argument("--subnet-id", action="append", default=[], help="default: the VPC's")
    d.add_argument("--allowed-cidr", default="", help="clients allowed to the ingress port")
    d.add_argument("--dry-run", action="store_true", help="print the template and change set")
    add_template_options(d)

    r = sub.add_parser("rollout", help="roll a new EIF out (resumable)")
    add_stack_options(r)
    r.add_argument("--eif", type=Path, required=True)
    r.add_argument("--measurements", help="check the EIF against nitro-cli's measurements")
    r.add_argument("--min-healthy-percentage", type=int, default=90)
    r.add_argument("--stop-after", type=int, choices=range(1, 5), help="stop after step N")

    s = sub.add_parser("status", help="the stack, its releases, instances and rollout")
    add_stack_options(s)

    x = sub.add_parser("teardown", help="delete the stack, the bucket; schedule key deletion")
    add_stack_options(x)
    x.add_argument("--force", action="store_true", help="also delete sealed secrets in S3")

    k = sub.add_parser("k8s", help="print the EKS manifest set (YAML)")
    from .k8s import add_options

    add_options(k)
    return p


def _region(args: argparse.Namespace) -> str:
    if args.region:
        return str(args.region)
    import boto3

    region = boto3.Session().region_name
    if not region:
        raise CodedError("usage", "no region: pass --region or configure one (AWS_REGION)")
    return str(region)


def _measured(args: argparse.Namespace) -> tuple[Any, Any]:
    from .artifacts import measure_eif

    eif = measure_eif(args.eif)
    measurements = _read_measurements(args.measurements) if args.measurements else None
    if measurements is not None:
        from .policy import pinned

        if pinned(measurements, args.pin) != pinned(eif.pcrs, args.pin):
            raise CodedError(
                "measurements-mismatch",
                f"{args.measurements} does not describe {args.eif} (pinned PCRs differ)",
            )
    return eif, measurements


def _run(args: argparse.Namespace) -> int:
    from . import template
    from .policy import pinned

    if args.command == "template":
        sources: list[Any] = [_read_measurements(m) for m in args.measurements]
        if args.eif:
            from .artifacts import measure_eif

            sources += [measure_eif(path).pcrs for path in args.eif]
        if not sources:
            raise CodedError("usage", "give --measurements FILE (or --eif FILE)")
        options = template_options(args, [pinned(s, args.pin) for s in sources])
        sys.stdout.write(template.render(template.build(options), args.format))
        return 0
    if args.command == "k8s":
        from .k8s import run

        return run(args)

    from .lifecycle import Fleet, Placement
    from .stack import Aws, Stack

    stack = Stack(
        Aws(_region(args), endpoint_url=args.endpoint_url), args.stack_name, out=sys.stderr
    )
    fleet = Fleet(stack)
    result: Any
    if args.command == "deploy":
        eif, _ = _measured(args)
        options = template_options(args, [pinned(eif.pcrs, args.pin)])
        placement = Placement(
            key_admin_arn=args.key_admin,
            vpc_id=args.vpc_id,
            subnet_ids=tuple(args.subnet_id),
            allowed_client_cidr=args.allowed_cidr,
        )
        if args.dry_run:
            tpl = fleet.dry_run_template(options, eif)
            sys.stdout.write(template.render(tpl))  # the template on stdout, the changes below
            sys.stdout.flush()
            changes = fleet.change_set(tpl, eif, placement)
            print(f"change set for stack {args.stack_name} (nothing executed):", file=sys.stderr)
            for change in changes:
                replace = change.get("Replacement")
                print(
                    f"  {change.get('Action', '?'):<7} {change.get('LogicalResourceId', '?'):<28}"
                    f" {change.get('ResourceType', '')}"
                    + (f" (replacement: {replace})" if replace else ""),
                    file=sys.stderr,
                )
            return 0
        else:
            result = fleet.deploy(options, eif, placement)
    elif args.command == "rollout":
        from .artifacts import measure_eif
        from .rollout import Rollout

        eif = measure_eif(args.eif)
        measurements = _read_measurements(args.measurements) if args.measurements else None
        rollout = Rollout(
            fleet, min_healthy_percentage=args.min_healthy_percentage, stop_after=args.stop_after
        )
        state = rollout.run(eif, measurements)
        result = {"complete": state is None, "state": state.to_json() if state else None}
    elif args.command == "status":
        result = fleet.status()
    else:
        result = fleet.teardown(force=args.force)
    print(json.dumps(result, indent=2, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one fleet command; see the module docstring for exit codes."""
    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.parsers import ResponseParserError

    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except KeyPolicyError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except CodedError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2 if exc.code == "usage" else 1
    except (ValueError, OSError) as exc:
        print(f"error [usage]: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        err = exc.response.get("Error", {})
        print(f"error [aws:{err.get('Code')}]: {err.get('Message')}", file=sys.stderr)
        return 1
    except (BotoCoreError, ResponseParserError) as exc:
        print(f"error [aws]: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
