"""The embedded default, shared: several serve processes on one SQLite file never oversell."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.distributed.checks import (
    assert_audit_replays,
    assert_every_server_sees,
    full_audit,
    put_stock,
)
from tests.distributed.cluster import Cluster, running_servers
from tests.distributed.storm import OK, SHORT, Client, http_purchase, oversell_verdict, storm

pytestmark = pytest.mark.distributed

SERVERS = 2
ATTEMPTS = 2_000
STOCK = 100
CONCURRENCY = 64


@pytest.fixture(scope="module")
def sqlite_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("sqlite-cluster")
    with running_servers(tmp, f"sqlite:///{tmp / 'shared.db'}", SERVERS) as started:
        yield started


async def test_purchases_over_processes_sharing_one_file_sell_exactly_the_stock(
    sqlite_cluster: Cluster,
) -> None:
    sku = "FILE-1"
    async with Client(CONCURRENCY) as client:
        await put_stock(client, sqlite_cluster, sku, STOCK)
        outcomes = await storm(http_purchase(client, sqlite_cluster, sku), ATTEMPTS, CONCURRENCY)
        assert oversell_verdict(outcomes, STOCK, ATTEMPTS) == []
        await assert_every_server_sees(client, sqlite_cluster, sku, 0, STOCK + 1)
        assert_audit_replays(await full_audit(client, sqlite_cluster, sku), 0)


async def test_last_item_has_one_winner_across_processes(sqlite_cluster: Cluster) -> None:
    sku, rounds, buyers = "FILE-LAST", 30, 8
    async with Client(buyers) as client:
        buy = http_purchase(client, sqlite_cluster, sku)
        for _ in range(rounds):
            await put_stock(client, sqlite_cluster, sku, 1)
            outcomes = await asyncio.gather(*(buy(n) for n in range(buyers)))
            assert sorted(outcomes) == [SHORT] * (buyers - 1) + [OK]
        assert_audit_replays(await full_audit(client, sqlite_cluster, sku), 0)
