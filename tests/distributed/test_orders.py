"""Multi-SKU orders in opposite SKU order, across servers: no deadlock, no partial order."""

from __future__ import annotations

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.distributed.checks import (
    assert_audit_replays,
    assert_every_server_sees,
    full_audit,
    put_stock,
)
from tests.distributed.cluster import Cluster
from tests.distributed.storm import OK, Client, storm

pytestmark = pytest.mark.distributed

STOCK = 300
ORDERS = 400
CONCURRENCY = 64
SKUS = ("ORD-A", "ORD-B")


def lines_of(n: int) -> list[str]:
    """Half the orders name the SKUs one way round, half the other: the deadlock recipe."""
    return list(SKUS) if n % 2 else list(reversed(SKUS))


async def deadlock_retries(client: Client, cluster: Cluster) -> float:
    total = 0.0
    for url in cluster.urls:
        for family in text_string_to_metric_families(await client.text(f"{url}/metrics")):
            for sample in family.samples:
                if sample.name == "stockkeeper_transaction_retries_total":
                    total += sample.value if sample.labels.get("reason") == "deadlock" else 0
    return total


async def test_opposite_order_orders_neither_deadlock_nor_split(cluster: Cluster) -> None:
    async with Client(CONCURRENCY) as client:
        for sku in SKUS:
            await put_stock(client, cluster, sku, STOCK)

        async def order(n: int) -> str:
            answer = await client.call(
                "POST",
                f"{cluster.urls[n % len(cluster.urls)]}/v1/orders",
                cluster.clerk_token,
                json={"lines": [{"sku": sku, "quantity": 1} for sku in lines_of(n)]},
            )
            if answer.status == 200:
                assert [line["sku"] for line in answer.body["lines"]] == lines_of(n)
                return OK
            return str(answer.body["code"])

        outcomes = await storm(order, ORDERS, CONCURRENCY)
        assert outcomes == {OK: STOCK, "insufficient_stock": ORDERS - STOCK}
        for sku in SKUS:
            # Both SKUs moved together: every order took both lines or neither.
            await assert_every_server_sees(client, cluster, sku, 0, STOCK + 1)
            assert_audit_replays(await full_audit(client, cluster, sku), 0)
        assert await deadlock_retries(client, cluster) == 0, "sorted locking never deadlocks"


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
