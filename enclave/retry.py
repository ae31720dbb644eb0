"""The one retry pause of the toolkit: exponential backoff, capped, with optional jitter."""

from __future__ import annotations

import random

__all__ = ["MAX_DOUBLINGS", "backoff"]

MAX_DOUBLINGS = 30
"""The exponent stops growing here (the cap applies long before; no float overflow)."""


def backoff(attempt: int, initial: float, maximum: float, *, jitter: float = 0.0) -> float:
    """Seconds to pause before retry number ``attempt`` (1-based).

    ``initial * 2 ** (attempt - 1)``, at most ``maximum``, then scaled by a uniform factor in
    ``[1 - jitter, 1 + jitter]`` (``jitter`` 0.2 = +-20 %), so that many clients restarted
    together do not retry in step.
    """
    if not 0.0 <= jitter < 1.0:
        raise ValueError("jitter must be in [0, 1)")
    base = min(maximum, initial * 2 ** min(max(attempt - 1, 0), MAX_DOUBLINGS))
    return base * random.uniform(1.0 - jitter, 1.0 + jitter) if jitter else base
