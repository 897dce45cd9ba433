"""The embedded cache (`memory://` on SQLite): each process's entries prove themselves current
on every read, so several workers on one file never serve an older state than another served.

The naive design here is a per-process dict filled on a miss and trusted until it is written
through its own process: the other worker's writes never reach it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from stockkeeper import failpoints
from stockkeeper.cache import open_cache
from stockkeeper.cache.base import DirectReads, ReadCache
from stockkeeper.cache.memory import ProvenMemoryCache
from stockkeeper.domain import Change, Item, ItemRead
from stockkeeper.service import Inventory
from stockkeeper.store import Store, open_store
from tests.cache.naive import expect
from tests.holds import held
from tests.store.test_held import hold_around_the_service


class NaiveProcessCache:
    """Per-process dict: fill on miss, update on this process's own writes only."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._entries: dict[str, Item] = {}

    async def start(self) -> None:
        return None

    async def read(self, sku: str, min_version: int | None = None) -> ItemRead | None:
        if sku in self._entries:
            return ItemRead(self._entries[sku], cache_hit=True)
        item = await self._store.get_item(sku)
        await failpoints.hit("service.read.after_fetch")
        if item is not None:
            self._entries[sku] = item
        return None if item is None else ItemRead(item, cache_hit=False)

    async def read_many(self, skus: Sequence[str]) -> list[ItemRead | None]:
        return [await self.read(sku) for sku in skus]

    async def committed(self, changes: Sequence[Change]) -> None:
        for c in changes:
            self._entries[c.sku] = Item(c.sku, c.on_hand, c.version)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.fixture
async def workers(
    sqlite_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[list[Inventory]]:
    """Two workers on one SQLite file, each with its own connections and cache."""
    opened = []
    for _ in range(2):
        store = await open_store(sqlite_url)
        await store.migrate()
        cache: ReadCache = NaiveProcessCache(store)
        if request.param == "coherent":
            cache = await open_cache("memory://", store)
        opened.append(Inventory(store, cache))
    yield opened
    for inventory in opened:
        await inventory.close()


@pytest.mark.parametrize("workers", ["coherent", "naive"], indirect=True)
async def test_g1_g2_another_workers_write_is_served_at_once(workers: list[Inventory]) -> None:
    a, b = workers
    await a.set_stock("M-1", 5, user="t")
    assert (await b.read("M-1")).item.version == 1
    await a.decrement_stock("M-1", 1, user="t")
    kind = "coherent" if isinstance(b.cache, ProvenMemoryCache) else "naive"
    seen = await b.read("M-1")
    expect(kind, seen.item == Item("M-1", 4, 2))


@pytest.mark.parametrize("workers", ["coherent", "naive"], indirect=True)
async def test_g1_a_slow_fill_never_replaces_a_newer_state(workers: list[Inventory]) -> None:
    a, b = workers
    await a.set_stock("M-2", 5, user="t")
    async with held("service.read.after_fetch") as hold:
        slow = asyncio.create_task(b.read("M-2"))
        await hold.reached()
        await a.decrement_stock("M-2", 1, user="t")
        assert (await b.read("M-2")).item.version == 2
        hold.release()
        await slow
    kind = "coherent" if isinstance(b.cache, ProvenMemoryCache) else "naive"
    expect(kind, (await b.read("M-2")).item.version == 2)


@pytest.mark.parametrize("workers", ["coherent"], indirect=True)
async def test_hits_after_the_first_read_until_something_commits(workers: list[Inventory]) -> None:
    a, b = workers
    await a.set_stock("M-3", 5, user="t")
    assert not (await b.read("M-3")).cache_hit
    assert (await b.read("M-3")).cache_hit
    await a.set_stock("M-4", 1, user="t")  # another SKU: M-3 stays cached, caught up
    again = await b.read("M-3")
    assert again.cache_hit and again.item == Item("M-3", 5, 1)


@pytest.mark.parametrize("workers", ["coherent"], indirect=True)
async def test_held_is_served_with_on_hand(workers: list[Inventory], sqlite_url: str) -> None:
    """An entry is the item at one version, held included, from a fill or a catch-up."""
    a, b = workers
    await a.set_stock("M-5", 10, user="t")
    held_at_2 = await hold_around_the_service(sqlite_url, Item("M-5", 10, 1), 4)
    assert (await b.read("M-5")).item == held_at_2
    await a.decrement_stock("M-5", 1, user="t")
    caught_up = await b.read("M-5")
    assert caught_up.cache_hit and caught_up.item == Item("M-5", 9, 3, 4)


async def test_memory_cache_over_postgres_caches_nothing(postgres_url: str) -> None:
    """No per-process cache can prove itself current against another server's commits."""
    store = await open_store(postgres_url)
    try:
        assert isinstance(await open_cache("memory://", store), DirectReads)
    finally:
        await store.close()
