"""The enclave's clock, checked against the time the parent offers (issue 9 item 20).

An enclave has no NTP; its clock drifts (seconds per week have been reported), while SigV4
(±5 min), the e2e replay window and document freshness all depend on it. The parent offers its
time with the protocol op :data:`PARENT_TIME_OP` (``{"time_ms": int}``), sent by the credential
hand-off on every push. The parent is untrusted, so its time is only evidence:

* the enclave measures ``offset = parent time - its own clock``;
* it corrects the clock it uses itself (:meth:`EnclaveClock.now`: replay guard, health) by that
  offset, but never by more than ``max_correction_s`` in total, and an offer further away than
  ``max_jump_s`` is refused as a jump: the clock moves only ``max_jump_s`` towards it (and the
  refusal is counted), so a hostile parent can shift the enclave's time by ``max_jump_s`` per
  offer and ``max_correction_s`` at most;
* when the latest offer and the corrected clock disagree by more than ``max_drift_s``, work that
  depends on time (every app operation) is refused with ``clock-drift`` until they agree again.

botocore signs KMS requests with the system clock, which the enclave does not set; the bounds
keep its error well inside SigV4's five minutes (``max_correction_s + max_drift_s``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PARENT_TIME_OP = "parent-time"
"""Protocol op carrying the parent's time to the enclave: body ``{"time_ms": int}``."""


@dataclass(frozen=True)
class ClockLimits:
    max_jump_s: float = 10.0
    """One offer moves the correction by at most this; a bigger jump is refused (counted)."""
    max_correction_s: float = 60.0
    """The correction applied to the enclave's own clock never exceeds this (either way)."""
    max_drift_s: float = 30.0
    """Beyond this disagreement between the corrected clock and the parent, work is refused."""


class ClockError(Exception):
    """Time-dependent work is refused (code ``clock-drift``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EnclaveClock:
    """The system clock plus a bounded correction learned from the parent's offers."""

    def __init__(
        self, limits: ClockLimits | None = None, *, source: Callable[[], float] = time.time
    ) -> None:
        self.limits = limits or ClockLimits()
        self._source = source
        self._lock = threading.Lock()  # now() is called from worker threads (e2e opens)
        self.correction_s = 0.0
        self.measured_s: float | None = None  # parent time - system clock, at the last offer
        self.offers = 0
        self.refused = 0

    def now(self) -> float:
        """Corrected time, seconds since the epoch."""
        return self._source() + self.correction_s

    def offer(self, parent_time_ms: int) -> dict[str, Any]:
        """Take the parent's time (ms since the epoch); returns the new state."""
        measured = parent_time_ms / 1000 - self._source()
        lim = self.limits
        with self._lock:
            self.offers += 1
            self.measured_s = measured
            target = max(-lim.max_correction_s, min(lim.max_correction_s, measured))
            step = target - self.correction_s
            if abs(step) > lim.max_jump_s or target != measured:
                self.refused += 1  # not taken as offered: a jump, or beyond the bound
            step = max(-lim.max_jump_s, min(lim.max_jump_s, step))
            self.correction_s += step
        return self.state()

    def drift_s(self) -> float:
        """How far the corrected clock is from the parent's last offer (0 before any)."""
        measured = self.measured_s
        return 0.0 if measured is None else abs(measured - self.correction_s)

    def check(self) -> None:
        """Raise ClockError(clock-drift) when time-dependent work must be refused."""
        drift = self.drift_s()
        if drift > self.limits.max_drift_s:
            raise ClockError(
                "clock-drift",
                f"the enclave clock is {drift:.1f} s from the parent's and cannot be corrected "
                f"within the bounds (max_drift_s {self.limits.max_drift_s:g} s)",
            )

    def state(self) -> dict[str, Any]:
        """What /health shows."""
        measured = self.measured_s
        return {
            "offset_ms": None if measured is None else round(measured * 1000),
            "correction_ms": round(self.correction_s * 1000),
            "drift_ms": round(self.drift_s() * 1000),
            "offers": self.offers,
            "refused": self.refused,
            "ok": self.drift_s() <= self.limits.max_drift_s,
        }
