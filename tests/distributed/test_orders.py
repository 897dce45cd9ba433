"""Multi-SKU orders in opposite SKU order, across servers: no deadlock, no partial order."""

from __future__ import annotations

import asyncpg
import pytest

from tests.distributed.checks import opposite_orders, put_stock
from tests.distributed.cluster import Cluster
from tests.distributed.storm import OK, Client, storm

pytestmark = pytest.mark.distributed

STOCK = 300
ORDERS = 400
CONCURRENCY = 64
SKUS = ("ORD-A", "ORD-B")


async def test_opposite_order_orders_neither_deadlock_nor_split(cluster: Cluster) -> None:
    await opposite_orders(cluster, SKUS, STOCK, ORDERS, CONCURRENCY)


async def test_request_order_locking_deadlocks_under_the_same_load(cluster: Cluster) -> None:
    """The design the product avoids — lock rows in the order the request names them — meets
    deadlocks under this workload, so the test above could see them."""
    skus = ("DL-A", "DL-B")
    async with Client(4) as client:
        for sku in skus:
            await put_stock(client, cluster, sku, 1_000_000)
    pool = await asyncpg.create_pool(
        cluster.database_url,
        min_size=4,
        max_size=40,
        server_settings={"deadlock_timeout": "20ms"},
    )

    async def naive_order(n: int) -> str:
        ordered = skus if n % 2 else tuple(reversed(skus))
        async with pool.acquire() as conn:
            try:
                async with conn.transaction():
                    for sku in ordered:
                        await conn.execute(
                            "UPDATE items SET on_hand = on_hand - 1 WHERE sku = $1", sku
                        )
            except asyncpg.exceptions.DeadlockDetectedError:
                return "deadlock"
        return OK

    try:
        outcomes = await storm(naive_order, ORDERS, CONCURRENCY)
    finally:
        await pool.close()
    assert outcomes["deadlock"] > 0, f"expected deadlocks from request-order locking: {outcomes}"
