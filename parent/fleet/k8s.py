"""An EKS manifest set for the AWS Nitro Enclaves device plugin path (on paper).

A Deployment whose pods request ``aws.ec2.nitro/nitro_enclaves`` and 2 MiB hugepages for the
enclave's memory, on nodes labelled by the device plugin. An init container fetches the EIF
from S3 and checks its SHA-384; the ``enclave`` container starts it with ``nitro-cli
run-enclave`` and stays while it runs; the parent services (KMS relay, credentials
hand-off, proxy, ingress) run beside it. Generated from the same measurements as the stack
(the PCRs ride along as annotations). ``kubernetes-validate`` checks the schema in the tests;
what only a cluster can show is listed in docs/deploy.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .policy import PIN_MODES, pinned
from .template import DEFAULT_INGRESS_PORT, EIF_PREFIX, HEALTH_CHECK_PATH

DEVICE_RESOURCE = "aws.ec2.nitro/nitro_enclaves"
NODE_LABEL = "aws-nitro-enclaves-k8s-dp"  # set on enclave-enabled nodes for the device plugin
HUGEPAGES_RESOURCE = "hugepages-2Mi"
APP_LABEL = "nitro-toolkit-parent"
ANNOTATION_PREFIX = "nitro-toolkit.dev/"
EIF_DIR = "/eif"
CONFIG_DIR = "/etc/nitro-toolkit"
RELAY_PORT = 8000
AWS_CLI_IMAGE = "public.ecr.aws/aws-cli/aws-cli:2.17.0"


@dataclass(frozen=True)
class PodSettings:
    image: str  # the parent image: nitro-cli and the toolkit installed
    bucket: str
    eif_sha384: str
    region: str
    service_account_role_arn: str
    replicas: int = 2
    namespace: str = "nitro-toolkit"
    cpu_count: int = 2
    memory_mib: int = 1024
    enclave_cid: int = 16
    proxy_port: int = 8080
    ingress_port: int = DEFAULT_INGRESS_PORT
    enclave_ingress_port: int = 8443


def _container(name: str, image: str, args: list[str], **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "image": image,
        "command": ["python", "-m", "parent"],
        "args": args,
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    }
    out.update(extra)
    return out


def manifests(s: PodSettings, pcrs: Mapping[int, str], pin: str) -> list[dict[str, Any]]:
    """ConfigMap, ServiceAccount, Deployment and Service, in apply order."""
    labels = {"app.kubernetes.io/name": APP_LABEL}
    meta = {"namespace": s.namespace, "labels": labels}
    annotations = {f"{ANNOTATION_PREFIX}pcr{i}": v for i, v in sorted(pcrs.items())}
    annotations[f"{ANNOTATION_PREFIX}eif-sha384"] = s.eif_sha384
    annotations[f"{ANNOTATION_PREFIX}pin"] = pin
    eif = f"{EIF_DIR}/app.eif"
    fetch = (
        f"aws s3 cp --region {s.region} s3://{s.bucket}/{EIF_PREFIX}{s.eif_sha384}.eif {eif} && "
        f'echo "{s.eif_sha384}  {eif}" | sha384sum -c -'
    )
    run_enclave = (
        f"nitro-cli run-enclave --eif-path {eif} --cpu-count {s.cpu_count} "
        f"--memory {s.memory_mib} --enclave-cid {s.enclave_cid} --enclave-name nitro-toolkit && "
        'while nitro-cli describe-enclaves | grep -q \'"State": "RUNNING"\'; do sleep 10; done'
    )
    mounts_config = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP_LABEL, **meta, "annotations": annotations},
        "spec": {
            "replicas": s.replicas,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    "serviceAccountName": APP_LABEL,
                    "nodeSelector": {NODE_LABEL: "enabled"},
                    "initContainers": [
                        {
                            "name": "fetch-eif",
                            "image": AWS_CLI_IMAGE,
                            "command": ["sh", "-c", fetch],
                            "volumeMounts": [{"name": "eif", "mountPath": EIF_DIR}],
                        }
                    ],
                    "containers": [
                        {
                            "name": "enclave",
                            "image": s.image,
                            "command": ["sh", "-c", run_enclave],
                            "lifecycle": {
                                "preStop": {
                                    "exec": {
                                        "command": [
                                            "nitro-cli",
                                            "terminate-enclave",
                                            "--enclave-name",
                                            "nitro-toolkit",
                                        ]
                                    }
                                }
                            },
                            "resources": {
                                "limits": {
                                    DEVICE_RESOURCE: "1",
                                    HUGEPAGES_RESOURCE: f"{s.memory_mib}Mi",
                                    "memory": "256Mi",
                                    "cpu": "250m",
                                },
                                "requests": {
                                    DEVICE_RESOURCE: "1",
                                    HUGEPAGES_RESOURCE: f"{s.memory_mib}Mi",
                                    "memory": "256Mi",
                                    "cpu": "250m",
                                },
                            },
                            "volumeMounts": [
                                {"name": "eif", "mountPath": EIF_DIR, "readOnly": True},
                                {"name": "hugepages", "mountPath": "/dev/hugepages"},
                                {"name": "nitro-log", "mountPath": "/var/log/nitro_enclaves"},
                            ],
                        },
                        _container(
                            "kms-relay",
                            s.image,
                            [
                                "kms-relay",
                                str(RELAY_PORT),
                                f"kms.{s.region}.amazonaws.com",
                                "443",
                                "--config",
                                f"{CONFIG_DIR}/vsock-proxy.yaml",
                            ],
                            volumeMounts=mounts_config,
                        ),
                        _container(
                            "credentials",
                            s.image,
                            [
                                "credentials",
                                "--enclave-cid",
                                str(s.enclave_cid),
                                "--region",
                                s.region,
                            ],
                        ),
                        _container(
                            "proxy",
                            s.image,
                            [
                                "proxy",
                                "--enclave-cid",
                                str(s.enclave_cid),
                                "--port",
                                str(s.proxy_port),
                                "--host",
                                "0.0.0.0",
                            ],
                            ports=[{"name": "proxy", "containerPort": s.proxy_port}],
                            readinessProbe={
                                "httpGet": {"path": HEALTH_CHECK_PATH, "port": s.proxy_port},
                                "periodSeconds": 10,
                            },
                        ),
                        _container(
                            "ingress",
                            s.image,
                            [
                                "ingress",
                                "--listen",
                                f"0.0.0.0:{s.ingress_port}",
                                "--enclave-cid",
                                str(s.enclave_cid),
                                "--enclave-port",
                                str(s.enclave_ingress_port),
                            ],
                            ports=[{"name": "ingress", "containerPort": s.ingress_port}],
                        ),
                    ],
                    "volumes": [
                        {"name": "eif", "emptyDir": {}},
                        {"name": "hugepages", "emptyDir": {"medium": "HugePages-2Mi"}},
                        {"name": "nitro-log", "emptyDir": {}},
                        {"name": "config", "configMap": {"name": APP_LABEL}},
                    ],
                },
            },
        },
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": APP_LABEL, **meta},
            "data": {
                "vsock-proxy.yaml": (
                    f"allowlist:\n- {{address: kms.{s.region}.amazonaws.com, port: 443}}\n"
                )
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": APP_LABEL,
                **meta,
                # IRSA: the pod's role, named by the key policy (as the stack's instance role is)
                "annotations": {"eks.amazonaws.com/role-arn": s.service_account_role_arn},
            },
        },
        deployment,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": APP_LABEL,
                **meta,
                "annotations": {
                    "service.beta.kubernetes.io/aws-load-balancer-type": "external",
                    "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip",
                },
            },
            "spec": {
                "type": "LoadBalancer",
                "selector": labels,
                "ports": [
                    {
                        "name": "ingress",
                        "port": s.ingress_port,
                        "targetPort": "ingress",
                        "protocol": "TCP",
                    }
                ],
            },
        },
    ]


def render(docs: list[dict[str, Any]]) -> str:
    import yaml

    return str(yaml.safe_dump_all(docs, sort_keys=False, width=100))


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--measurements", required=True, help="nitro-cli measurements JSON")
    p.add_argument("--pin", choices=PIN_MODES, default="image")
    p.add_argument("--eif-sha384", required=True, help="SHA-384 of the EIF file")
    p.add_argument("--bucket", required=True, help="bucket holding eif/<sha384>.eif")
    p.add_argument("--image", required=True, help="parent image (nitro-cli + the toolkit)")
    p.add_argument("--region", required=True)
    p.add_argument("--role-arn", required=True, help="IRSA role named by the key policy")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--namespace", default="nitro-toolkit")
    p.add_argument("--cpu-count", type=int, default=2)
    p.add_argument("--memory-mib", type=int, default=1024)
    p.add_argument("--enclave-cid", type=int, default=16)
    p.add_argument("--ingress-port", type=int, default=DEFAULT_INGRESS_PORT)


def run(args: argparse.Namespace) -> int:
    from .cli import _read_measurements

    pcrs = pinned(_read_measurements(args.measurements), args.pin)
    settings = PodSettings(
        image=args.image,
        bucket=args.bucket,
        eif_sha384=args.eif_sha384.lower(),
        region=args.region,
        service_account_role_arn=args.role_arn,
        replicas=args.replicas,
        namespace=args.namespace,
        cpu_count=args.cpu_count,
        memory_mib=args.memory_mib,
        enclave_cid=args.enclave_cid,
        ingress_port=args.ingress_port,
    )
    sys.stdout.write(render(manifests(settings, pcrs, args.pin)))
    return 0
