"""Zero oversell across real server processes sharing one PostgreSQL database."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.distributed.checks import (
    assert_audit_replays,
    assert_every_server_sees,
    full_audit,
    put_stock,
)
from tests.distributed.cluster import Cluster
from tests.distributed.storm import OK, SHORT, Client, http_purchase, oversell_verdict, storm

pytestmark = pytest.mark.distributed

ATTEMPTS = 10_000
STOCK = 100
CONCURRENCY = 200
POOL_SIZE_PER_SERVER = 10


async def test_ten_thousand_purchases_sell_exactly_the_stock(cluster: Cluster) -> None:
    sku = "STORM-1"
    async with Client(CONCURRENCY) as client:
        await put_stock(client, cluster, sku, STOCK)
        outcomes = await storm(http_purchase(client, cluster, sku), ATTEMPTS, CONCURRENCY)
        assert oversell_verdict(outcomes, STOCK, ATTEMPTS) == []
        await assert_every_server_sees(client, cluster, sku, 0, STOCK + 1)
        entries = await full_audit(client, cluster, sku)
    assert_audit_replays(entries, 0)
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
    sku, rounds, buyers = "LAST-1", 100, 8
    async with Client(buyers) as client:
        buy = http_purchase(client, cluster, sku)
        for _ in range(rounds):
            await put_stock(client, cluster, sku, 1)
            outcomes = await asyncio.gather(*(buy(n) for n in range(buyers)))
            assert sorted(outcomes) == [SHORT] * (buyers - 1) + [OK]
        await assert_every_server_sees(client, cluster, sku, 0, 2 * rounds)
        entries = await full_audit(client, cluster, sku)
    assert_audit_replays(entries, 0)
    assert [e["reason"] for e in entries] == ["set", "purchase"] * rounds


async def test_duplicate_idempotent_purchases_at_two_servers_apply_once(cluster: Cluster) -> None:
    sku, rounds = "IDEM-1", 50
    async with Client(4) as client:
        await put_stock(client, cluster, sku, 1000)
        for r in range(rounds):
            first, second = await asyncio.gather(
                *(
                    client.call(
                        "POST",
                        f"{url}/v1/items/{sku}/purchase",
                        cluster.clerk_token,
                        json={"quantity": 1},
                        headers={"Idempotency-Key": f"dup-{r}"},
                    )
                    for url in cluster.urls[:2]
                )
            )
            assert (first.status, second.status) == (200, 200)
            assert first.body == second.body
            replayed = sorted(a.headers.get("Idempotent-Replayed", "-") for a in (first, second))
            assert replayed == ["-", "true"]
        await assert_every_server_sees(client, cluster, sku, 1000 - rounds, rounds + 1)
