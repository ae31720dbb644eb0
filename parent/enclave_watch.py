"""Restart the enclave when it stops: ``python -m parent enclave-watch --enclave-name NAME``.

An enclave is a VM, not a process systemd can watch, and ``nitro-cli run-enclave`` returns as
soon as it is launched. This watcher (the ``nitro-toolkit-enclave-watch`` unit) polls
``nitro-cli describe-enclaves`` every ``interval_s``; when the named enclave is missing or not
``RUNNING`` on ``misses`` polls in a row, it runs the restart command (by default
``systemctl restart nitro-toolkit-enclave.service``, which also restarts the credentials
hand-off bound to it) and backs off exponentially while the enclave stays down. The parent
proxy reconnects by itself and loads the registered secrets into the new enclave.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from enclave.retry import backoff

from .nitro_cli import NitroCli, NitroCliError

log = logging.getLogger("parent.enclave_watch")

DEFAULT_UNIT = "nitro-toolkit-enclave.service"


@dataclass(frozen=True)
class WatchLimits:
    interval_s: float = 2.0  # describe-enclaves poll
    misses: int = 2  # polls in a row without the enclave running before a restart
    backoff_initial_s: float = 5.0  # after a restart, the next one waits at least this ...
    backoff_max_s: float = 120.0  # ... doubling up to this while the enclave stays down
    restart_timeout_s: float = 300.0  # one restart command (run-enclave boots the VM)


class EnclaveWatch:
    """One poll per ``step``; ``restarts`` counts restart commands run."""

    def __init__(self, cli: NitroCli, name: str, restart: Sequence[str],
                 limits: WatchLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cli = cli
        self.name = name
        self.restart_command = list(restart)
        self.limits = limits or WatchLimits()
        self.clock = clock
        self.missed = 0
        self.restarts = 0
        self.failures = 0  # restarts since the enclave was last seen running
        self.not_before = 0.0

    def running(self) -> bool:
        try:
            found = self.cli.describe_enclaves()
        except NitroCliError as exc:
            log.warning("describe-enclaves failed: %s", exc.message)
            return False
        return any(e.enclave_name == self.name and e.running for e in found)

    def step(self) -> bool:
        """Poll once; restart when due. Returns True when a restart command ran."""
        if self.running():
            self.missed, self.failures = 0, 0
            return False
        self.missed += 1
        if self.missed < self.limits.misses or self.clock() < self.not_before:
            return False
        delay = backoff(self.failures + 1, self.limits.backoff_initial_s,
                        self.limits.backoff_max_s)
        log.warning("enclave %s is not running; restarting (%s), next try in >= %.0f s",
                    self.name, shlex.join(self.restart_command), delay)
        try:
            done = subprocess.run(self.restart_command, timeout=self.limits.restart_timeout_s,
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                log.error("restart command exited %d: %s", done.returncode,
                          done.stderr.strip()[-500:])
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("restart command failed: %s", exc)
        self.restarts += 1
        self.failures += 1
        self.missed = 0
        self.not_before = self.clock() + delay
        return True


def main(argv: Sequence[str] | None = None) -> int:
    d = WatchLimits()
    p = argparse.ArgumentParser(prog="python -m parent enclave-watch",
                                description="Restart the enclave when it stops running.")
    p.add_argument("--enclave-name", required=True)
    p.add_argument("--unit", default=DEFAULT_UNIT, help="systemd unit that runs the enclave")
    p.add_argument("--restart-command", help="command to run instead of systemctl restart UNIT")
    p.add_argument("--interval", type=float, default=d.interval_s, help="seconds between polls")
    p.add_argument("--backoff-max", type=float, default=d.backoff_max_s)
    p.add_argument("--once", action="store_true", help="poll once and exit (0 running, 1 not)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="enclave-watch: %(levelname)s %(message)s")
    if args.interval <= 0 or args.backoff_max <= 0:
        print("enclave-watch: --interval and --backoff-max must be positive", file=sys.stderr)
        return 2
    restart = (shlex.split(args.restart_command) if args.restart_command
               else ["systemctl", "restart", args.unit])
    watch = EnclaveWatch(NitroCli(), args.enclave_name, restart,
                         WatchLimits(interval_s=args.interval, backoff_max_s=args.backoff_max))
    if args.once:
        return 0 if watch.running() else 1
    try:
        while True:
            watch.step()
            time.sleep(watch.limits.interval_s)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
