"""`python -m enclave` outside an enclave (no /dev/nsm, no simulator) stops at once, clearly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from enclave.__main__ import EXIT_NO_NSM

ROOT = Path(__file__).resolve().parents[2]
EXIT_BOUND_S = 30  # "at once", generous for a loaded machine (interpreter start included)


@pytest.mark.skipif(Path("/dev/nsm").exists(), reason="this machine has /dev/nsm")
def test_exits_with_a_clear_message_without_nsm() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NITRO_")}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "enclave", "--port", "5999"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=EXIT_BOUND_S,
    )
    assert time.monotonic() - started < EXIT_BOUND_S
    assert proc.returncode == EXIT_NO_NSM == 6
    assert "no /dev/nsm: not inside a Nitro Enclave" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
