"""Holds across real server processes sharing one PostgreSQL and one Redis: the last units held
once over 4 servers (a naive check-then-insert over-reserves under the same load), every
server serving `held` and `available` within 100 ms, an expiry too, and `bench holds`'
checkout storm."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from stockkeeper.bench.holds import run_holds
from tests.distributed.checks import full_audit, put_stock
from tests.distributed.cluster import Cluster
from tests.distributed.storm import OK, SHORT, Client, storm

pytestmark = pytest.mark.distributed

STOCK = 20
ATTEMPTS = 1_000
CONCURRENCY = 100
VISIBILITY_S = 0.1
EXPIRY_S_MAX = 1.0  # shared/API.md: an expiry is recorded within 1 s of expires_at


def http_hold(client: Client, cluster: Cluster, sku: str) -> Any:
    async def attempt(n: int) -> str:
        url = cluster.urls[n % len(cluster.urls)]
        body = {"lines": [{"sku": sku, "quantity": 1}], "ttl_s": 600}
        answer = await client.call("POST", f"{url}/v1/holds", cluster.clerk_token, json=body)
        return OK if answer.status == 201 else str(answer.body.get("code", answer.status))

    return attempt


async def test_the_last_units_are_held_once_over_four_servers(cluster: Cluster) -> None:
    sku = "HOLD-LAST-1"
    async with Client(CONCURRENCY) as client:
        await put_stock(client, cluster, sku, STOCK)
        outcomes = await storm(http_hold(client, cluster, sku), ATTEMPTS, CONCURRENCY)
        assert (outcomes[OK], outcomes[SHORT]) == (STOCK, ATTEMPTS - STOCK), outcomes
        await asyncio.sleep(VISIBILITY_S)
        for url in cluster.urls:
            answer = await client.call("GET", f"{url}/v1/items/{sku}", cluster.clerk_token)
            assert (answer.body["held"], answer.body["available"]) == (STOCK, 0), url
        entries = await full_audit(client, cluster, sku)
    assert [e["reason"] for e in entries] == ["set"] + ["hold"] * STOCK
    assert [e["held"] for e in entries] == list(range(STOCK + 1))
    conn = await asyncpg.connect(cluster.database_url)
    try:
        active = await conn.fetchval(
            "SELECT count(*) FROM hold_lines JOIN holds ON holds.id = hold_id "
            "WHERE sku = $1 AND state = 'active'",
            sku,
        )
    finally:
        await conn.close()
    assert active == STOCK


async def test_naive_check_then_insert_over_reserves_under_the_same_load(cluster: Cluster) -> None:
    """Medusa's design (#16569): reservations are rows, checked against the stock and then
    inserted, with no lock and no counter. Same storm, same servers' database."""
    sku = "HOLD-NAIVE-1"
    async with Client(4) as client:
        await put_stock(client, cluster, sku, STOCK)
    pool = await asyncpg.create_pool(cluster.database_url, min_size=4, max_size=40)

    async def naive_hold(n: int) -> str:
        async with pool.acquire() as conn:
            available = await conn.fetchval(
                "SELECT i.on_hand - coalesce(sum(l.quantity), 0) FROM items AS i "
                "LEFT JOIN hold_lines AS l ON l.sku = i.sku "
                "AND l.hold_id IN (SELECT id FROM holds WHERE state = 'active') "
                "WHERE i.sku = $1 GROUP BY i.on_hand",
                sku,
            )
            if available < 1:
                return SHORT
            async with conn.transaction():
                hold_id = f"naive-{n}"
                await conn.execute(
                    "INSERT INTO holds (id, user_name, state, created_at, expires_at) "
                    "VALUES ($1, 'shop', 'active', now(), now() + interval '10 minutes')",
                    hold_id,
                )
                await conn.execute(
                    "INSERT INTO hold_lines (hold_id, line, sku, quantity) VALUES ($1, 1, $2, 1)",
                    hold_id,
                    sku,
                )
            return OK

    try:
        outcomes = await storm(naive_hold, ATTEMPTS, CONCURRENCY)
    finally:
        await pool.close()
    assert outcomes[OK] > STOCK, f"expected the naive design to over-reserve, got {outcomes}"


async def test_an_expiry_is_served_by_every_server_within_100_ms_of_its_record(
    cluster: Cluster,
) -> None:
    """No request needs the stock, so the expirer records the expiry; from 100 ms after the
    recorded change every server serves the stock as available again, at its version: an
    expiry is a change like any other, pushed by its writer and carried by every tailer."""
    sku = "HOLD-EXPIRY-SEEN-1"
    async with Client(8) as client:
        await put_stock(client, cluster, sku, 5)
        body = {"lines": [{"sku": sku, "quantity": 3}], "ttl_s": 1}
        created = await client.call(
            "POST", f"{cluster.urls[0]}/v1/holds", cluster.clerk_token, json=body
        )
        assert created.status == 201, created.body
        await asyncio.sleep(VISIBILITY_S)
        assert await served(client, cluster, sku) == [(3, 2, 2)] * len(cluster.urls)
        deadline_s = time.monotonic() + 1 + 2 * EXPIRY_S_MAX
        while (entries := await full_audit(client, cluster, sku))[-1]["reason"] != "expire":
            assert time.monotonic() < deadline_s, "the expiry was never recorded"
            await asyncio.sleep(0.01)
        expired = entries[-1]
        recorded_s = datetime.fromisoformat(expired["at"]).timestamp()
        await asyncio.sleep(max(0.0, recorded_s + VISIBILITY_S - time.time()))
        want = (0, 5, expired["version"])
        assert await served(client, cluster, sku) == [want] * len(cluster.urls)


async def served(client: Client, cluster: Cluster, sku: str) -> list[tuple[int, int, int]]:
    """(held, available, version) as each server serves `sku` now."""
    answers = []
    for url in cluster.urls:
        answer = await client.call("GET", f"{url}/v1/items/{sku}", cluster.clerk_token)
        assert answer.status == 200, answer.body
        answers.append((answer.body["held"], answer.body["available"], answer.body["version"]))
    return answers


async def test_a_checkout_storm_sells_or_gives_back_every_unit(cluster: Cluster) -> None:
    """`bench holds`, small: every hold ends once, and each walk-away expires within 1 s."""
    result = await run_holds(
        cluster.urls,
        cluster.admin_token,
        cluster.clerk_token,
        "HOLD-STORM-1",
        STOCK,
        carts=600,
        concurrency=50,
        ttl_s=1,
        confirm_share=0.5,
        seed=7,
    )
    assert result.problems == [], result.problems
    assert result.hold_outcomes.get("201", 0) >= STOCK
    assert result.sold == result.confirm_outcomes.get("200", 0)
