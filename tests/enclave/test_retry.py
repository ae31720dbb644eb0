"""The one backoff formula: doubling from initial, capped, jitter within its band."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave.retry import backoff


def test_doubles_then_caps() -> None:
    assert [backoff(n, 0.5, 4.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff(0, 0.5, 4.0) == 0.5  # attempt 0 is treated as the first
    assert backoff(10_000, 0.02, 1.0) == 1.0  # no overflow


@given(
    attempt=st.integers(min_value=-5, max_value=10_000),
    initial=st.floats(min_value=1e-3, max_value=10),
    cap=st.floats(min_value=1e-3, max_value=100),
    jitter=st.floats(min_value=0, max_value=0.99),
)
def test_pause_stays_in_its_band(attempt: int, initial: float, cap: float, jitter: float) -> None:
    base = backoff(attempt, initial, cap)
    assert 0 < base <= cap
    pause = backoff(attempt, initial, cap, jitter=jitter)
    assert base * (1 - jitter) - 1e-12 <= pause <= base * (1 + jitter) + 1e-12


def test_bad_jitter_is_refused() -> None:
    with pytest.raises(ValueError):
        backoff(1, 1.0, 2.0, jitter=1.5)
