"""`parent enclave-watch` restarts a stopped enclave (fake nitro-cli), with backoff."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from fake_nitro import FakeNitro, make_fake

from parent.enclave_watch import EnclaveWatch, WatchLimits


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeNitro:
    f = make_fake(tmp_path)
    f.add_image("app:latest")
    for k in ("PATH", "FAKE_NITRO_CLI_STATE"):
        monkeypatch.setenv(k, f.env[k])
    return f


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_terminated_enclave_is_started_again(fake: FakeNitro, tmp_path: Path) -> None:
    eif = tmp_path / "app.eif"
    cli = fake.cli()
    cli.build_enclave("app:latest", eif)
    run = ["nitro-cli", "run-enclave", "--eif-path", str(eif), "--memory", "512",
           "--cpu-count", "2", "--enclave-name", "app"]
    cli.run_enclave(eif_path=eif, memory_mib=512, cpu_count=2, enclave_name="app")
    watch = EnclaveWatch(cli, "app", run, WatchLimits(misses=2), clock=Clock())
    assert watch.step() is False and watch.restarts == 0
    cli.terminate_enclave(enclave_name="app")
    assert watch.step() is False  # one miss is not enough
    assert watch.step() is True and watch.restarts == 1
    assert watch.running()
    assert watch.step() is False and watch.failures == 0


def test_restarts_back_off_while_the_enclave_stays_down(fake: FakeNitro) -> None:
    clock = Clock()
    watch = EnclaveWatch(fake.cli(), "app", ["false"],
                         WatchLimits(misses=1, backoff_initial_s=5, backoff_max_s=20),
                         clock=clock)
    times = []
    for _ in range(200):  # 200 polls, 0.5 s apart
        if watch.step():
            times.append(clock.now)
        clock.now += 0.5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[:3] == [5.0, 10.0, 20.0] and all(g == 20.0 for g in gaps[3:])


def test_a_watch_that_fails_for_ever_keeps_a_capped_pause(fake: FakeNitro) -> None:
    """Thousands of failed restarts (weeks down) never overflow the backoff: it stays capped."""
    clock = Clock()
    watch = EnclaveWatch(fake.cli(), "app", ["false"],
                         WatchLimits(misses=1, backoff_initial_s=5.0, backoff_max_s=20.0),
                         clock=clock)
    watch.failures = 5000  # 5 * 2**5000 is past what a float holds
    assert watch.step() is True
    assert watch.not_before == clock.now + 20
