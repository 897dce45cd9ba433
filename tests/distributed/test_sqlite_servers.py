"""The embedded default, shared: several serve processes on one SQLite file never oversell."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.distributed.checks import race_for_last_item, sell_out
from tests.distributed.cluster import Cluster, running_servers

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
    await sell_out(sqlite_cluster, "FILE-1", STOCK, ATTEMPTS, CONCURRENCY)


async def test_last_item_has_one_winner_across_processes(sqlite_cluster: Cluster) -> None:
    await race_for_last_item(sqlite_cluster, "FILE-LAST", rounds=30, buyers=8)
