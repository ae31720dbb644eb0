"""Rolling releases: a new EIF reaches every parent while the KMS key policy moves with it.

Five steps, in order, each recorded in ``rollout/state.json`` in the stack's bucket as it
completes, so that running the same rollout again continues where it stopped:

1. upload the EIF (named by its SHA-384);
2. update the key policy to accept the old and the new release;
3. update the launch template to the new EIF (object key and SHA-384);
4. start an instance refresh and wait for it;
5. only then drop the old release from the key policy.

A failed refresh stops before step 5: the policy still accepts both releases, so the old
parents keep working. In ``signer`` pin mode a newly signed image with an accepted PCR8
changes no key policy (steps 2 and 5 find nothing to change). Rolling back is rolling out the
old EIF.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from botocore.exceptions import ClientError

from . import artifacts
from .lifecycle import Fleet
from .policy import pinned, unique_releases
from .stack import Aws, FleetError, error_code
from .template import BOOT_GRACE_SECONDS, ROLLOUT_PREFIX, build, options_of

STATE_KEY = f"{ROLLOUT_PREFIX}state.json"
STEPS = (
    "upload the EIF",
    "key policy accepts the old and the new release",
    "launch template runs the new EIF",
    "instance refresh",
    "key policy accepts only the new release",
)
DEFAULT_MIN_HEALTHY_PERCENTAGE = 90
REFRESH_DONE = "Successful"
REFRESH_FAILED = frozenset({"Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed"})


@dataclass
class RolloutState:
    """What a rollout is doing, durable between runs."""

    target_eif_key: str
    target_eif_sha384: str
    target_release: dict[str, str]  # PCR index -> hex
    previous_releases: list[dict[str, str]]
    completed: list[int] = field(default_factory=list)
    refresh_id: str | None = None
    failure: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutState:
        return cls(**dict(data))


def _release(data: Mapping[Any, str]) -> dict[int, str]:
    return {int(i): str(v) for i, v in data.items()}


def _stored(release: Mapping[int, str]) -> dict[str, str]:
    return {str(i): v for i, v in release.items()}


def read_state(aws: Aws, bucket: str) -> RolloutState | None:
    try:
        body = aws.client("s3").get_object(Bucket=bucket, Key=STATE_KEY)["Body"].read()
    except ClientError as exc:
        if error_code(exc) in ("NoSuchKey", "404", "NoSuchBucket"):
            return None
        raise
    return RolloutState.from_json(json.loads(body))


class InstanceRefresher(Protocol):
    """Replaces every instance of an Auto Scaling group with its current launch template."""

    def start(self, group: str, min_healthy_percentage: int, warmup_seconds: int) -> str: ...

    def describe(self, group: str, refresh_id: str) -> tuple[str, int | None, str]:
        """(status, percentage complete, status reason)."""
        ...


class AutoScalingRefresher:
    """EC2 Auto Scaling's instance refresh (StartInstanceRefresh)."""

    def __init__(self, aws: Aws) -> None:
        self.asg = aws.client("autoscaling")

    def start(self, group: str, min_healthy_percentage: int, warmup_seconds: int) -> str:
        try:
            answer = self.asg.start_instance_refresh(
                AutoScalingGroupName=group,
                Strategy="Rolling",
                Preferences={
                    "MinHealthyPercentage": min_healthy_percentage,
                    "InstanceWarmup": warmup_seconds,
                },
            )
            return str(answer["InstanceRefreshId"])
        except ClientError as exc:
            if error_code(exc) != "InstanceRefreshInProgress":
                raise
        # one is already running (started by an interrupted run): follow it
        refreshes = self.asg.describe_instance_refreshes(AutoScalingGroupName=group)
        for refresh in refreshes.get("InstanceRefreshes", []):
            if refresh["Status"] in ("Pending", "InProgress"):
                return str(refresh["InstanceRefreshId"])
        raise FleetError("refresh-conflict", f"{group}: a refresh is in progress but not found")

    def describe(self, group: str, refresh_id: str) -> tuple[str, int | None, str]:
        answer = self.asg.describe_instance_refreshes(
            AutoScalingGroupName=group, InstanceRefreshIds=[refresh_id]
        )
        (refresh,) = answer["InstanceRefreshes"]
        return (
            str(refresh["Status"]),
            refresh.get("PercentageComplete"),
            str(refresh.get("StatusReason", "")),
        )


