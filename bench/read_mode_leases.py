"""What the read mode's leases cost PostgreSQL when healthy (docs/cache.md, "One read source").

Runs N simulated workers in this process, each with its own store (own connection pool, as a
real worker has) and its own `ReadModeLease` renewing every `poll_ms`, for SECONDS, and reports
the renewals per second and the CPU that PostgreSQL's processes and this one used meanwhile,
beside an idle window of the same length measured first.

    .venv/bin/python bench/read_mode_leases.py --workers 4 --workers 64 --seconds 20
"""

from __future__ import annotations

import asyncio
import os
import time
from contextlib import AsyncExitStack

import click

from stockkeeper.bench.cluster import fresh_schema
from stockkeeper.bench.scrape import cpu_snapshot, cpu_used
from stockkeeper.cache.read_mode import ReadModeLease, ReadModeOptions
from stockkeeper.store import Store, open_store
from stockkeeper.store.protocol import ReadModeView, StoreOptions

GROUPS = {
    "postgres": lambda pid, comm, pgrp: comm.startswith("postgres"),
    "workers": lambda pid, comm, pgrp: pid == os.getpid(),
}


class CountingStore:
    """Counts the renewals a lease sends."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.reads = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def read_mode(self) -> ReadModeView:
        self.reads += 1
        return await self._store.read_mode()


async def measure(database_url: str, workers: int, seconds: float) -> dict[str, float]:
    async def nothing() -> bool:
        return True

    async with AsyncExitStack() as stack:
        counted: list[CountingStore] = []
        leases = []
        for _ in range(workers):
            store = await open_store(database_url, StoreOptions(pool_size=2))
            stack.push_async_callback(store.close)
            await store.migrate()
            counting = CountingStore(store)
            counted.append(counting)
            lease = ReadModeLease(
                counting,  # type: ignore[arg-type]
                ReadModeOptions(),
                reaches_redis=lambda: True,
                catch_up=nothing,
            )
            leases.append(lease)
        for lease in leases:
            await lease.start()
            stack.push_async_callback(lease.close)
        before, started = cpu_snapshot(GROUPS), time.monotonic()
        reads_before = sum(c.reads for c in counted)
        await asyncio.sleep(seconds)
        after, took_s = cpu_snapshot(GROUPS), time.monotonic() - started
        reads = sum(c.reads for c in counted) - reads_before
    used = cpu_used(before, after, list(GROUPS))
    return {
        "renewals_per_s": reads / took_s,
        "postgres_cores": used["postgres"] / took_s,
        "workers_cores": used["workers"] / took_s,
        "machine_cores": used["machine busy"] / took_s,
    }


@click.command()
@click.option("--workers", "counts", type=int, multiple=True, default=(4, 64))
@click.option("--seconds", type=float, default=20.0)
@click.option("--database", default="postgresql://postgres@127.0.0.1:5432/test")
def main(counts: tuple[int, ...], seconds: float, database: str) -> None:
    with fresh_schema(database) as url:
        rows = [(0, asyncio.run(measure(url, 0, seconds)))]
        rows += [(n, asyncio.run(measure(url, n, seconds))) for n in counts]
    print(f"{'workers':>8} {'renewals/s':>11} {'postgres cores':>15} {'these workers':>14}")
    idle = rows[0][1]
    for n, row in rows:
        print(
            f"{n:>8} {row['renewals_per_s']:>11.0f} {row['postgres_cores']:>15.4f} "
            f"{row['workers_cores']:>14.4f}   (PostgreSQL above idle: "
            f"{row['postgres_cores'] - idle['postgres_cores']:+.4f} cores)"
        )


if __name__ == "__main__":
    main()
