"""Credential hand-off: the parent's instance-role credentials, pushed to the enclave.

    python -m parent credentials --enclave-cid CID [--port 5000] [--region R] [--once]

The enclave has no instance metadata service, so the parent reads credentials through boto3's
default provider chain (IMDSv2 on EC2; environment or profile elsewhere) and sends them with
the protocol operation ``set-credentials`` (``enclave.kms.credentials``), after offering this
host's time with ``parent-time`` (``enclave.clock``: the enclave has no NTP). It pushes again every
``HandoffLimits.push_interval_s``, and sooner when they come within
``HandoffLimits.refresh_before_expiry_s`` of expiry; when the enclave is down it retries with
exponential backoff. The credentials are not secret from the parent (the enclave's
attestation is what gates KMS), but they never reach a log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from attestation.errors import CodedError, Kind
from enclave.clock import PARENT_TIME_OP
from enclave.protocol import ProtocolClient, ProtocolError, RemoteError
from enclave.retry import backoff
from enclave.service import Started, run_service
from enclave.transport import TransportError, VsockAddress
from enclave.wire import APP_PORT, SET_CREDENTIALS_OP

__all__ = [
    "DEFAULT_ENCLAVE_PORT",
    "SET_CREDENTIALS_OP",
    "CredentialSender",
    "HandoffError",
    "HandoffLimits",
    "credentials_body",
    "main",
]

DEFAULT_ENCLAVE_PORT = APP_PORT
BACKOFF_JITTER = 0.2  # +-20 % on each retry pause of a push

log = logging.getLogger("parent.credentials")


class HandoffError(CodedError):
    """A push failed; `code` is stable (``no-credentials``, ``enclave-unreachable``,
    ``enclave-refused``, ``timeout``)."""

    codes = {
        "no-credentials": Kind.UNAVAILABLE,
        "enclave-unreachable": Kind.UNAVAILABLE,
        "enclave-refused": Kind.BAD_REQUEST,
        "timeout": Kind.UNAVAILABLE,
    }
    show_code = True


@dataclass(frozen=True)
class HandoffLimits:
    """Schedule and bounds of the hand-off (seconds)."""

    push_interval_s: float = 60.0
    """Push at least this often (an enclave that restarted gets credentials again)."""
    refresh_before_expiry_s: float = 15 * 60.0
    """Push fresh credentials this long before expiry (botocore refreshes from IMDS then)."""
    min_interval_s: float = 5.0
    """Never push faster than this."""
    read_timeout_s: float = 30.0
    """Reading credentials from the provider chain (IMDS) takes at most this long."""
    connect_deadline_s: float = 5.0
    """Connecting to the enclave, retries included."""
    request_timeout_s: float = 10.0
    """The enclave answers set-credentials within this."""
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    """Retry pauses after a failure double from initial up to max (with jitter)."""


def credentials_body(credentials: Any, region: str | None) -> dict[str, Any]:
    """The ``set-credentials`` body from botocore credentials (refreshed if due)."""
    frozen = credentials.get_frozen_credentials()
    if not frozen.access_key or not frozen.secret_key:
        raise HandoffError("no-credentials", "the provider chain returned empty credentials")
    # RefreshableCredentials keeps the expiry in `_expiry_time` (botocore has no public
    # accessor); static credentials have none.
    expiry = getattr(credentials, "_expiry_time", None)
    if isinstance(expiry, datetime):
        expiry = (expiry if expiry.tzinfo else expiry.replace(tzinfo=UTC)).astimezone(UTC)
    else:
        expiry = None
    return {
        "access_key_id": frozen.access_key,
        "secret_access_key": frozen.secret_key,
        "session_token": frozen.token,
        "expiration": expiry.isoformat() if expiry else None,
        "region": region,
    }


class CredentialSender:
    """Reads credentials with boto3 and pushes them to the enclave on a schedule."""

    def __init__(
        self,
        address: VsockAddress,
        *,
        session: Any = None,
        region: str | None = None,
        limits: HandoffLimits | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if session is None:
            import boto3

            session = boto3.Session()
        self.address = address
        self.session = session
        self.region = region or session.region_name
        self.limits = limits or HandoffLimits()
        self._clock = clock
        self.pushes = 0
        self.failures = 0

    async def read_body(self) -> dict[str, Any]:
        """Credentials from the default provider chain, as a set-credentials body."""

        def read() -> dict[str, Any]:
            credentials = self.session.get_credentials()
            if credentials is None:
                raise HandoffError(
                    "no-credentials",
                    "boto3 found no credentials (instance role, environment or profile)",
                )
            return credentials_body(credentials, self.region)

        try:
            return await asyncio.wait_for(asyncio.to_thread(read), self.limits.read_timeout_s)
        except HandoffError:
            raise
        except TimeoutError:
            raise HandoffError("timeout", "reading credentials timed out") from None
        except Exception as exc:  # botocore errors: name only, no detail that could carry data
            raise HandoffError(
                "no-credentials", f"reading credentials failed ({type(exc).__name__})"
            ) from None

    async def push_once(self, *, connect_deadline_s: float | None = None) -> datetime | None:
        """Read and push once; returns the credentials' expiration (None: none)."""
        body = await self.read_body()
        deadline = self.limits.connect_deadline_s
        if connect_deadline_s is not None:
            deadline = min(deadline, connect_deadline_s)
        try:
            client = await ProtocolClient.connect(self.address, deadline=deadline)
        except (TransportError, OSError) as exc:
            raise HandoffError(
                "enclave-unreachable",
                f"cannot connect to the enclave at {self.address}: "
                f"{getattr(exc, 'code', None) or type(exc).__name__}",
            ) from None
        try:
            await self._offer_time(client)
            await client.request(SET_CREDENTIALS_OP, body, timeout=self.limits.request_timeout_s)
        except RemoteError as exc:
            raise HandoffError(
                "enclave-refused", f"the enclave refused the credentials ({exc.code})"
            ) from None
        except (ProtocolError, TransportError, OSError) as exc:  # connection lost, timeout
            raise HandoffError(
                "enclave-unreachable",
                f"no answer from the enclave at {self.address} "
                f"({getattr(exc, 'code', None) or type(exc).__name__})",
            ) from None
        finally:
            with contextlib.suppress(Exception):
                await client.close()
        self.pushes += 1
        exp = body["expiration"]
        expiration = datetime.fromisoformat(exp) if exp else None
        left = f"{(expiration - self._clock()).total_seconds():.0f} s" if expiration else "never"
        log.info("credentials pushed to %s (expire in %s)", self.address, left)
        return expiration

    async def _offer_time(self, client: ProtocolClient) -> None:
        """Offer this host's time (the enclave has no NTP); a refusal is logged, not fatal."""
        time_ms = int(self._clock().timestamp() * 1000)
        try:
            state = await client.request(
                PARENT_TIME_OP, {"time_ms": time_ms}, timeout=self.limits.request_timeout_s
            )
        except RemoteError as exc:
            log.warning("the enclave did not take the time (%s)", exc.code)
            return
        if isinstance(state, dict) and state.get("ok") is False:
            log.warning("enclave clock drift %s ms is over its limit", state.get("drift_ms"))

    def next_delay(self, expiration: datetime | None) -> float:
        """Seconds until the next push."""
        lim = self.limits
        delay = lim.push_interval_s
        if expiration is not None:
            until_refresh = (expiration - self._clock()).total_seconds()
            delay = min(delay, until_refresh - lim.refresh_before_expiry_s)
        return max(lim.min_interval_s, delay)

    def backoff(self, attempt: int) -> float:
        """Pause before retry number `attempt` (1-based), with ±20 % jitter."""
        return backoff(
            attempt, self.limits.backoff_initial_s, self.limits.backoff_max_s, jitter=BACKOFF_JITTER
        )

    async def run(self, stop: asyncio.Event | None = None,
                  wake: asyncio.Event | None = None) -> None:
        """Push forever (until `stop` is set), retrying failures with backoff; setting
        `wake` (SIGHUP: the enclave restarted) pushes at once. Set both to stop."""
        stop = stop or asyncio.Event()
        attempt = 0
        while not stop.is_set():
            try:
                expiration = await self.push_once()
            except HandoffError as exc:
                attempt += 1
                self.failures += 1
                delay = self.backoff(attempt)
                log.warning("%s; retrying in %.1f s", exc, delay)
            else:
                attempt = 0
                delay = self.next_delay(expiration)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for((wake or stop).wait(), delay)
            if wake is not None:
                wake.clear()

    async def push_until(self, deadline_s: float) -> datetime | None:
        """Push once, retrying with backoff for at most `deadline_s` seconds."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        attempt = 0
        while True:
            try:
                return await self.push_once(connect_deadline_s=max(0.0, end - loop.time()))
            except HandoffError as exc:
                attempt += 1
                delay = self.backoff(attempt)
                if loop.time() + delay > end:
                    raise
                log.warning("%s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m parent credentials",
        description="Push the parent's AWS credentials (boto3 default chain: IMDSv2 on EC2) "
        "to the enclave, and keep them fresh.",
    )
    p.add_argument("--enclave-cid", type=int, required=True, help="the enclave's CID (>= 4)")
    p.add_argument("--port", type=int, default=DEFAULT_ENCLAVE_PORT, help="enclave vsock port")
    p.add_argument("--region", help="region sent along (default: boto3's configured region)")
    p.add_argument("--profile", help="boto3 profile (default: the default chain)")
    p.add_argument(
        "--interval", type=float, default=HandoffLimits.push_interval_s,
        help="push at least this often (seconds)",
    )
    p.add_argument("--once", action="store_true", help="push once (retrying) and exit")
    p.add_argument(
        "--deadline", type=float, default=60.0, help="with --once: give up after this (seconds)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 after --once succeeded or on SIGTERM/SIGINT; 1 when --once failed; 2 usage."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="credentials: %(levelname)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)  # its DEBUG lines carry the token
    if args.interval <= 0 or args.deadline <= 0:
        log.error("--interval and --deadline must be positive")
        return 2
    try:
        address = VsockAddress(args.enclave_cid, args.port)
        import boto3

        session = boto3.Session(profile_name=args.profile) if args.profile else boto3.Session()
    except TransportError as exc:
        log.error("%s", exc.message)
        return 2
    except Exception as exc:
        log.error("cannot set up boto3: %s", type(exc).__name__)
        return 2
    limits = HandoffLimits(push_interval_s=args.interval)
    sender = CredentialSender(address, session=session, region=args.region, limits=limits)
    if args.once:
        try:
            asyncio.run(sender.push_until(args.deadline))
        except HandoffError as exc:
            log.error("giving up: %s", exc)
            return 1
        return 0

    async def run(stop: asyncio.Event) -> None:
        wake = asyncio.Event()  # SIGHUP: the enclave restarted, push now
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, wake.set)
        stopping = asyncio.ensure_future(stop.wait())
        stopping.add_done_callback(lambda _: wake.set())
        try:
            await sender.run(stop, wake)
        finally:
            stopping.cancel()

    async def start() -> Started:
        return Started(run=run)

    return run_service(start)


if __name__ == "__main__":
    sys.exit(main())