class Rollout:
    """One rollout of ``eif`` to the fleet; ``stop_after`` ends the run after that step."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        refresher: InstanceRefresher | None = None,
        min_healthy_percentage: int = DEFAULT_MIN_HEALTHY_PERCENTAGE,
        warmup_seconds: int = BOOT_GRACE_SECONDS,
        stop_after: int | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        if not 0 <= min_healthy_percentage <= 100:
            raise FleetError("usage", "--min-healthy-percentage must be 0..100")
        self.fleet = fleet
        self.stack = fleet.stack
        self.refresher = refresher or AutoScalingRefresher(fleet.aws)
        self.min_healthy = min_healthy_percentage
        self.warmup = warmup_seconds
        self.stop_after = stop_after
        self.on_step = on_step  # called once a step is done and recorded
        self.steps_run: list[int] = []  # the steps this run executed (not skipped as done)

    def say(self, text: str) -> None:
        self.stack.say(text)

    def run(self, eif: artifacts.Eif, measurements: Any = None) -> RolloutState | None:
        """Run (or resume) the rollout; None once it is complete."""
        self.stack.settle()
        template = self.stack.template()
        options = options_of(template)
        target = pinned(eif.pcrs, options.pin)
        if measurements is not None and pinned(measurements, options.pin) != target:
            raise FleetError(
                "measurements-mismatch",
                "the measurements file does not describe this EIF (pinned PCRs differ)",
            )
        artifacts.check_memory(eif, options.enclave.memory_mib)
        bucket = self.stack.outputs()["ArtifactBucketName"]
        self._say_mode(options.pin, list(options.releases), target)
        state = self._state(bucket, eif, target, list(options.releases))
        if state is None:
            return None
        for number, name in enumerate(STEPS, start=1):
            if number in state.completed:
                self.say(f"step {number}/5 ({name}): done before")
                continue
            self.say(f"step {number}/5 ({name}) ...")
            self.steps_run.append(number)
            getattr(self, f"_step{number}")(bucket, eif, state)
            if number == len(STEPS):
                self.fleet.aws.client("s3").delete_object(Bucket=bucket, Key=STATE_KEY)
                self.say("rollout complete: the fleet runs the new EIF, the key accepts only it")
                if self.on_step:
                    self.on_step(number)
                return None
            state.completed.append(number)
            self._save(bucket, state)
            if self.on_step:
                self.on_step(number)
            if self.stop_after == number:
                self.say(f"stopped after step {number} as asked: run the same rollout to continue")
                return state
        return None  # pragma: no cover - the loop returns at step 5

    # -- state --
    def _say_mode(self, pin: str, accepted: list[dict[int, str]], target: dict[int, str]) -> None:
        if pin == "signer":
            if target in accepted:
                self.say(
                    "signed-release mode: the key policy pins PCR8 (the signing certificate) "
                    "and this EIF is signed by an accepted one: no key policy change"
                )
            else:
                self.say(
                    "signed-release mode with a new signing certificate (PCR8 differs): the key "
                    "policy accepts both certificates during the rollout, then only the new one"
                )
        else:
            self.say(
                "image mode: the key policy pins PCR0/1/2; it accepts the old and the new "
                "release during the rollout, then only the new one"
            )

    def _state(
        self,
        bucket: str,
        eif: artifacts.Eif,
        target: dict[int, str],
        accepted: list[dict[int, str]],
    ) -> RolloutState | None:
        state = read_state(self.fleet.aws, bucket)
        if state is not None and state.target_eif_sha384 == eif.sha384:
            done = ", ".join(map(str, state.completed)) or "none"
            self.say(f"resuming the rollout of EIF {eif.sha384[:16]}… (steps done: {done})")
            if state.failure:
                self.say(f"the last run stopped with: {state.failure}")
            return state
        if state is not None:
            if target not in accepted:
                raise FleetError(
                    "rollout-in-progress",
                    f"a rollout of EIF {state.target_eif_sha384[:16]}… is unfinished (steps "
                    f"done: {state.completed}): run it again to finish it, or roll back by "
                    "rolling out an EIF the key still accepts",
                )
            self.say(f"abandoning the rollout of EIF {state.target_eif_sha384[:16]}…: rolling back")
        params = self.stack.parameters()
        if state is None and params.get("EifSha384") == eif.sha384 and accepted == [target]:
            self.say("the fleet already runs this EIF and the key accepts only it: nothing to do")
            return None
        state = RolloutState(
            target_eif_key=eif.key,
            target_eif_sha384=eif.sha384,
            target_release=_stored(target),
            previous_releases=[_stored(r) for r in accepted],
        )
        self._save(bucket, state)
        return state

    def _save(self, bucket: str, state: RolloutState) -> None:
        body = json.dumps(state.to_json(), indent=2).encode()
        self.fleet.aws.client("s3").put_object(Bucket=bucket, Key=STATE_KEY, Body=body)

    def _releases(self, state: RolloutState, *, with_previous: bool) -> list[dict[int, str]]:
        target = _release(state.target_release)
        if not with_previous:
            return [target]
        return unique_releases([*(_release(r) for r in state.previous_releases), target])

    def _update_policy(self, state: RolloutState, *, with_previous: bool, what: str) -> None:
        options = options_of(self.stack.template())
        wanted = self._releases(state, with_previous=with_previous)
        if list(options.releases) == wanted:
            self.say(f"{what}: the key policy already accepts exactly these releases")
            return
        self.stack.update(build(options.with_releases(wanted)), {}, what)

    # -- the five steps --
    def _step1(self, bucket: str, eif: artifacts.Eif, state: RolloutState) -> None:
        s3 = self.fleet.aws.client("s3")
        try:
            head = s3.head_object(Bucket=bucket, Key=eif.key)
            if head.get("ContentLength") == eif.size:
                self.say(f"s3://{bucket}/{eif.key} is already there")
                return
        except ClientError as exc:
            if error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise
        self.fleet.upload(bucket, eif.key, eif.path.read_bytes())

    def _step2(self, bucket: str, eif: artifacts.Eif, state: RolloutState) -> None:
        self._update_policy(state, with_previous=True, what="key policy: old + new")

    def _step3(self, bucket: str, eif: artifacts.Eif, state: RolloutState) -> None:
        params = {"EifObjectKey": state.target_eif_key, "EifSha384": state.target_eif_sha384}
        self.stack.update(None, params, "launch template")

    def _step4(self, bucket: str, eif: artifacts.Eif, state: RolloutState) -> None:
        group = self.stack.outputs()["AutoScalingGroupName"]
        if self.stack.parameters().get("DesiredCapacity") == "0":
            self.say("no running parents (desired capacity 0): nothing to refresh")
            return
        refresh_id = state.refresh_id
        if refresh_id is not None:
            status, _, _ = self.refresher.describe(group, refresh_id)
            if status in REFRESH_FAILED:
                refresh_id = None  # the last one failed: start again
        if refresh_id is None:
            refresh_id = self.refresher.start(group, self.min_healthy, self.warmup)
            state.refresh_id, state.failure = refresh_id, None
            self._save(bucket, state)
            self.say(f"instance refresh {refresh_id} started (min healthy {self.min_healthy}%)")
        self._wait_refresh(bucket, group, refresh_id, state)

    def _wait_refresh(self, bucket: str, group: str, refresh_id: str, state: RolloutState) -> None:
        limits = self.stack.limits
        deadline = time.monotonic() + limits.refresh_wait_seconds
        last: tuple[str, int | None] | None = None
        while True:
            status, percent, reason = self.refresher.describe(group, refresh_id)
            if (status, percent) != last:
                self.say(f"  instance refresh {status} {percent if percent is not None else 0}%")
                last = (status, percent)
            if status == REFRESH_DONE:
                return
            if status in REFRESH_FAILED:
                state.failure = f"instance refresh {refresh_id} {status}: {reason}".strip()
                self._save(bucket, state)
                raise FleetError(
                    "refresh-failed",
                    f"{state.failure}. The key policy still accepts the old and the new release "
                    "(step 5 was not run), so parents on either keep working. Run the rollout "
                    "again to retry, or roll back by rolling out the old EIF.",
                )
            if time.monotonic() > deadline:
                raise FleetError(
                    "refresh-timeout",
                    f"instance refresh {refresh_id} still {status} after "
                    f"{limits.refresh_wait_seconds:.0f} s; run the rollout again to keep waiting",
                )
            self.stack.sleep(limits.poll_seconds)

    def _step5(self, bucket: str, eif: artifacts.Eif, state: RolloutState) -> None:
        self._update_policy(state, with_previous=False, what="key policy: new only")
