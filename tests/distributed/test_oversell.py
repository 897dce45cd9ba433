"""Zero oversell across real server processes sharing one PostgreSQL database."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from tests.distributed.cluster import Cluster
from tests.distributed.storm import OK, SHORT, http_client, http_purchase, oversell_verdict, storm

pytestmark = pytest.mark.distributed

ATTEMPTS = 10_000
STOCK = 100
CONCURRENCY = 200
POOL_SIZE_PER_SERVER = 10


async def put_stock(client: httpx.AsyncClient, cluster: Cluster, sku: str, on_hand: int) -> None:
    response = await client.put(
        f"{cluster.urls[0]}/v1/items/{sku}",
        json={"on_hand": on_hand},
        headers=cluster.headers(cluster.admin_token),
    )
    assert response.status_code in (200, 201), response.text


async def full_audit(client: httpx.AsyncClient, cluster: Cluster, sku: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        response = await client.get(
            f"{cluster.urls[-1]}/v1/items/{sku}/audit",
            params={"after_version": after, "limit": 1000},
            headers=cluster.headers(cluster.admin_token),
        )
        assert response.status_code == 200, response.text
        page = response.json()
        entries += page["entries"]
        after = page["next_after_version"]
    return entries


def assert_audit_replays(entries: list[dict[str, Any]], final_on_hand: int) -> None:
    """Versions 1..n without a gap, and the deltas replay to on_hand at every version."""
    assert [e["version"] for e in entries] == list(range(1, len(entries) + 1))
    on_hand = 0
    for entry in entries:
        on_hand += entry["delta"]
        assert entry["on_hand"] == on_hand >= 0
    assert on_hand == final_on_hand


async def assert_every_server_sees(
    client: httpx.AsyncClient, cluster: Cluster, sku: str, on_hand: int, version: int
) -> None:
    for url in cluster.urls:
        response = await client.get(f"{url}/v1/items/{sku}", headers=cluster.headers(cluster.clerk_token))
        assert response.json() == {"sku": sku, "on_hand": on_hand, "version": version}, url


async def test_ten_thousand_purchases_sell_exactly_the_stock(cluster: Cluster) -> None:
    sku = "STORM-1"
    async with http_client(CONCURRENCY) as client:
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
    async with http_client(4) as client:
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
    headers = cluster.headers(cluster.clerk_token)
    async with http_client(buyers) as client:
        for _ in range(rounds):
            await put_stock(client, cluster, sku, 1)
            responses = await asyncio.gather(
                *(
                    client.post(
                        f"{cluster.urls[n % len(cluster.urls)]}/v1/items/{sku}/purchase",
                        json={"quantity": 1},
                        headers=headers,
                    )
                    for n in range(buyers)
                )
            )
            assert sorted(r.status_code for r in responses) == [200] + [409] * (buyers - 1)
        await assert_every_server_sees(client, cluster, sku, 0, 2 * rounds)
        entries = await full_audit(client, cluster, sku)
    assert_audit_replays(entries, 0)
    assert [e["reason"] for e in entries] == ["set", "purchase"] * rounds


async def test_duplicate_idempotent_purchases_at_two_servers_apply_once(cluster: Cluster) -> None:
    sku, rounds = "IDEM-1", 50
    headers = cluster.headers(cluster.clerk_token)
    async with http_client(4) as client:
        await put_stock(client, cluster, sku, 1000)
        for r in range(rounds):
            keyed = {**headers, "Idempotency-Key": f"dup-{r}"}
            first, second = await asyncio.gather(
                *(
                    client.post(f"{url}/v1/items/{sku}/purchase", json={"quantity": 1}, headers=keyed)
                    for url in cluster.urls[:2]
                )
            )
            assert (first.status_code, second.status_code) == (200, 200)
            assert first.json() == second.json()
            replayed = [r.headers.get("idempotent-replayed") for r in (first, second)]
            assert sorted(replayed, key=str) == ["true", None] or sorted(replayed, key=str) == [None, "true"]
        await assert_every_server_sees(client, cluster, sku, 1000 - rounds, rounds + 1)
