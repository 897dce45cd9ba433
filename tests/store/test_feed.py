"""The change feed: every committed change is delivered, however late it commits relative to
the order its audit id was handed out in."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from stockkeeper.domain import FeedEntry
from stockkeeper.service import Inventory
from tests.conftest import POSTGRES_DIRECT_AND_POOLED, direct
from tests.holds import held


def versions(entries: list[FeedEntry]) -> list[tuple[str, int]]:
    return [(e.sku, e.version) for e in entries]


async def test_the_feed_starts_now_then_brings_each_commit(inventory: Inventory) -> None:
    await inventory.set_stock("F-0", 1, user="t")
    feed = inventory.store.change_feed()
    assert await feed.poll() == []
    await inventory.set_stock("F-1", 3, user="t")
    await inventory.decrement_stock("F-1", 1, user="t")
    polled = await feed.poll()
    assert versions(polled) == [("F-1", 1), ("F-1", 2)]
    assert [e.on_hand for e in polled] == [3, 2] and all(e.at_s > 0 for e in polled)
    assert await feed.poll() == []
    recent = await feed.recent(60)
    assert sorted(versions(recent)) == [("F-0", 1), ("F-1", 2)]


async def naive_tail(database_url: str, after_id: int) -> tuple[list[tuple[str, int]], int]:
    """The buggy design: remember the last id seen, ask for `id > last`."""
    conn = await asyncpg.connect(direct(database_url))
    try:
        rows = await conn.fetch(
            "SELECT id, sku, version FROM audit WHERE id > $1 ORDER BY id", after_id
        )
    finally:
        await conn.close()
    last = rows[-1]["id"] if rows else after_id
    return [(r["sku"], r["version"]) for r in rows], last


@pytest.mark.parametrize("database_url", POSTGRES_DIRECT_AND_POOLED, indirect=True)
async def test_a_late_commit_below_a_seen_id_is_not_lost(database_url: str) -> None:
    """T1 takes audit id n and is held before COMMIT; T2 takes n+1 and commits; the feed polls
    (T2 only); T1 commits; the next poll brings T1. An `id > last seen` tail skips T1 for good."""
    async with await Inventory.open(database_url) as inventory:
        await inventory.set_stock("L-1", 5, user="t")
        await inventory.set_stock("L-2", 5, user="t")
        feed = inventory.store.change_feed()
        await feed.poll()
        _, naive_last = await naive_tail(database_url, 0)
        async with held("store.write.before_commit") as hold:
            late = asyncio.create_task(
                inventory.decrement_stock("L-1", 1, user="t", idempotency_key="late")
            )
            await hold.reached()
            await inventory.decrement_stock("L-2", 1, user="t", idempotency_key="early")
            assert versions(await feed.poll()) == [("L-2", 2)]
            naive_first, naive_last = await naive_tail(database_url, naive_last)
            assert naive_first == [("L-2", 2)]
            hold.release()
            assert (await late).change.version == 2
        assert versions(await feed.poll()) == [("L-1", 2)]
        naive_second, _ = await naive_tail(database_url, naive_last)
        assert naive_second == []  # the naive tail lost T1's change for good
