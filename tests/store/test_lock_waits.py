"""Every wait has a limit: a write that cannot get its lock in time fails cleanly."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing

import asyncpg
import pytest

from stockkeeper.domain import Unavailable
from stockkeeper.retry import RetryPolicy
from stockkeeper.service import Inventory
from stockkeeper.store import StoreOptions
from tests.conftest import direct

WAIT_MS_MAX = 100
QUICK = StoreOptions(
    pool_size=2,
    lock_wait_ms_max=WAIT_MS_MAX,
    retry=RetryPolicy(attempts_max=2, backoff_ms_base=1.0, backoff_ms_max=5.0),
)


@asynccontextmanager
async def lock_held_elsewhere(database_url: str, sku: str) -> AsyncIterator[None]:
    """Another client holds `sku`'s row (PostgreSQL) or the write lock (SQLite) meanwhile."""
    if database_url.startswith("postgresql"):
        conn = await asyncpg.connect(direct(database_url))
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM items WHERE sku = $1 FOR UPDATE", sku)
                yield
        finally:
            await conn.close()
    else:
        with closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as conn:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.rollback()


@pytest.mark.parametrize("key", ["k", None], ids=["transaction", "one-statement"])
async def test_a_write_past_its_lock_wait_is_unavailable_and_changes_nothing(
    database_url: str, key: str | None
) -> None:
    """With a key the purchase is a transaction; without one, on PostgreSQL, one statement."""
    async with await Inventory.open(database_url, QUICK) as inventory:
        await inventory.set_stock("L-1", 5, user="t")
        # The outer limit only turns a missing lock limit into a failure instead of a hang.
        async with lock_held_elsewhere(database_url, "L-1"), asyncio.timeout(10):
            with pytest.raises(Unavailable):
                await inventory.decrement_stock("L-1", 1, user="t", idempotency_key=key)
        assert (await inventory.get_stock("L-1")).version == 1
        receipt = await inventory.decrement_stock("L-1", 1, user="t", idempotency_key=key)
        assert not receipt.replayed and receipt.change.on_hand == 4
