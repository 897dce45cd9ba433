"""The idempotency key purge runs once per interval per cluster, however many processes ask."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from stockkeeper.service import Inventory
from stockkeeper.store import StoreOptions
from tests.store.test_writes import raw

PROCESSES = 6
HOUR_S = 3600


@pytest.fixture
async def processes(database_url: str) -> AsyncIterator[list[Inventory]]:
    """Inventories with connections of their own, as separate server processes have."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                await Inventory.open(database_url, StoreOptions(pool_size=2))
            )
            for _ in range(PROCESSES)
        ]


async def keys(database_url: str) -> int:
    return int((await raw(database_url, "SELECT count(*) FROM idempotency_keys"))[0][0])


async def purge_all_at_once(processes: list[Inventory], every_s: int) -> list[int | None]:
    """Every process asks at the same moment to purge every key (older than 0 s)."""
    return await asyncio.gather(*(p.purge_idempotency_keys(0, every_s=every_s) for p in processes))


async def test_one_of_many_processes_purges_and_only_once_per_interval(
    processes: list[Inventory], database_url: str
) -> None:
    first = processes[0]
    await first.set_stock("P-1", 100, user="t")
    for n in range(3):
        await first.decrement_stock("P-1", 1, user="t", idempotency_key=f"k-{n}")
    assert await keys(database_url) == 3

    outcomes = await purge_all_at_once(processes, HOUR_S)
    assert sorted(outcomes, key=str) == [3] + [None] * (PROCESSES - 1), outcomes
    assert await keys(database_url) == 0

    await first.decrement_stock("P-1", 1, user="t", idempotency_key="k-later")
    assert await purge_all_at_once(processes, HOUR_S) == [None] * PROCESSES, "not due again"
    assert await keys(database_url) == 1


async def test_the_next_interval_purges_again_once(
    processes: list[Inventory], database_url: str
) -> None:
    first = processes[0]
    await first.set_stock("P-2", 100, user="t")
    assert [n for n in await purge_all_at_once(processes, 1) if n is not None] == [0]
    await first.decrement_stock("P-2", 1, user="t", idempotency_key="k")
    await asyncio.sleep(1.1)  # past the 1 s interval
    assert [n for n in await purge_all_at_once(processes, 1) if n is not None] == [1]
    assert await keys(database_url) == 0
