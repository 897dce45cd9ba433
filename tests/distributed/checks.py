"""Assertions the distributed tests share: what every server serves, what the audit log says."""

from __future__ import annotations

from typing import Any

from tests.distributed.cluster import Cluster
from tests.distributed.storm import Client


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
        assert answer.body == {"sku": sku, "on_hand": on_hand, "version": version}, url
