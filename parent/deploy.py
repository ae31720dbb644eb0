"""Deploy an EIF to a Nitro-enabled EC2 instance with boto3, and tear it down again.

``deploy`` creates (or reuses, by name): an IAM role + instance profile (trust: ec2; inline
policy: read the two deployment objects in S3, nothing else), an S3 bucket holding the EIF and
the toolkit, a KMS key whose policy releases plaintext only to an enclave with this EIF's PCRs
(``parent.key_policy``), a security group, and one instance with ``EnclaveOptions`` enabled
whose user data installs nitro-cli, sizes the allocator and starts the enclave, the KMS relay
and the proxy as systemd units. ``--dry-run`` prints every API call (with parameters and the
user data) and calls nothing.

    python -m parent.deploy --region us-east-1 --eif build/app.eif --dry-run
    python -m parent.deploy --region us-east-1 --eif build/app.eif --wait
    python -m parent.deploy --region us-east-1 --teardown
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from attestation.errors import CodedError, Kind

from ._userdata import UserDataConfig, render

__all__ = [
    "DeployConfig",
    "DeployError",
    "DeployLimits",
    "Deployer",
    "main",
    "supports_enclaves",
]

TAG_KEY = "nitro-toolkit:deployment"
AL2023_AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
TOOLKIT_PATHS = ("pyproject.toml", "README.md", "attestation", "enclave", "parent")
SOURCE_DATE_EPOCH = 0  # fixed mtimes in the toolkit tarball
DRY_RUN_ACCOUNT = "000000000000"  # stands for the unknown account id in a dry run

# Families whose Nitro instances support enclaves (UG "Requirements": Intel/AMD/Graviton Nitro
# types with >= 4 vCPUs, or >= 2 on Graviton; not T*, Mac, A1, or bare metal < 4 vCPUs).
# Used when DescribeInstanceTypes does not report NitroEnclavesSupport (and in dry runs).
_FAMILIES = """c5 c5a c5ad c5d c5n c6a c6g c6gd c6gn c6i c6id c6in c7a c7g c7gd c7gn c7i c8g
    m5 m5a m5ad m5d m5dn m5n m5zn m6a m6g m6gd m6i m6id m6idn m6in m7a m7g m7gd m7i m8g
    r5 r5a r5ad r5b r5d r5dn r5n r6a r6g r6gd r6i r6id r6idn r6in r7a r7g r7gd r7i r7iz r8g
    x2idn x2iedn x2iezn z1d i3en i4g i4i im4gn is4gen d3 d3en hpc6a hpc7g"""
ENCLAVE_FAMILIES = frozenset(_FAMILIES.split())
GRAVITON = re.compile(r"^[a-z]+\d+g")


class DeployError(CodedError):
    """A deployment problem with a stable ``code`` and a human message."""

    codes = {
        "admin-required": Kind.FORBIDDEN,
        "bad-eif": Kind.BAD_REQUEST,
        "instance-type": Kind.BAD_REQUEST,
        "key-policy": Kind.BAD_REQUEST,
        "memory-too-small": Kind.BAD_REQUEST,
        "no-default-vpc": Kind.NOT_FOUND,
        "propagation-timeout": Kind.UNAVAILABLE,
        "sg-in-use": Kind.CONFLICT,
        "usage": Kind.BAD_REQUEST,
    }


@dataclass(frozen=True)
class DeployLimits:
    """Retries and waits (IAM is eventually consistent; instances take minutes)."""

    propagation_attempts: int = 10  # retries while a new role/profile is not yet visible
    propagation_delay: float = 6.0  # seconds between those retries
    waiter_delay: int = 15
    waiter_attempts: int = 40  # 10 minutes for running / terminated
    sg_delete_attempts: int = 10


@dataclass(frozen=True)
class DeployConfig:
    region: str
    eif: Path | None = None  # required to deploy, not to tear down
    name: str = "nitro-toolkit"
    instance_type: str = "m6i.xlarge"
    ami: str | None = None  # None = latest Amazon Linux 2023 (SSM public parameter)
    cpu_count: int = 2
    memory_mib: int = 1024
    enclave_cid: int = 16
    proxy_port: int = 8080
    bucket: str | None = None  # None = <name>-artifacts-<account>-<region>
    admins: tuple[str, ...] = ()  # None = the caller (root/role ARN)
    key_policy: Mapping[str, Any] | None = None  # None = parent.key_policy from measurements
    bind_role: bool = True  # add PCR3 (instance role ARN) to the key policy
    allow_cidr: str | None = None  # who may reach the proxy port; None = nobody (use SSM)
    ssm: bool = False  # attach AmazonSSMManagedInstanceCore (Session Manager access)
    subnet_id: str | None = None
    key_pair: str | None = None
    source_dir: Path = PROJECT_ROOT
    key_deletion_days: int = 7
    account_id: str | None = None  # only used to spell ARNs in a dry run

    @property
    def role_name(self) -> str:
        return f"{self.name}-parent"

    @property
    def sg_name(self) -> str:
        return f"{self.name}-parent-sg"

    @property
    def alias(self) -> str:
        return f"alias/{self.name}"


@dataclass
class DeployResult:
    region: str
    role_arn: str = ""
    instance_profile_arn: str = ""
    bucket: str = ""
    key_arn: str = ""
    security_group_id: str = ""
    instance_id: str = ""
    pcrs: dict[str, str] = field(default_factory=dict)
    user_data: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.pop("user_data")
        return out


def supports_enclaves(instance_type: str, info: Mapping[str, Any] | None = None) -> bool:
    """True when the type supports Nitro Enclaves: DescribeInstanceTypes' NitroEnclavesSupport
    when reported, else the family list and the vCPU rule."""
    if info is not None and "NitroEnclavesSupport" in info:
        return info["NitroEnclavesSupport"] == "supported"
    family, _, size = instance_type.partition(".")
    if family not in ENCLAVE_FAMILIES:
        return False
    if info is not None and "VCpuInfo" in info:
        vcpus = int(info["VCpuInfo"].get("DefaultVCpus", 0))
        return vcpus >= (2 if GRAVITON.match(family) else 4)
    return size not in ("nano", "micro", "small", "medium", "large") or (
        GRAVITON.match(family) is not None and size == "large"
    )


class Deployer:
    """Runs (or, with ``dry_run``, prints) the API calls of a deployment or a teardown."""

    def __init__(
        self,
        config: DeployConfig,
        *,
        session: Any = None,
        endpoint_url: str | None = None,
        dry_run: bool = False,
        out: TextIO | None = None,
        limits: DeployLimits = DeployLimits(),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.dry_run = dry_run
        self.out = out or sys.stdout
        self.limits = limits
        self.sleep = sleep
        self.endpoint_url = endpoint_url
        self._session = session
        self._clients: dict[str, Any] = {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []  # what was (or would be) called
        self._account = config.account_id or DRY_RUN_ACCOUNT

    # -- plumbing --

    def client(self, service: str) -> Any:
        if service not in self._clients:
            if self._session is None:
                import boto3

                self._session = boto3.Session(region_name=self.config.region)
            self._clients[service] = self._session.client(
                service, region_name=self.config.region, endpoint_url=self.endpoint_url
            )
        return self._clients[service]

    def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        """One API call; in a dry run it is printed and a placeholder answer returned."""
        self.calls.append((service, operation, params))
        if self.dry_run:
            self._print_call(service, operation, params)
            return {}
        method = getattr(self.client(service), _snake(operation))
        return method(**params)

    def _print_call(self, service: str, operation: str, params: Mapping[str, Any]) -> None:
        shown = dict(params)
        user_data = shown.pop("UserData", None)
        if "Body" in shown:
            shown["Body"] = f"<{len(shown['Body'])} bytes>"
        for key in ("PolicyDocument", "Policy", "AssumeRolePolicyDocument"):
            if isinstance(shown.get(key), str):
                shown[key] = json.loads(shown[key])
        print(f"{service}.{operation} {json.dumps(shown, indent=2, default=str)}", file=self.out)
        if user_data is not None:
            print("--- UserData ---", file=self.out)
            print(user_data, file=self.out)
            print("--- end UserData ---", file=self.out)

    def _note(self, text: str) -> None:
        print(f"# {text}", file=self.out)

    def _client_error(self, exc: Exception) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    def _retry(self, what: str, fn: Callable[[], dict[str, Any]], codes: set[str]) -> Any:
        for attempt in range(self.limits.propagation_attempts):
            try:
                return fn()
            except Exception as exc:
                if self._client_error(exc) not in codes:
                    raise
                if attempt + 1 == self.limits.propagation_attempts:
                    raise DeployError(
                        "propagation-timeout", f"{what}: still failing after retries: {exc}"
                    ) from exc
                self.sleep(self.limits.propagation_delay)
        raise AssertionError("unreachable")

    # -- deploy --

    def deploy(self) -> DeployResult:
        cfg = self.config
        if cfg.eif is None:
            raise DeployError("usage", "deploy needs an EIF (--eif build/app.eif)")
        result = DeployResult(region=cfg.region)
        pcrs = self._measure(cfg.eif)
        result.pcrs = {f"PCR{i}": v.hex() for i, v in sorted(pcrs.items())}
        arch = self._check_instance_type()
        account, caller = self._identity()
        self._account = account
        result.bucket = cfg.bucket or f"{cfg.name}-artifacts-{account}-{cfg.region}"
        result.role_arn = self._ensure_role()
        result.instance_profile_arn = self._ensure_instance_profile()
        eif_key, toolkit_key = self._upload(result.bucket, cfg.eif)
        self._allow_artifacts(result.bucket, [eif_key, toolkit_key])
        result.key_arn = self._ensure_key(pcrs, result.role_arn, caller)
        result.security_group_id = self._ensure_security_group()
        result.user_data = render(
            UserDataConfig(
                name=cfg.name,
                region=cfg.region,
                bucket=result.bucket,
                eif_key=eif_key,
                toolkit_key=toolkit_key,
                key_arn=result.key_arn,
                cpu_count=cfg.cpu_count,
                memory_mib=cfg.memory_mib,
                enclave_cid=cfg.enclave_cid,
                proxy_port=cfg.proxy_port,
                proxy_host="0.0.0.0" if cfg.allow_cidr else "127.0.0.1",
            )
        )
        result.instance_id = self._launch(arch, result)
        return result

    def _measure(self, eif: Path) -> dict[int, bytes]:
        from attestation.eif import read_eif
        from attestation.errors import EifError

        try:
            image = read_eif(eif)
        except EifError as exc:
            raise DeployError("bad-eif", f"{eif}: {exc.message}") from exc
        size_mib = -(-image.file_size // (1 << 20))
        if self.config.memory_mib < 4 * size_mib:
            raise DeployError(
                "memory-too-small",
                f"enclave memory {self.config.memory_mib} MiB < 4 x EIF size ({size_mib} MiB); "
                f"nitro-cli would fail with E26: use --memory-mib {4 * size_mib} or more",
            )
        self._note(f"EIF {eif}: PCR0 {image.pcrs[0].hex()}")
        return dict(image.pcrs)

    def _check_instance_type(self) -> str:
        itype = self.config.instance_type
        info: dict[str, Any] | None = None
        if not self.dry_run:
            answer = self.call("ec2", "DescribeInstanceTypes", InstanceTypes=[itype])
            types = answer.get("InstanceTypes", [])
            info = types[0] if types else None
        if not supports_enclaves(itype, info):
            raise DeployError(
                "instance-type",
                f"{itype} does not support Nitro Enclaves; use e.g. m6i.xlarge, c6i.xlarge, "
                "m6g.large (Nitro-based, >= 4 vCPUs on Intel/AMD, >= 2 on Graviton)",
            )
        archs = (info or {}).get("ProcessorInfo", {}).get("SupportedArchitectures", [])
        if "arm64" in archs or (not archs and GRAVITON.match(itype.split(".")[0])):
            return "arm64"
        return "x86_64"

    def _identity(self) -> tuple[str, str]:
        """(account id, caller principal ARN); a dry run cannot ask STS."""
        if self.dry_run:
            account = self.config.account_id or DRY_RUN_ACCOUNT
            if not self.config.account_id:
                self._note(f"account id unknown in a dry run: shown as {account} (--account-id)")
            if not self.config.admins:
                self._note("key administrator unknown in a dry run: pass --admin ROLE_ARN")
            return account, f"arn:aws:iam::{account}:role/YOUR-ADMIN-ROLE"
        ident = self.call("sts", "GetCallerIdentity")
        caller = _principal_of(ident["Arn"], ident["Account"])
        if caller.endswith(":root") and not self.config.admins:
            raise DeployError(
                "admin-required",
                "you are signed in as the account root: pass --admin ROLE_OR_USER_ARN to name "
                "the key administrator (root cannot be one in the generated key policy)",
            )
        return ident["Account"], caller

    def _ensure_role(self) -> str:
        cfg = self.config
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "ec2.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        try:
            answer = self.call(
                "iam",
                "CreateRole",
                RoleName=cfg.role_name,
                AssumeRolePolicyDocument=json.dumps(trust),
                Description=f"Parent instance of nitro-toolkit deployment {cfg.name}",
                Tags=[{"Key": TAG_KEY, "Value": cfg.name}],
            )
        except Exception as exc:
            if self._client_error(exc) != "EntityAlreadyExists":
                raise
            answer = self.call("iam", "GetRole", RoleName=cfg.role_name)
        if cfg.ssm:
            self.call(
                "iam",
                "AttachRolePolicy",
                RoleName=cfg.role_name,
                PolicyArn="arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
            )
        arn = answer.get("Role", {}).get("Arn")
        return str(arn or f"arn:aws:iam::{self._account}:role/{cfg.role_name}")

    def _ensure_instance_profile(self) -> str:
        name = self.config.role_name
        try:
            answer = self.call("iam", "CreateInstanceProfile", InstanceProfileName=name)
            profile = answer.get("InstanceProfile", {})
        except Exception as exc:
            if self._client_error(exc) != "EntityAlreadyExists":
                raise
            profile = self.call("iam", "GetInstanceProfile", InstanceProfileName=name)[
                "InstanceProfile"
            ]
        if not any(r.get("RoleName") == name for r in profile.get("Roles", [])):
            self.call("iam", "AddRoleToInstanceProfile", InstanceProfileName=name, RoleName=name)
        arn = profile.get("Arn")
        return str(arn or f"arn:aws:iam::{self._account}:instance-profile/{name}")

    def _upload(self, bucket: str, eif: Path) -> tuple[str, str]:
        cfg = self.config
        params: dict[str, Any] = {"Bucket": bucket}
        if cfg.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": cfg.region}
        try:
            self.call("s3", "CreateBucket", **params)
            self.call(
                "s3",
                "PutPublicAccessBlock",
                Bucket=bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            )
            self.call(
                "s3",
                "PutBucketTagging",
                Bucket=bucket,
                Tagging={"TagSet": [{"Key": TAG_KEY, "Value": cfg.name}]},
            )
        except Exception as exc:
            if self._client_error(exc) != "BucketAlreadyOwnedByYou":
                raise
        eif_key, toolkit_key = f"{cfg.name}/app.eif", f"{cfg.name}/toolkit.tar.gz"
        self.call("s3", "PutObject", Bucket=bucket, Key=eif_key, Body=eif.read_bytes())
        self.call(
            "s3", "PutObject", Bucket=bucket, Key=toolkit_key, Body=toolkit_tarball(cfg.source_dir)
        )
        return eif_key, toolkit_key

    def _allow_artifacts(self, bucket: str, keys: Sequence[str]) -> None:
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ReadDeploymentArtifacts",
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": [f"arn:aws:s3:::{bucket}/{k}" for k in keys],
                }
            ],
        }
        self.call(
            "iam",
            "PutRolePolicy",
            RoleName=self.config.role_name,
            PolicyName="read-deployment-artifacts",
            PolicyDocument=json.dumps(policy),
        )

    def _key_policy(self, pcrs: Mapping[int, bytes], role_arn: str, caller: str) -> dict:
        cfg = self.config
        if cfg.key_policy is not None:
            return dict(cfg.key_policy)
        from attestation.pcr import pcr3_from_role_arn

        from .key_policy import KeyPolicyError, key_policy  # imported when needed

        wanted = {i: v for i, v in pcrs.items() if i in (0, 1, 2, 8)}
        if cfg.bind_role:
            wanted[3] = pcr3_from_role_arn(role_arn)
        try:
            return key_policy(pcrs=wanted, enclave_role=role_arn, admin=list(cfg.admins) or caller)
        except KeyPolicyError as exc:
            raise DeployError("key-policy", str(exc)) from exc

    def _ensure_key(self, pcrs: Mapping[int, bytes], role_arn: str, caller: str) -> str:
        cfg = self.config
        policy = json.dumps(self._key_policy(pcrs, role_arn, caller))
        existing = None if self.dry_run else self._key_by_alias()
        if existing:
            self._note(f"reusing KMS key {existing}: updating its policy to the new measurements")
            self.call("kms", "PutKeyPolicy", KeyId=existing, PolicyName="default", Policy=policy)
            return existing
        answer = self._retry(
            "CreateKey (the new role may not be visible to KMS yet)",
            lambda: self.call(
                "kms",
                "CreateKey",
                Policy=policy,
                Description=f"nitro-toolkit {cfg.name}: plaintext only to the attested enclave",
                KeyUsage="ENCRYPT_DECRYPT",
                KeySpec="SYMMETRIC_DEFAULT",
                Tags=[{"TagKey": TAG_KEY, "TagValue": cfg.name}],
            ),
            {"MalformedPolicyDocumentException"},
        )
        arn = answer.get("KeyMetadata", {}).get("Arn", "<key-arn>")
        self.call("kms", "CreateAlias", AliasName=cfg.alias, TargetKeyId=arn)
        return str(arn)

    def _key_by_alias(self) -> str | None:
        try:
            meta = self.call("kms", "DescribeKey", KeyId=self.config.alias)["KeyMetadata"]
        except Exception as exc:
            if self._client_error(exc) == "NotFoundException":
                return None
            raise
        if meta.get("KeyState") == "PendingDeletion":
            self.call("kms", "CancelKeyDeletion", KeyId=meta["KeyId"])
            self.call("kms", "EnableKey", KeyId=meta["KeyId"])
        return str(meta["Arn"])

    def _vpc_id(self) -> str:
        cfg = self.config
        if self.dry_run:
            return "<default-vpc-id>"
        if cfg.subnet_id:
            subnets = self.call("ec2", "DescribeSubnets", SubnetIds=[cfg.subnet_id])["Subnets"]
            return str(subnets[0]["VpcId"])
        vpcs = self.call("ec2", "DescribeVpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}])
        if not vpcs["Vpcs"]:
            raise DeployError("no-default-vpc", "no default VPC: pass --subnet-id")
        return str(vpcs["Vpcs"][0]["VpcId"])

    def _ensure_security_group(self) -> str:
        cfg = self.config
        vpc = self._vpc_id()
        found = (
            []
            if self.dry_run
            else self.call(
                "ec2",
                "DescribeSecurityGroups",
                Filters=[
                    {"Name": "group-name", "Values": [cfg.sg_name]},
                    {"Name": "vpc-id", "Values": [vpc]},
                ],
            )["SecurityGroups"]
        )
        if found:
            return str(found[0]["GroupId"])
        answer = self.call(
            "ec2",
            "CreateSecurityGroup",
            GroupName=cfg.sg_name,
            Description=f"nitro-toolkit {cfg.name} parent (proxy port only)",
            VpcId=vpc,
            TagSpecifications=[
                {"ResourceType": "security-group", "Tags": [{"Key": TAG_KEY, "Value": cfg.name}]}
            ],
        )
        group = str(answer.get("GroupId", "<security-group-id>"))
        if cfg.allow_cidr:
            self.call(
                "ec2",
                "AuthorizeSecurityGroupIngress",
                GroupId=group,
                IpPermissions=[
                    {
                        "IpProtocol": "tcp",
                        "FromPort": cfg.proxy_port,
                        "ToPort": cfg.proxy_port,
                        "IpRanges": [{"CidrIp": cfg.allow_cidr, "Description": "proxy clients"}],
                    }
                ],
            )
        return group

    def _ami(self, arch: str) -> str:
        if self.config.ami:
            return self.config.ami
        name = AL2023_AMI_PARAMETER.format(arch=arch)
        if self.dry_run:
            self._note(f"AMI: latest Amazon Linux 2023 from SSM parameter {name}")
            return f"resolve:ssm:{name}"
        return str(self.call("ssm", "GetParameter", Name=name)["Parameter"]["Value"])

    def _launch(self, arch: str, result: DeployResult) -> str:
        cfg = self.config
        params: dict[str, Any] = {
            "ImageId": self._ami(arch),
            "InstanceType": cfg.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "EnclaveOptions": {"Enabled": True},
            "IamInstanceProfile": {"Arn": result.instance_profile_arn},
            "UserData": result.user_data,
            "SecurityGroupIds": [result.security_group_id],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": [
                        {"Key": TAG_KEY, "Value": cfg.name},
                        {"Key": "Name", "Value": cfg.name},
                    ],
                }
            ],
        }
        if cfg.subnet_id:
            params["SubnetId"] = cfg.subnet_id
        if cfg.key_pair:
            params["KeyName"] = cfg.key_pair
        answer = self._retry(
            "RunInstances (the new instance profile may not be visible to EC2 yet)",
            lambda: self.call("ec2", "RunInstances", **params),
            {"InvalidParameterValue"},
        )
        instances = answer.get("Instances", [])
        return str(instances[0]["InstanceId"]) if instances else "<instance-id>"

    def wait_running(self, instance_id: str) -> None:
        if self.dry_run:
            return
        self.client("ec2").get_waiter("instance_running").wait(
            InstanceIds=[instance_id],
            WaiterConfig={
                "Delay": self.limits.waiter_delay,
                "MaxAttempts": self.limits.waiter_attempts,
            },
        )

    # -- teardown --

    def teardown(self, *, keep_bucket: bool = False) -> dict[str, Any]:
        """Delete what ``deploy`` created for this name (found by name and tag)."""
        cfg = self.config
        done: dict[str, Any] = {"region": cfg.region, "name": cfg.name}
        done["terminated_instances"] = self._terminate_instances()
        done["security_group"] = self._delete_security_group()
        done["role"] = self._delete_role_and_profile()
        done["key"] = self._schedule_key_deletion()
        done["bucket"] = None if keep_bucket else self._delete_bucket()
        return done

    def _terminate_instances(self) -> list[str]:
        if self.dry_run:
            self.call("ec2", "DescribeInstances", Filters=self._tag_filter())
            self.call("ec2", "TerminateInstances", InstanceIds=["<instances found above>"])
            return []
        answer = self.call(
            "ec2",
            "DescribeInstances",
            Filters=[
                *self._tag_filter(),
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                },
            ],
        )
        ids = [i["InstanceId"] for r in answer["Reservations"] for i in r["Instances"]]
        if ids:
            self.call("ec2", "TerminateInstances", InstanceIds=ids)
            self.client("ec2").get_waiter("instance_terminated").wait(
                InstanceIds=ids,
                WaiterConfig={
                    "Delay": self.limits.waiter_delay,
                    "MaxAttempts": self.limits.waiter_attempts,
                },
            )
        return ids

    def _tag_filter(self) -> list[dict[str, Any]]:
        return [{"Name": f"tag:{TAG_KEY}", "Values": [self.config.name]}]

    def _delete_security_group(self) -> str | None:
        if self.dry_run:
            self.call("ec2", "DeleteSecurityGroup", GroupName=self.config.sg_name)
            return None
        groups = self.call("ec2", "DescribeSecurityGroups", Filters=self._tag_filter())
        for group in groups["SecurityGroups"]:
            for attempt in range(self.limits.sg_delete_attempts):
                try:
                    self.call("ec2", "DeleteSecurityGroup", GroupId=group["GroupId"])
                    break
                except Exception as exc:
                    if self._client_error(exc) != "DependencyViolation":
                        raise
                    if attempt + 1 == self.limits.sg_delete_attempts:
                        raise DeployError("sg-in-use", str(exc)) from exc
                    self.sleep(self.limits.propagation_delay)
            return str(group["GroupId"])
        return None

    def _delete_role_and_profile(self) -> str | None:
        name = self.config.role_name
        missing = {"NoSuchEntity"}

        def quiet(operation: str, **params: Any) -> Any:
            return self._ignore(missing, lambda: self.call("iam", operation, **params))

        quiet("RemoveRoleFromInstanceProfile", InstanceProfileName=name, RoleName=name)
        quiet("DeleteInstanceProfile", InstanceProfileName=name)
        policies: list[str] = ["read-deployment-artifacts"]
        attached: list[str] = []
        if not self.dry_run:
            listed = quiet("ListRolePolicies", RoleName=name)
            if listed is None:
                return None  # no such role
            policies = listed.get("PolicyNames", [])
            found = quiet("ListAttachedRolePolicies", RoleName=name) or {}
            attached = [a["PolicyArn"] for a in found.get("AttachedPolicies", [])]
        for arn in attached:
            quiet("DetachRolePolicy", RoleName=name, PolicyArn=arn)
        for policy in policies:
            quiet("DeleteRolePolicy", RoleName=name, PolicyName=policy)
        quiet("DeleteRole", RoleName=name)
        return name

    def _ignore(self, codes: set[str], fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            if self._client_error(exc) in codes:
                return None
            raise

    def _schedule_key_deletion(self) -> str | None:
        cfg = self.config
        # the alias stays until KMS deletes the key with it, so a redeploy within the waiting
        # period finds the key again (and cancels the deletion): sealed data stays readable
        if self.dry_run:
            self.call(
                "kms",
                "ScheduleKeyDeletion",
                KeyId="<key behind the alias>",
                PendingWindowInDays=cfg.key_deletion_days,
            )
            return None
        try:
            meta = self.call("kms", "DescribeKey", KeyId=cfg.alias)["KeyMetadata"]
        except Exception as exc:
            if self._client_error(exc) == "NotFoundException":
                return None
            raise
        if meta.get("KeyState") != "PendingDeletion":
            self.call(
                "kms",
                "ScheduleKeyDeletion",
                KeyId=meta["KeyId"],
                PendingWindowInDays=cfg.key_deletion_days,
            )
        return str(meta["Arn"])

    def _delete_bucket(self) -> str | None:
        cfg = self.config
        bucket = cfg.bucket
        if bucket is None:
            account = "<account-id>" if self.dry_run else self._identity()[0]
            bucket = f"{cfg.name}-artifacts-{account}-{cfg.region}"
        if self.dry_run:
            self.call(
                "s3",
                "DeleteObjects",
                Bucket=bucket,
                Delete={
                    "Objects": [
                        {"Key": f"{cfg.name}/app.eif"},
                        {"Key": f"{cfg.name}/toolkit.tar.gz"},
                    ]
                },
            )
            self.call("s3", "DeleteBucket", Bucket=bucket)
            return bucket
        try:
            listed = self.call("s3", "ListObjectsV2", Bucket=bucket, Prefix=f"{cfg.name}/")
        except Exception as exc:
            if self._client_error(exc) == "NoSuchBucket":
                return None
            raise
        keys = [{"Key": o["Key"]} for o in listed.get("Contents", [])]
        if keys:
            self.call("s3", "DeleteObjects", Bucket=bucket, Delete={"Objects": keys})
        rest = self.call("s3", "ListObjectsV2", Bucket=bucket, MaxKeys=1).get("KeyCount", 0)
        if rest:
            self._note(f"bucket {bucket} still holds other objects: kept")
            return None
        self.call("s3", "DeleteBucket", Bucket=bucket)
        return bucket


def toolkit_tarball(source_dir: Path) -> bytes:
    """A reproducible .tar.gz of the toolkit (sorted, fixed mtimes/owners, no caches)."""
    import gzip

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for top in TOOLKIT_PATHS:
            path = source_dir / top
            if not path.exists():
                continue
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                rel = file.relative_to(source_dir)
                if "__pycache__" in rel.parts or file.suffix in (".pyc", ".pyo"):
                    continue
                info = tar.gettarinfo(str(file), arcname=str(rel))
                info.mtime, info.uid, info.gid, info.uname, info.gname = (
                    SOURCE_DATE_EPOCH,
                    0,
                    0,
                    "",
                    "",
                )
                info.mode = 0o644
                with open(file, "rb") as fh:
                    tar.addfile(info, fh)
    return gzip.compress(raw.getvalue(), mtime=SOURCE_DATE_EPOCH)


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


def _principal_of(arn: str, account: str) -> str:
    """KMS principals are IAM ARNs: an assumed-role session becomes its role's ARN."""
    match = re.match(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/", arn)
    if match:
        return f"arn:{match.group(1)}:iam::{match.group(2)}:role/{match.group(3)}"
    return arn if ":iam::" in arn else f"arn:aws:iam::{account}:root"


# --- CLI -----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m parent.deploy",
        description="Deploy an EIF to a Nitro Enclaves-enabled EC2 instance (or tear it down).",
    )
    p.add_argument("--region", required=True)
    p.add_argument("--eif", type=Path, help="the EIF to deploy (build/app.eif)")
    p.add_argument("--name", default="nitro-toolkit", help="deployment name (resource prefix)")
    p.add_argument("--instance-type", default="m6i.xlarge")
    p.add_argument("--ami", help="AMI id (default: latest Amazon Linux 2023)")
    p.add_argument("--cpu-count", type=int, default=2, help="enclave vCPUs")
    p.add_argument("--memory-mib", type=int, default=1024, help="enclave memory")
    p.add_argument("--enclave-cid", type=int, default=16)
    p.add_argument("--proxy-port", type=int, default=8080)
    p.add_argument("--bucket", help="S3 bucket for the artifacts (default: derived, created)")
    p.add_argument("--admin", action="append", default=[], help="key administrator ARN")
    p.add_argument("--key-policy", type=Path, help="use this key policy JSON as is")
    p.add_argument("--no-bind-role", action="store_true", help="leave PCR3 out of the policy")
    p.add_argument("--allow-cidr", help="CIDR allowed to reach the proxy port")
    p.add_argument("--ssm", action="store_true", help="allow SSM Session Manager access")
    p.add_argument("--subnet-id")
    p.add_argument("--key-pair", help="EC2 key pair name for SSH")
    p.add_argument("--account-id", help="dry run: the account id to spell ARNs with")
    p.add_argument("--endpoint-url", help="AWS endpoint override (tests, local stacks)")
    p.add_argument("--dry-run", action="store_true", help="print the API calls, call nothing")
    p.add_argument("--wait", action="store_true", help="wait until the instance runs")
    p.add_argument("--teardown", action="store_true", help="delete the deployment instead")
    p.add_argument("--keep-bucket", action="store_true", help="teardown: keep the S3 bucket")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 done, 1 deployment error (typed, printed), 2 usage error."""
    args = _parser().parse_args(argv)
    if not args.teardown and args.eif is None:
        print("error: --eif FILE is required to deploy", file=sys.stderr)
        return 2
    policy = None
    if args.key_policy:
        try:
            policy = json.loads(args.key_policy.read_text())
        except (OSError, ValueError) as exc:
            print(f"error: cannot read key policy {args.key_policy}: {exc}", file=sys.stderr)
            return 2
    config = DeployConfig(
        region=args.region,
        eif=args.eif,
        name=args.name,
        instance_type=args.instance_type,
        ami=args.ami,
        cpu_count=args.cpu_count,
        memory_mib=args.memory_mib,
        enclave_cid=args.enclave_cid,
        proxy_port=args.proxy_port,
        bucket=args.bucket,
        admins=tuple(args.admin),
        key_policy=policy,
        bind_role=not args.no_bind_role,
        allow_cidr=args.allow_cidr,
        ssm=args.ssm,
        subnet_id=args.subnet_id,
        key_pair=args.key_pair,
        account_id=args.account_id,
    )
    deployer = Deployer(config, endpoint_url=args.endpoint_url, dry_run=args.dry_run)
    if args.dry_run:
        print("# DRY RUN: nothing below is called", file=sys.stdout)
    try:
        if args.teardown:
            summary: Any = deployer.teardown(keep_bucket=args.keep_bucket)
        else:
            result = deployer.deploy()
            if args.wait:
                deployer.wait_running(result.instance_id)
            summary = result.to_dict()
    except DeployError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error [invalid-settings]: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # botocore errors: show code and message, no traceback
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
        print(f"error [aws:{code}]: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
