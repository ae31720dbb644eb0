"""The fleet's CloudFormation template: everything a deployment needs, in one stack.

Launch template (enclaves enabled, IMDSv2 required, user data from :mod:`.userdata`), Auto
Scaling group, optionally an NLB whose target group checks the proxy's ``/health``, the KMS
key with a policy from :mod:`.policy` (one statement per accepted release), the instance
role and profile (least privilege), the bucket for the EIF, the toolkit and the sealed-secret
store, and the security groups. The options that made a template are kept in its
``Metadata`` so that ``rollout`` can make the next one from the same options.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..key_policy import KeyPolicyError
from . import userdata
from .instance_types import ARCHS, DEFAULT_INSTANCE_TYPE, Arch, supports_enclaves
from .policy import PIN_MODES, PinMode, release_key_policy, unique_releases

METADATA_KEY = "NitroToolkit"
METADATA_VERSION = 1
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
KEY_DELETION_WINDOW_DAYS = 7
"""The shortest waiting period KMS allows before it deletes a key."""
EIF_PREFIX = "eif/"
TOOLKIT_PREFIX = "toolkit/"
ROLLOUT_PREFIX = "rollout/"
DEFAULT_INGRESS_PORT = 8443
HEALTH_CHECK_PATH = "/health"
BOOT_GRACE_SECONDS = 600  # user data installs packages, then boots the enclave
HEX96 = "^[0-9a-f]{96}$"
ARN_PATTERN = r"^arn:aws[a-z-]*:iam::\d{12}:(role|user)/[\w+=,.@/-]+$"
CIDR_PATTERN = r"^$|^(\d{1,3}\.){3}\d{1,3}/\d{1,2}$"


@dataclass(frozen=True)
class TemplateOptions:
    """Everything that shapes the template (parameters keep the rest changeable)."""

    releases: tuple[dict[int, str], ...]  # accepted releases' pinned PCRs, oldest first
    pin: PinMode = "image"
    arch: Arch = "x86_64"
    instance_type: str | None = None  # default per arch
    desired: int = 1
    min_size: int | None = None  # default: desired
    max_size: int | None = None  # default: desired + 1 (room for an instance refresh)
    nlb: bool = False
    internal_nlb: bool = False
    ingress_port: int = DEFAULT_INGRESS_PORT
    ssm: bool = False  # attach AmazonSSMManagedInstanceCore (Session Manager)
    enclave: userdata.EnclaveSettings = field(default_factory=userdata.EnclaveSettings)

    def __post_init__(self) -> None:
        if self.pin not in PIN_MODES:
            raise ValueError(f"pin must be one of {PIN_MODES}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}")
        if not 0 <= self.min_size_value <= self.desired <= self.max_size_value:
            raise ValueError("capacities must satisfy 0 <= min <= desired <= max")
        if not 1 <= self.ingress_port <= 65535:
            raise ValueError("ingress port must be 1..65535")
        if not supports_enclaves(self.instance_type_value):
            raise ValueError(f"{self.instance_type_value} does not support Nitro Enclaves")
        if self.nlb and self.enclave.proxy_port == self.ingress_port:
            raise ValueError("the proxy port and the ingress port must differ")

    @property
    def instance_type_value(self) -> str:
        return self.instance_type or DEFAULT_INSTANCE_TYPE[self.arch]

    @property
    def min_size_value(self) -> int:
        return self.desired if self.min_size is None else self.min_size

    @property
    def max_size_value(self) -> int:
        return self.desired + 1 if self.max_size is None else self.max_size

    def with_releases(self, releases: Sequence[Mapping[int, str]]) -> TemplateOptions:
        return replace(self, releases=tuple(unique_releases(releases)))

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["releases"] = [{str(i): v for i, v in r.items()} for r in self.releases]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TemplateOptions:
        values = dict(data)
        values["releases"] = tuple(
            {int(i): str(v) for i, v in r.items()} for r in values.get("releases", [])
        )
        values["enclave"] = userdata.EnclaveSettings(**values.get("enclave", {}))
        return cls(**values)


def _ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def _parameters(o: TemplateOptions) -> dict[str, Any]:
    params: dict[str, Any] = {
        "InstanceType": {
            "Type": "String",
            "Default": o.instance_type_value,
            "Description": "EC2 instance type of the parents (must support Nitro Enclaves)",
        },
        "ImageId": {
            "Type": "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>",
            "Default": AMI_PARAMETER.format(arch=o.arch),
            "Description": f"Amazon Linux 2023 AMI ({o.arch}), from the public SSM parameter",
        },
        "DesiredCapacity": {"Type": "Number", "Default": o.desired, "MinValue": 0},
        "MinSize": {"Type": "Number", "Default": o.min_size_value, "MinValue": 0},
        "MaxSize": {"Type": "Number", "Default": o.max_size_value, "MinValue": 1},
        "VpcId": {"Type": "AWS::EC2::VPC::Id", "Description": "VPC of the parents"},
        "SubnetIds": {
            "Type": "List<AWS::EC2::Subnet::Id>",
            "Description": "subnets of the parents (and of the NLB)",
        },
        "KeyAdminArn": {
            "Type": "String",
            "AllowedPattern": ARN_PATTERN,
            "Description": "IAM role or user that administers the KMS key (never decrypts)",
        },
        "AllowedClientCidr": {
            "Type": "String",
            "Default": "",
            "AllowedPattern": CIDR_PATTERN,
            "Description": "clients allowed to reach the ingress port (empty: nobody)",
        },
        "IngressPort": {
            "Type": "Number",
            "Default": o.ingress_port,
            "MinValue": 1,
            "MaxValue": 65535,
            "Description": "TCP port of the attested HTTPS ingress",
        },
        "EifObjectKey": {
            "Type": "String",
            "AllowedPattern": r"^eif/[0-9a-f]{96}\.eif$",
            "Description": "S3 key of the EIF the parents run (in ArtifactBucket)",
        },
        "EifSha384": {
            "Type": "String",
            "AllowedPattern": HEX96,
            "Description": "SHA-384 of the EIF file; parents refuse any other file",
        },
        "ToolkitObjectKey": {
            "Type": "String",
            "AllowedPattern": r"^toolkit/[0-9a-f]{64}\.tar\.gz$",
            "Description": "S3 key of the toolkit archive (parent services)",
        },
    }
    return params


def _object_arn(key_ref: str) -> dict[str, str]:
    return {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ArtifactBucket}/${" + key_ref + "}"}


def _role(o: TemplateOptions) -> dict[str, Any]:
    store = userdata.SECRET_STORE_PREFIX
    bucket_arn = {"Fn::GetAtt": ["ArtifactBucket", "Arn"]}
    statements = [
        {
            "Sid": "ReadTheTwoArtifacts",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": [_object_arn("EifObjectKey"), _object_arn("ToolkitObjectKey")],
        },
        {
            "Sid": "SealedSecretStore",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ArtifactBucket}/" + store + "*"},
        },
        {
            "Sid": "ListSealedSecretStore",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [f"{store}*"]}},
        },
    ]
    props: dict[str, Any] = {
        "Description": {"Fn::Sub": "nitro-toolkit parents of stack ${AWS::StackName}"},
        "AssumeRolePolicyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "ec2.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        },
        # KMS: nothing here; the key policy names this role, under attestation conditions only
        "Policies": [
            {
                "PolicyName": "artifacts-and-sealed-secrets",
                "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
            }
        ],
    }
    if o.ssm:
        props["ManagedPolicyArns"] = [
            {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"}
        ]
    return {"Type": "AWS::IAM::Role", "Properties": props}


def key_policy_of(o: TemplateOptions) -> dict[str, Any]:
    """The key policy in the template (principals as CloudFormation expressions)."""
    return release_key_policy(
        o.releases,
        enclave_role={"Fn::GetAtt": ["InstanceRole", "Arn"]},
        admin=_ref("KeyAdminArn"),
    )


def _security_groups(o: TemplateOptions) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    port = {"Ref": "IngressPort"}
    if o.nlb:
        resources["LoadBalancerSecurityGroup"] = {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "nitro-toolkit NLB: the ingress port from allowed clients",
                "VpcId": _ref("VpcId"),
            },
        }
        resources["ClientsToLoadBalancer"] = {
            "Type": "AWS::EC2::SecurityGroupIngress",
            "Condition": "HasAllowedClientCidr",
            "Properties": {
                "GroupId": {"Fn::GetAtt": ["LoadBalancerSecurityGroup", "GroupId"]},
                "IpProtocol": "tcp",
                "FromPort": port,
                "ToPort": port,
                "CidrIp": _ref("AllowedClientCidr"),
                "Description": "clients to the ingress listener",
            },
        }
        lb_group = {"Fn::GetAtt": ["LoadBalancerSecurityGroup", "GroupId"]}
        ingress = [
            {
                "IpProtocol": "tcp",
                "FromPort": port,
                "ToPort": port,
                "SourceSecurityGroupId": lb_group,
                "Description": "ingress through the NLB",
            },
            {
                "IpProtocol": "tcp",
                "FromPort": o.enclave.proxy_port,
                "ToPort": o.enclave.proxy_port,
                "SourceSecurityGroupId": lb_group,
                "Description": "NLB health checks on the proxy's /health",
            },
        ]
    else:
        ingress = []
        resources["ClientsToInstances"] = {
            "Type": "AWS::EC2::SecurityGroupIngress",
            "Condition": "HasAllowedClientCidr",
            "Properties": {
                "GroupId": {"Fn::GetAtt": ["InstanceSecurityGroup", "GroupId"]},
                "IpProtocol": "tcp",
                "FromPort": port,
                "ToPort": port,
                "CidrIp": _ref("AllowedClientCidr"),
                "Description": "clients to the ingress port",
            },
        }
    resources["InstanceSecurityGroup"] = {
        "Type": "AWS::EC2::SecurityGroup",
        "Properties": {
            "GroupDescription": "nitro-toolkit parents: the ingress port, nothing else",
            "VpcId": _ref("VpcId"),
            **({"SecurityGroupIngress": ingress} if ingress else {}),
        },
    }
    return resources


def _load_balancer(o: TemplateOptions) -> dict[str, Any]:
    return {
        "LoadBalancer": {
            "Type": "AWS::ElasticLoadBalancingV2::LoadBalancer",
            "Properties": {
                "Type": "network",
                "Scheme": "internal" if o.internal_nlb else "internet-facing",
                "Subnets": _ref("SubnetIds"),
                "SecurityGroups": [{"Fn::GetAtt": ["LoadBalancerSecurityGroup", "GroupId"]}],
            },
        },
        "IngressTargetGroup": {
            "Type": "AWS::ElasticLoadBalancingV2::TargetGroup",
            "Properties": {
                "Protocol": "TCP",
                "Port": _ref("IngressPort"),
                "VpcId": _ref("VpcId"),
                "TargetType": "instance",
                "HealthCheckProtocol": "HTTP",
                "HealthCheckPort": str(o.enclave.proxy_port),
                "HealthCheckPath": HEALTH_CHECK_PATH,
                "HealthCheckIntervalSeconds": 10,
                "HealthyThresholdCount": 2,
                "UnhealthyThresholdCount": 2,
                "TargetGroupAttributes": [
                    {"Key": "deregistration_delay.timeout_seconds", "Value": "30"}
                ],
            },
        },
        "IngressListener": {
            "Type": "AWS::ElasticLoadBalancingV2::Listener",
            "Properties": {
                "LoadBalancerArn": _ref("LoadBalancer"),
                "Protocol": "TCP",
                "Port": _ref("IngressPort"),
                "DefaultActions": [
                    {"Type": "forward", "TargetGroupArn": _ref("IngressTargetGroup")}
                ],
            },
        },
    }


def build(o: TemplateOptions) -> dict[str, Any]:
    """The template as a dict (``json.dumps`` it, or :func:`render`)."""
    if not o.releases:
        raise KeyPolicyError("missing-pcr", "the template needs at least one release")
    tags = [{"Key": "nitro-toolkit:stack", "Value": _ref("AWS::StackName")}]
    resources: dict[str, Any] = {
        "ArtifactBucket": {
            "Type": "AWS::S3::Bucket",
            # a bucket holding objects cannot be deleted by the stack: teardown empties it
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "BucketEncryption": {
                    "ServerSideEncryptionConfiguration": [
                        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                    ]
                },
                "PublicAccessBlockConfiguration": {
                    "BlockPublicAcls": True,
                    "BlockPublicPolicy": True,
                    "IgnorePublicAcls": True,
                    "RestrictPublicBuckets": True,
                },
                "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
                "Tags": tags,
            },
        },
        "ArtifactBucketPolicy": {
            "Type": "AWS::S3::BucketPolicy",
            "Properties": {
                "Bucket": _ref("ArtifactBucket"),
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "TlsOnly",
                            "Effect": "Deny",
                            "Principal": "*",
                            "Action": "s3:*",
                            "Resource": [
                                {"Fn::GetAtt": ["ArtifactBucket", "Arn"]},
                                {"Fn::Sub": "${ArtifactBucket.Arn}/*"},
                            ],
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        }
                    ],
                },
            },
        },
        "InstanceRole": _role(o),
        "InstanceProfile": {
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": {"Roles": [_ref("InstanceRole")]},
        },
        "EnclaveKey": {
            "Type": "AWS::KMS::Key",
            "Properties": {
                "Description": {
                    "Fn::Sub": "nitro-toolkit ${AWS::StackName}: for attested enclaves only"
                },
                "KeySpec": "SYMMETRIC_DEFAULT",
                "KeyUsage": "ENCRYPT_DECRYPT",
                "EnableKeyRotation": True,
                "PendingWindowInDays": KEY_DELETION_WINDOW_DAYS,
                "KeyPolicy": key_policy_of(o),
            },
        },
        "EnclaveKeyAlias": {
            "Type": "AWS::KMS::Alias",
            "Properties": {
                "AliasName": {"Fn::Sub": "alias/nitro-toolkit/${AWS::StackName}"},
                "TargetKeyId": _ref("EnclaveKey"),
            },
        },
        **_security_groups(o),
        "LaunchTemplate": {
            "Type": "AWS::EC2::LaunchTemplate",
            "Properties": {
                "LaunchTemplateData": {
                    "ImageId": _ref("ImageId"),
                    "InstanceType": _ref("InstanceType"),
                    "IamInstanceProfile": {"Arn": {"Fn::GetAtt": ["InstanceProfile", "Arn"]}},
                    "EnclaveOptions": {"Enabled": True},
                    "MetadataOptions": {
                        "HttpTokens": "required",
                        "HttpEndpoint": "enabled",
                        "HttpPutResponseHopLimit": 1,
                    },
                    "SecurityGroupIds": [{"Fn::GetAtt": ["InstanceSecurityGroup", "GroupId"]}],
                    "UserData": userdata.user_data(o.enclave),
                    "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
                }
            },
        },
        "AutoScalingGroup": {
            "Type": "AWS::AutoScaling::AutoScalingGroup",
            "Properties": {
                "LaunchTemplate": {
                    "LaunchTemplateId": _ref("LaunchTemplate"),
                    "Version": {"Fn::GetAtt": ["LaunchTemplate", "LatestVersionNumber"]},
                },
                "MinSize": _ref("MinSize"),
                "MaxSize": _ref("MaxSize"),
                "DesiredCapacity": _ref("DesiredCapacity"),
                "VPCZoneIdentifier": _ref("SubnetIds"),
                "HealthCheckType": "ELB" if o.nlb else "EC2",
                "HealthCheckGracePeriod": BOOT_GRACE_SECONDS,
            },
        },
    }
    if o.nlb:
        resources.update(_load_balancer(o))
        resources["AutoScalingGroup"]["Properties"]["TargetGroupARNs"] = [
            _ref("IngressTargetGroup")
        ]
    outputs: dict[str, Any] = {
        "ArtifactBucketName": {"Value": _ref("ArtifactBucket")},
        "SecretStoreUri": {
            "Value": {"Fn::Sub": "s3://${ArtifactBucket}/" + userdata.SECRET_STORE_PREFIX}
        },
        "EnclaveKeyArn": {"Value": {"Fn::GetAtt": ["EnclaveKey", "Arn"]}},
        "EnclaveKeyAlias": {"Value": _ref("EnclaveKeyAlias")},
        "InstanceRoleArn": {"Value": {"Fn::GetAtt": ["InstanceRole", "Arn"]}},
        "AutoScalingGroupName": {"Value": _ref("AutoScalingGroup")},
        "LaunchTemplateId": {"Value": _ref("LaunchTemplate")},
    }
    if o.nlb:
        outputs["LoadBalancerDnsName"] = {"Value": {"Fn::GetAtt": ["LoadBalancer", "DNSName"]}}
        outputs["IngressEndpoint"] = {
            "Value": {"Fn::Sub": "https://${LoadBalancer.DNSName}:${IngressPort}"}
        }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": (
            f"nitro-toolkit fleet: {o.arch} parents with Nitro Enclaves, "
            f"key policy pinned by {o.pin} ({len(o.releases)} release(s) accepted)"
            + (", behind an NLB" if o.nlb else "")
        ),
        "Metadata": {METADATA_KEY: {"version": METADATA_VERSION, "options": o.to_json()}},
        "Parameters": _parameters(o),
        "Conditions": {
            "HasAllowedClientCidr": {"Fn::Not": [{"Fn::Equals": [_ref("AllowedClientCidr"), ""]}]}
        },
        "Resources": resources,
        "Outputs": outputs,
    }


def options_of(template: Mapping[str, Any] | str) -> TemplateOptions:
    """The options a template made by :func:`build` was made from."""
    if isinstance(template, str):
        template = json.loads(template)
    meta = template.get("Metadata", {}).get(METADATA_KEY)  # type: ignore[union-attr]
    if not isinstance(meta, Mapping) or meta.get("version") != METADATA_VERSION:
        raise ValueError("this stack's template was not made by parent.fleet")
    return TemplateOptions.from_json(meta["options"])


def render(template: Mapping[str, Any], fmt: str = "json") -> str:
    """The template as JSON (default) or YAML text."""
    if fmt == "yaml":
        import yaml

        return str(yaml.safe_dump(dict(template), sort_keys=False, width=100))
    return json.dumps(template, indent=2) + "\n"
