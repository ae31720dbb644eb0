"""One local stack (real processes: KMS, NSM, enclave, KMS relay, credentials, proxy) shared
by the reliability tests (see reliability_support.py)."""

from __future__ import annotations

import json
import resource
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_support import (
    FDS_WANTED,
    PROXY_BODY_TIMEOUT_S,
    PROXY_HEADER_TIMEOUT_S,
    LiveStack,
)

from parent.key_policy import key_policy
from simulator.stack import Stack, StackConfig


@pytest.fixture(scope="package")
def live() -> Iterator[LiveStack]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < FDS_WANTED:  # 1000 concurrent HTTP connections on each side, children inherit
        target = FDS_WANTED if hard == resource.RLIM_INFINITY else min(FDS_WANTED, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    with tempfile.TemporaryDirectory(prefix="rel-") as d:
        config = StackConfig(
            state_dir=Path(d),
            proxy_args=("--header-timeout", str(PROXY_HEADER_TIMEOUT_S),
                        "--body-timeout", str(PROXY_BODY_TIMEOUT_S)),
        )
        stack = Stack(config)
        info = stack.start()
        try:
            pcrs = {int(i): v for i, v in info["pcrs"].items() if int(i) in (0, 1, 2)}
            creds = info["credentials"]
            policy = key_policy(pcrs=pcrs, enclave_role=creds["parent"]["principal"],
                                admin=creds["operator"]["principal"])
            live = LiveStack(stack, info, "")
            live.key_id = live.kms("operator").create_key(Policy=json.dumps(policy))[
                "KeyMetadata"]["KeyId"]
            yield live
        finally:
            stack.stop()
