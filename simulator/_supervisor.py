"""Restarts the local stack's processes when they exit, with backoff (what systemd does on EC2).

Each ``tick`` looks at every child of every stack. One that exited is started again with the
same arguments after ``backoff_initial_s``, doubling per quick failure up to ``backoff_max_s``;
a child that ran ``stable_after_s`` starts again from the initial delay. When an enclave app
comes back, its credential hand-off gets SIGHUP as soon as the enclave listens, so the new
enclave gets credentials at once instead of at the next periodic push.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from enclave.retry import backoff

from .stack import ENCLAVE_PORT, Child, Stack

__all__ = ["RestartPolicy", "Supervisor"]


@dataclass(frozen=True)
class RestartPolicy:
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 10.0
    stable_after_s: float = 10.0
    tick_s: float = 0.05  # how often the launcher looks


@dataclass
class _Track:
    started: float
    attempts: int = 0
    due: float | None = None  # when the exited child starts again


@dataclass
class _PendingCredentials:
    stack: Stack
    enclave: str
    cid: int
    until: float


@dataclass
class Supervisor:
    stacks: Sequence[Stack]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    echo: Callable[[str], None] = lambda _m: None
    on_restart: Callable[[Stack, Child], None] = lambda _s, _c: None
    restarts: int = 0
    _tracks: dict[tuple[int, str], _Track] = field(default_factory=dict)
    _pending: list[_PendingCredentials] = field(default_factory=list)

    def tick(self) -> None:
        now = time.monotonic()
        for stack in self.stacks:
            for child in list(stack.children):
                track = self._tracks.setdefault((id(stack), child.name), _Track(now))
                if child.alive():
                    continue
                if track.due is None:
                    if now - track.started >= self.policy.stable_after_s:
                        track.attempts = 0
                    track.attempts += 1
                    delay = backoff(track.attempts, self.policy.backoff_initial_s,
                                    self.policy.backoff_max_s)
                    track.due = now + delay
                    self.echo(f"{_where(stack)}{child.name} exited with code "
                              f"{child.process.returncode}; restarting in {delay:.2f} s")
                elif now >= track.due:
                    new = stack.respawn(child)
                    track.due, track.started = None, time.monotonic()
                    self.restarts += 1
                    self.echo(f"{_where(stack)}{child.name} restarted (pid {new.pid})")
                    handle = stack.enclaves.get(child.name)
                    if handle is not None:
                        self._pending.append(_PendingCredentials(
                            stack, child.name, handle.cid,
                            time.monotonic() + stack.limits.startup_timeout_s))
                    self.on_restart(stack, new)
        self._credentials_after_restart()

    def _credentials_after_restart(self) -> None:
        keep = []
        for p in self._pending:
            if not p.stack.enclave_listening(p.cid, ENCLAVE_PORT) and time.monotonic() < p.until:
                keep.append(p)
                continue
            name = f"{p.enclave}-credentials"
            creds = next((c for c in p.stack.children if c.name == name), None)
            if creds is not None and creds.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(creds.pid, signal.SIGHUP)  # push now, not at the next interval
        self._pending = keep


def _where(stack: Stack) -> str:
    label = getattr(stack, "label", "")
    return f"{label}: " if label else ""
