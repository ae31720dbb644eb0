"""Deploy, inspect and tear down a fleet stack (rolling releases are in :mod:`.rollout`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from . import artifacts
from .policy import pinned
from .stack import Aws, FleetError, Stack, error_code
from .template import (
    EIF_PREFIX,
    KEY_DELETION_WINDOW_DAYS,
    ROLLOUT_PREFIX,
    TOOLKIT_PREFIX,
    TemplateOptions,
    build,
    options_of,
)

S3_DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys
TOOLKIT_OWNED = (EIF_PREFIX, TOOLKIT_PREFIX, ROLLOUT_PREFIX)
"""Prefixes teardown may empty without --force: everything else (sealed secrets) needs it."""


@dataclass(frozen=True)
class Placement:
    """Stack parameters that are not shaped by the template options."""

    key_admin_arn: str | None = None  # None: the caller (a role or user, never root)
    vpc_id: str | None = None  # None: the default VPC
    subnet_ids: tuple[str, ...] = ()  # empty: the VPC's subnets
    allowed_client_cidr: str = ""


def principal_of(arn: str, account: str) -> str:
    """KMS principals are IAM ARNs: an assumed-role session becomes its role's ARN."""
    match = re.match(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/", arn)
    if match:
        return f"arn:{match.group(1)}:iam::{match.group(2)}:role/{match.group(3)}"
    return arn if ":iam::" in arn else f"arn:aws:iam::{account}:root"


class Fleet:
    """The stack ``name`` and its bucket; every method prints progress to ``stack.out``."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.aws: Aws = stack.aws

    def say(self, text: str) -> None:
        self.stack.say(text)

    # -- inputs --
    def _admin(self, given: str | None) -> str:
        """The key administrator: ``given``, else the caller; never the fleet's enclave role
        (an administrator may rewrite the key policy, so that role would release its own keys).
        """
        admin = given
        if not admin:
            ident = self.aws.client("sts").get_caller_identity()
            admin = principal_of(ident["Arn"], ident["Account"])
            if admin.endswith(":root"):
                raise FleetError(
                    "admin-required",
                    "you are signed in as the account root: pass --key-admin ROLE_OR_USER_ARN",
                )
        admin = principal_of(admin, "") if ":sts::" in admin else admin
        enclave_role = (
            self.stack.outputs().get("InstanceRoleArn") if self.stack.describe() else None
        )
        if enclave_role and admin == enclave_role:
            raise FleetError(
                "admin-is-enclave-role",
                f"{admin} is the fleet's instance (enclave) role: it cannot also be the key "
                "administrator; pass --key-admin with another role or user",
            )
        return admin

    def _network(self, placement: Placement) -> tuple[str, list[str]]:
        ec2 = self.aws.client("ec2")
        vpc = placement.vpc_id
        if vpc is None:
            vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
            if not vpcs:
                raise FleetError("no-default-vpc", "no default VPC: pass --vpc-id and --subnet-id")
            vpc = str(vpcs[0]["VpcId"])
        subnets = list(placement.subnet_ids)
        if not subnets:
            found = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
            subnets = sorted(str(s["SubnetId"]) for s in found)
        if not subnets:
            raise FleetError("no-subnets", f"VPC {vpc} has no subnets: pass --subnet-id")
        return vpc, subnets

    def _check_instance_type(self, instance_type: str) -> None:
        from .instance_types import supports_enclaves

        try:
            types = self.aws.client("ec2").describe_instance_types(InstanceTypes=[instance_type])
            info = (types.get("InstanceTypes") or [None])[0]
        except ClientError as exc:
            raise FleetError(
                "instance-type", f"{instance_type}: {exc.response['Error'].get('Message')}"
            ) from exc
        if not supports_enclaves(instance_type, info):
            raise FleetError("instance-type", f"{instance_type} does not support Nitro Enclaves")

    def upload(self, bucket: str, key: str, body: bytes) -> None:
        self.aws.client("s3").put_object(Bucket=bucket, Key=key, Body=body)
        self.say(f"uploaded s3://{bucket}/{key} ({len(body)} bytes)")

    # -- deploy --
    def parameters(
        self, options: TemplateOptions, eif: artifacts.Eif, toolkit_key: str, placement: Placement
    ) -> dict[str, str]:
        vpc, subnets = self._network(placement)
        return {
            "KeyAdminArn": self._admin(placement.key_admin_arn),
            "VpcId": vpc,
            "SubnetIds": ",".join(subnets),
            "AllowedClientCidr": placement.allowed_client_cidr,
            "EifObjectKey": eif.key,
            "EifSha384": eif.sha384,
            "ToolkitObjectKey": toolkit_key,
            "DesiredCapacity": str(options.desired),
            "MinSize": str(options.min_size_value),
            "MaxSize": str(options.max_size_value),
        }

    def deploy(
        self,
        options: TemplateOptions,
        eif: artifacts.Eif,
        placement: Placement,
        *,
        toolkit: bytes | None = None,
    ) -> dict[str, str]:
        """Create the stack (or update its capacity), with the EIF's release accepted.

        A new stack is made in two updates so no parent boots before its EIF is there:
        create with no instances, upload the EIF and the toolkit, then set the capacity.
        """
        artifacts.check_memory(eif, options.enclave.memory_mib)
        release = pinned(eif.pcrs, options.pin)
        options = options.with_releases([release])
        self._check_instance_type(options.instance_type_value)
        archive = artifacts.toolkit_tarball() if toolkit is None else toolkit
        toolkit_key = artifacts.toolkit_key(archive)
        params = self.parameters(options, eif, toolkit_key, placement)
        existing = self.stack.describe()
        if existing is None:
            empty = {**params, "DesiredCapacity": "0", "MinSize": "0"}
            self.stack.create(build(options), empty)
            bucket = self.stack.outputs()["ArtifactBucketName"]
            self.upload(bucket, eif.key, eif.path.read_bytes())
            self.upload(bucket, toolkit_key, archive)
            self.stack.update(None, params, "capacity")
        else:
            current = options_of(self.stack.template())
            if list(current.releases) != [release]:
                raise FleetError(
                    "use-rollout",
                    f"stack {self.stack.name} runs another release: ship this EIF with "
                    "`python -m parent fleet rollout`",
                )
            bucket = self.stack.outputs()["ArtifactBucketName"]
            self.upload(bucket, toolkit_key, archive)
            self.stack.update(build(options.with_releases(current.releases)), params, "deploy")
        outputs = self.stack.outputs()
        self.say(f"stack {self.stack.name}: {self.stack.require()['StackStatus']}")
        return outputs

    def dry_run_template(self, options: TemplateOptions, eif: artifacts.Eif) -> dict[str, Any]:
        """The template a deploy of ``eif`` would use (no AWS call)."""
        return build(options.with_releases([pinned(eif.pcrs, options.pin)]))

    def change_set(
        self, template: dict[str, Any], eif: artifacts.Eif, placement: Placement
    ) -> list[dict[str, Any]]:
        """CloudFormation's change set for ``template``; nothing is executed or kept."""
        options = options_of(template)
        key = artifacts.toolkit_key(artifacts.toolkit_tarball())
        params = self.parameters(options, eif, key, placement)
        return self.stack.change_set(template, params)

    # -- status --
    def status(self) -> dict[str, Any]:
        from .rollout import read_state

        stack = self.stack.require()
        outputs = self.stack.outputs()
        params = self.stack.parameters()
        options = options_of(self.stack.template())
        out: dict[str, Any] = {
            "stack": self.stack.name,
            "status": stack["StackStatus"],
            "pin": options.pin,
            "accepted_releases": [{f"PCR{i}": v for i, v in r.items()} for r in options.releases],
            "eif_sha384": params.get("EifSha384"),
            "desired_capacity": params.get("DesiredCapacity"),
            "outputs": outputs,
        }
        asg_name = outputs.get("AutoScalingGroupName")
        if asg_name:
            asg = self.aws.client("autoscaling")
            groups = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[asg_name])
            for group in groups["AutoScalingGroups"]:
                out["instances"] = [
                    {
                        "id": i["InstanceId"],
                        "state": i["LifecycleState"],
                        "health": i["HealthStatus"],
                        "launch_template_version": i.get("LaunchTemplate", {}).get("Version"),
                    }
                    for i in group.get("Instances", [])
                ]
        bucket = outputs.get("ArtifactBucketName")
        if bucket:
            state = read_state(self.aws, bucket)
            out["rollout"] = state.to_json() if state else None
        return out

    # -- teardown --
    def teardown(self, *, force: bool = False) -> dict[str, Any]:
        """Delete the stack, then what it cannot delete: the bucket (emptied) and, if the
        stack left it, the key's deletion (scheduled with the shortest window)."""
        stack = self.stack.describe()
        if stack is None:
            self.say(f"there is no stack {self.stack.name!r}: nothing to tear down")
            return {"stack": None}
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        bucket = outputs.get("ArtifactBucketName")
        key_arn = outputs.get("EnclaveKeyArn")
        keys = self._bucket_keys(bucket) if bucket else []
        foreign = [k for k in keys if not k.startswith(TOOLKIT_OWNED)]
        if foreign and not force:
            raise FleetError(
                "bucket-not-empty",
                f"bucket {bucket} holds {len(foreign)} object(s) besides the EIF and toolkit "
                f"(e.g. {foreign[0]}; sealed secrets live under sealed/): nothing was deleted. "
                "Run teardown --force to delete them with everything else.",
            )
        self.stack.delete()
        summary: dict[str, Any] = {"stack": self.stack.name, "deleted_objects": 0}
        if bucket:
            summary["deleted_objects"] = self._empty_and_delete(bucket, keys)
            summary["bucket"] = bucket
        if key_arn:
            summary["key"] = key_arn
            summary["key_deletion_days"] = self._schedule_key_deletion(key_arn)
        return summary

    def _bucket_keys(self, bucket: str) -> list[str]:
        s3 = self.aws.client("s3")
        keys: list[str] = []
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys += [o["Key"] for o in page.get("Contents", [])]
        except ClientError as exc:
            if error_code(exc) == "NoSuchBucket":
                return []
            raise
        return keys

    def _empty_and_delete(self, bucket: str, keys: list[str]) -> int:
        s3 = self.aws.client("s3")
        for start in range(0, len(keys), S3_DELETE_BATCH):
            batch = [{"Key": k} for k in keys[start : start + S3_DELETE_BATCH]]
            s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        try:
            s3.delete_bucket(Bucket=bucket)
        except ClientError as exc:
            if error_code(exc) != "NoSuchBucket":
                raise
        self.say(f"bucket {bucket}: {len(keys)} object(s) deleted, bucket deleted")
        return len(keys)

    def _schedule_key_deletion(self, key_arn: str) -> int | None:
        """The key's deletion window in days, scheduled here if the stack did not (None: the
        key is gone already)."""
        kms = self.aws.client("kms")
        try:
            meta: Mapping[str, Any] = kms.describe_key(KeyId=key_arn)["KeyMetadata"]
        except ClientError as exc:
            if error_code(exc) != "NotFoundException":
                raise
            self.say(f"KMS key {key_arn}: already deleted")
            return None
        if meta.get("KeyState") != "PendingDeletion":
            key_id = meta["KeyId"]
            kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=KEY_DELETION_WINDOW_DAYS)
            meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
        when = meta.get("DeletionDate")
        self.say(
            f"KMS key {key_arn}: deletion scheduled in {KEY_DELETION_WINDOW_DAYS} days, the "
            f"shortest window KMS allows{f' ({when:%Y-%m-%d %H:%M} UTC)' if when else ''}. "
            "Until then `aws kms cancel-key-deletion --key-id ...` keeps it (and what was "
            "sealed under it); after that it is gone for good."
        )
        return KEY_DELETION_WINDOW_DAYS
