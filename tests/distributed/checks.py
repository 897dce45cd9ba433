"""What the distributed tests share: what every server serves, what the audit log says, and
the purchase scenarios run against each kind of cluster."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from stockkeeper.domain import Item
from tests.distributed.cluster import Cluster
from tests.distributed.storm import OK, SHORT, Client, http_purchase, oversell_verdict, storm


async def put_stock(client: Client, cluster: Cluster, sku: str, on_hand: int) -> None:
    answer = await client.call(
        "PUT", f"{cluster.urls[0]}/v1/items/{sku}", cluster.admin_token, json={"on_hand": on_hand}
    )
    assert answer.status in (200, 201), answer.body


async def full_audit(client: Client, cluster: Cluster, sku: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        answer = await client.call(
            "GET",
            f"{cluster.urls[-1]}/v1/items/{sku}/audit",
            cluster.admin_token,
            params={"after_version": after, "limit": 1000},
        )
        assert answer.status == 200, answer.body
        entries += answer.body["entries"]
        after = answer.body["next_after_version"]
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
    client: Client, cluster: Cluster, sku: str, on_hand: int, version: int
) -> None:
    for url in cluster.urls:
        answer = await client.call("GET", f"{url}/v1/items/{sku}", cluster.clerk_token)
        assert answer.body == Item(sku, on_hand, version).to_json(), url


async def sell_out(
    cluster: Cluster, sku: str, stock: int, attempts: int, concurrency: int
) -> list[dict[str, Any]]:
    """Storm `attempts` purchases of one at `stock` items, spread over the servers: exactly
    `stock` succeed, the rest are clean refusals, every server then serves 0. Returns the audit."""
    async with Client(concurrency) as client:
        await put_stock(client, cluster, sku, stock)
        outcomes = await storm(http_purchase(client, cluster, sku), attempts, concurrency)
        assert oversell_verdict(outcomes, stock, attempts) == [], outcomes
        await assert_every_server_sees(client, cluster, sku, 0, stock + 1)
        entries = await full_audit(client, cluster, sku)
    assert_audit_replays(entries, 0)
    return entries


async def race_for_last_item(
    cluster: Cluster, sku: str, rounds: int, buyers: int
) -> list[dict[str, Any]]:
    """`rounds` times: one item left, `buyers` buy at once across servers; one wins each time."""
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
    return entries


async def duplicate_purchases_apply_once(cluster: Cluster, sku: str, rounds: int) -> None:
    """`rounds` times, one keyed purchase sent to two servers at once: one applies, one replays."""
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


async def deadlock_retries(client: Client, cluster: Cluster) -> float:
    total = 0.0
    for url in cluster.urls:
        for family in text_string_to_metric_families(await client.text(f"{url}/metrics")):
            for sample in family.samples:
                if sample.name == "stockkeeper_transaction_retries_total":
                    total += sample.value if sample.labels.get("reason") == "deadlock" else 0
    return total


async def opposite_orders(
    cluster: Cluster, skus: tuple[str, str], stock: int, orders: int, concurrency: int
) -> None:
    """`orders` two-line orders across the servers, half naming `skus` one way round, half the
    other (the deadlock recipe), on `stock` of each: exactly `stock` succeed, every order took
    both lines or neither, and no deadlock was even retried (rows are locked in sorted order)."""

    def lines_of(n: int) -> list[str]:
        return list(skus) if n % 2 else list(reversed(skus))

    async with Client(concurrency) as client:
        for sku in skus:
            await put_stock(client, cluster, sku, stock)

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

        outcomes = await storm(order, orders, concurrency)
        assert outcomes == {OK: stock, SHORT: orders - stock}
        for sku in skus:
            await assert_every_server_sees(client, cluster, sku, 0, stock + 1)
            assert_audit_replays(await full_audit(client, cluster, sku), 0)
        assert await deadlock_retries(client, cluster) == 0, "sorted locking never deadlocks"
