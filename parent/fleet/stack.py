"""One CloudFormation stack through boto3: create, update, change sets, delete, each waited
for with botocore's waiters while the stack's new events are printed as they arrive."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from botocore.exceptions import ClientError, WaiterError

from attestation.errors import CodedError, Kind

CAPABILITIES = ["CAPABILITY_IAM"]
RESOLVED = frozenset({"ImageId"})
"""SSM-typed parameters: left to their default path, which CloudFormation resolves anew."""
NO_UPDATES = "No updates are to be performed"  # CloudFormation's answer to an empty update


class FleetError(CodedError):
    """A fleet operation that cannot go on, with a stable ``code`` and what to do."""

    codes = {
        "usage": Kind.BAD_REQUEST,
        "admin-required": Kind.BAD_REQUEST,
        "admin-is-enclave-role": Kind.FORBIDDEN,
        "instance-type": Kind.BAD_REQUEST,
        "measurements-mismatch": Kind.BAD_REQUEST,
        "use-rollout": Kind.BAD_REQUEST,
        "no-default-vpc": Kind.NOT_FOUND,
        "no-subnets": Kind.NOT_FOUND,
        "no-stack": Kind.NOT_FOUND,
        "bucket-not-empty": Kind.CONFLICT,
        "refresh-conflict": Kind.CONFLICT,
        "rollout-in-progress": Kind.CONFLICT,
        "refresh-failed": Kind.INTERNAL,
        "stack-failed": Kind.INTERNAL,
        "refresh-timeout": Kind.UNAVAILABLE,
        "stack-timeout": Kind.UNAVAILABLE,
    }


@dataclass(frozen=True)
class FleetLimits:
    """Every wait of the fleet commands, bounded."""

    poll_seconds: float = 10.0  # between two checks of a stack or an instance refresh
    stack_wait_seconds: float = 3600.0  # one create/update/delete
    refresh_wait_seconds: float = 4 * 3600.0  # one instance refresh
    change_set_wait_seconds: float = 300.0


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class Aws:
    """boto3 clients for one region (and endpoint, for moto or a local stack)."""

    def __init__(
        self, region: str, *, endpoint_url: str | None = None, session: Any = None
    ) -> None:
        if session is None:
            import boto3

            session = boto3.Session(region_name=region)
        self.region = region
        self.endpoint_url = endpoint_url
        self._session = session
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self._session.client(
                service, region_name=self.region, endpoint_url=self.endpoint_url
            )
        return self._clients[service]


class Stack:
    """A named stack; ``out`` receives progress lines (a terminal: stderr)."""

    def __init__(
        self,
        aws: Aws,
        name: str,
        *,
        out: TextIO,
        limits: FleetLimits = FleetLimits(),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.aws = aws
        self.name = name
        self.out = out
        self.limits = limits
        self.sleep = sleep
        self.cfn = aws.client("cloudformation")

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- reading --
    def describe(self) -> dict[str, Any] | None:
        """The stack, or None when there is none (or it was deleted)."""
        try:
            stacks = self.cfn.describe_stacks(StackName=self.name)["Stacks"]
        except ClientError as exc:
            if error_code(exc) == "ValidationError" and "does not exist" in str(exc):
                return None
            raise
        live = [s for s in stacks if s["StackStatus"] != "DELETE_COMPLETE"]
        return live[0] if live else None

    def require(self) -> dict[str, Any]:
        stack = self.describe()
        if stack is None:
            raise FleetError("no-stack", f"there is no stack {self.name!r} in {self.aws.region}")
        return stack

    def outputs(self) -> dict[str, str]:
        return {o["OutputKey"]: o["OutputValue"] for o in self.require().get("Outputs", [])}

    def parameters(self) -> dict[str, str]:
        return {
            p["ParameterKey"]: p.get("ParameterValue", "")
            for p in self.require().get("Parameters", [])
        }

    def template(self) -> dict[str, Any]:
        body = self.cfn.get_template(StackName=self.name)["TemplateBody"]
        return json.loads(body) if isinstance(body, str) else dict(body)

    # -- changing --
    def _params(self, values: Mapping[str, str], keep: bool) -> list[dict[str, Any]]:
        """``values``, plus (``keep``) every other current parameter's previous value."""
        out: list[dict[str, Any]] = [
            {"ParameterKey": k, "ParameterValue": str(v)} for k, v in values.items()
        ]
        if keep:
            out += [
                {"ParameterKey": k, "UsePreviousValue": True}
                for k in self.parameters()
                if k not in values and k not in RESOLVED
            ]
        return out

    def create(self, template: Mapping[str, Any], params: Mapping[str, str]) -> None:
        """Create the stack; every parameter is passed explicitly (defaults included), so
        that later updates can keep each with ``UsePreviousValue``."""
        defaults = {
            k: str(v["Default"])
            for k, v in template.get("Parameters", {}).items()
            if "Default" in v and k not in RESOLVED
        }
        params = {**defaults, **params}
        seen = self._event_ids()
        self.say(f"creating stack {self.name} ...")
        self.cfn.create_stack(
            StackName=self.name,
            TemplateBody=json.dumps(template),
            Parameters=self._params(params, keep=False),
            Capabilities=CAPABILITIES,
            Tags=[{"Key": "nitro-toolkit:stack", "Value": self.name}],
        )
        self._wait("stack_create_complete", "create", seen)

    def update(
        self, template: Mapping[str, Any] | None, params: Mapping[str, str], what: str
    ) -> bool:
        """Update the template (None: keep it) and the given parameters (others kept).
        False when CloudFormation finds nothing to change."""
        seen = self._event_ids()
        body: dict[str, Any] = (
            {"UsePreviousTemplate": True}
            if template is None
            else {"TemplateBody": json.dumps(template)}
        )
        try:
            self.cfn.update_stack(
                StackName=self.name,
                Parameters=self._params(params, keep=True),
                Capabilities=CAPABILITIES,
                **body,
            )
        except ClientError as exc:
            if error_code(exc) == "ValidationError" and NO_UPDATES in str(exc):
                self.say(f"{what}: already in place (no stack change)")
                return False
            raise
        self.say(f"{what}: updating stack {self.name} ...")
        self._wait("stack_update_complete", what, seen)
        return True

    def delete(self) -> None:
        seen = self._event_ids()
        self.say(f"deleting stack {self.name} ...")
        self.cfn.delete_stack(StackName=self.name)
        self._wait("stack_delete_complete", "delete", seen)

    def change_set(
        self, template: Mapping[str, Any], params: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """The changes CloudFormation would make; nothing is executed (and nothing kept)."""
        existing = self.describe()
        kind = "UPDATE" if existing else "CREATE"
        name = f"nitro-toolkit-dry-run-{int(time.time())}"
        answer = self.cfn.create_change_set(
            StackName=self.name,
            ChangeSetName=name,
            ChangeSetType=kind,
            TemplateBody=json.dumps(template),
            Parameters=self._params(params, keep=existing is not None),
            Capabilities=CAPABILITIES,
        )
        arn = answer["Id"]
        changes: list[dict[str, Any]] = []
        try:
            try:
                self.cfn.get_waiter("change_set_create_complete").wait(
                    ChangeSetName=arn,
                    WaiterConfig={
                        "Delay": max(1, int(self.limits.poll_seconds)),
                        "MaxAttempts": max(
                            1, int(self.limits.change_set_wait_seconds / self.limits.poll_seconds)
                        ),
                    },
                )
            except WaiterError as exc:  # "didn't contain changes" is a failed change set
                reason = (exc.last_response or {}).get("StatusReason", str(exc))
                self.say(f"change set: {reason}")
            token: dict[str, str] = {}
            while True:
                page = self.cfn.describe_change_set(ChangeSetName=arn, **token)
                changes += [c["ResourceChange"] for c in page.get("Changes", [])]
                if not page.get("NextToken"):
                    break
                token = {"NextToken": page["NextToken"]}
        finally:
            self.cfn.delete_change_set(ChangeSetName=arn)
            if kind == "CREATE":  # the change set left an empty REVIEW_IN_PROGRESS stack
                self.cfn.delete_stack(StackName=self.name)
        return changes

    def settle(self) -> None:
        """Wait (bounded) until no operation runs on the stack, e.g. one that an interrupted
        run started; a failed one has rolled back by then and its step runs again."""
        deadline = time.monotonic() + self.limits.stack_wait_seconds
        seen = self._event_ids()
        while True:
            status = str(self.require()["StackStatus"])
            if not status.endswith("_IN_PROGRESS"):
                return
            if time.monotonic() > deadline:
                raise FleetError("stack-timeout", f"stack {self.name} still {status}")
            self.say(f"stack {self.name} is {status}: waiting for it to finish")
            self.sleep(self.limits.poll_seconds)
            self._show_new_events(seen)

    # -- waiting, with progress --
    def _event_ids(self) -> set[str]:
        if self.describe() is None:
            return set()
        return {e["EventId"] for e in self._events()}

    def _events(self) -> list[dict[str, Any]]:
        try:
            return list(self.cfn.describe_stack_events(StackName=self.name)["StackEvents"])
        except ClientError:
            return []  # deleted meanwhile

    def _show_new_events(self, seen: set[str]) -> None:
        for event in reversed(self._events()):  # oldest first
            if event["EventId"] in seen:
                continue
            seen.add(event["EventId"])
            reason = event.get("ResourceStatusReason")
            when = event["Timestamp"].strftime("%H:%M:%S")
            line = f"  {when} {event['LogicalResourceId']:<28} {event['ResourceStatus']}"
            self.say(line + (f" ({reason})" if reason else ""))

    def _wait(self, waiter_name: str, what: str, seen: set[str]) -> None:
        """One waiter check per poll, the new events printed after each, up to the limit."""
        waiter = self.cfn.get_waiter(waiter_name)
        deadline = time.monotonic() + self.limits.stack_wait_seconds
        while True:
            try:
                waiter.wait(StackName=self.name, WaiterConfig={"Delay": 1, "MaxAttempts": 1})
                self._show_new_events(seen)
                self.say(f"{what}: done")
                return
            except WaiterError as exc:
                self._show_new_events(seen)
                stacks = (exc.last_response or {}).get("Stacks") or [{}]
                status = str(stacks[0].get("StackStatus", ""))
                if not status.endswith("_IN_PROGRESS"):
                    reason = stacks[0].get("StackStatusReason", "")
                    raise FleetError(
                        "stack-failed", f"{what} of stack {self.name}: {status} {reason}".strip()
                    ) from None
                if time.monotonic() > deadline:
                    raise FleetError(
                        "stack-timeout",
                        f"{what} of stack {self.name} still {status} after "
                        f"{self.limits.stack_wait_seconds:.0f} s (it goes on in AWS)",
                    ) from None
                self.sleep(self.limits.poll_seconds)
