"""Zero oversell across real server processes sharing one PostgreSQL database."""

from __future__ import annotations

import asyncpg
import pytest

from tests.distributed.checks import (
    duplicate_purchases_apply_once,
    put_stock,
    race_for_last_item,
    sell_out,
)
from tests.distributed.cluster import Cluster
from tests.distributed.storm import OK, SHORT, Client, oversell_verdict, storm

pytestmark = pytest.mark.distributed

ATTEMPTS = 10_000
STOCK = 100
CONCURRENCY = 200
POOL_SIZE_PER_SERVER = 10


async def test_ten_thousand_purchases_sell_exactly_the_stock(cluster: Cluster) -> None:
    entries = await sell_out(cluster, "STORM-1", STOCK, ATTEMPTS, CONCURRENCY)
    purchases = entries[1:]
    assert len(purchases) == STOCK
    for entry in purchases:
        assert (entry["reason"], entry["delta"], entry["user"]) == ("purchase", -1, "shop")
        assert entry["at"].endswith("Z")
    stamps = [entry["at"] for entry in purchases]
    assert stamps == sorted(stamps), "a SKU's changes are stamped in version order"


async def test_naive_read_check_write_oversells_under_the_same_load(cluster: Cluster) -> None:
    """The bug the product avoids, run through the same storm and verdict: the test can fail."""
    sku = "NAIVE-1"
    async with Client(4) as client:
        await put_stock(client, cluster, sku, STOCK)
    pool = await asyncpg.create_pool(
        cluster.database_url, min_size=4, max_size=POOL_SIZE_PER_SERVER * len(cluster.urls)
    )

    async def naive_purchase(n: int) -> str:
        async with pool.acquire() as conn:
            on_hand = await conn.fetchval("SELECT on_hand FROM items WHERE sku = $1", sku)
            if on_hand < 1:
                return SHORT
            await conn.execute(
                "UPDATE items SET on_hand = $2, version = version + 1 WHERE sku = $1",
                sku,
                on_hand - 1,
            )
            return OK

    try:
        outcomes = await storm(naive_purchase, ATTEMPTS, CONCURRENCY)
    finally:
        await pool.close()
    assert outcomes[OK] > STOCK, f"expected the naive design to oversell, got {outcomes}"
    assert oversell_verdict(outcomes, STOCK, ATTEMPTS) != []


async def test_last_item_has_exactly_one_winner_across_servers(cluster: Cluster) -> None:
    await race_for_last_item(cluster, "LAST-1", rounds=100, buyers=8)


async def test_duplicate_idempotent_purchases_at_two_servers_apply_once(cluster: Cluster) -> None:
    await duplicate_purchases_apply_once(cluster, "IDEM-1", rounds=50)
