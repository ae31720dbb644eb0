"""Unknown secret names re-read the store at most every ``reread_min_s``, however many arrive.

A request naming a secret the parent has not seen waits for the next allowed re-read (so a
secret registered on another node is served, not refused), but a burst of unknown names can't
make the parent read the store more often than the limit. Real DirectoryStore on disk; the
enclave side is a small stand-in answering the keeper's two control requests.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from parent._secret_keeper import KeeperLimits, SecretKeeper
from parent.secret_store import DirectoryStore

REREAD_S = 0.3


class CountingStore(DirectoryStore):
    reads = 0

    def list(self):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().list()


class QuietEnclave:
    """What the keeper asks of a pool: up, its connect count, health and seal-list."""

    connects = 1
    up = True

    async def request(self, op: str, body: Any, **_: Any) -> Any:
        return {"secrets": []} if op == "seal-list" else {"credentials": True}


def test_a_burst_of_unknown_names_reads_the_store_at_most_once_per_interval(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    keeper = SecretKeeper(store, KeeperLimits(reread_min_s=REREAD_S))
    pool: Any = QuietEnclave()

    async def main() -> tuple[float, list[float]]:
        await keeper.gate(pool)  # the first pass reads the store
        start = time.monotonic()

        async def one(i: int) -> float:
            await asyncio.sleep(i * 0.01)  # 100 unknown names over about 1 s
            t0 = time.monotonic()
            assert await keeper.refresh_knows(pool, f"unknown-{i}") is False
            return time.monotonic() - t0

        waits = await asyncio.gather(*(one(i) for i in range(100)))
        return time.monotonic() - start, list(waits)

    elapsed, waits = asyncio.run(main())
    extra_reads = store.reads - 1
    assert extra_reads <= elapsed / REREAD_S + 2, (extra_reads, elapsed)
    assert extra_reads >= 1  # unknown names do make it look again
    assert max(waits) < REREAD_S + 1.0  # nobody waits much longer than one interval
