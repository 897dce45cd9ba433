"""The distributed setup behind PgBouncer 1.18 in transaction mode (its defaults otherwise): 4
`serve` processes and the CLI reach PostgreSQL only through it, with a private Redis. The storm
sells exactly the stock, orders never split nor deadlock, keyed copies apply once, `stockkeeper
verify` finds nothing, and neither does the history checker while Redis restarts (the cluster
switches to database reads and back, on leases read through the pooler)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import POSTGRES_URL
from tests.distributed.checks import (
    duplicate_purchases_apply_once,
    opposite_orders,
    race_for_last_item,
    sell_out,
)
from tests.distributed.cluster import Cluster, fresh_schema, running_servers
from tests.distributed.pgbouncer import running_pgbouncer
from tests.distributed.redis_server import RedisServer
from tests.distributed.test_cache import run_and_check
from tests.verify.test_verify_cli import verify

pytestmark = pytest.mark.distributed

SERVERS = 4
ATTEMPTS = 10_000
STOCK = 100
CONCURRENCY = 200


@pytest.fixture(scope="module")
def pooled(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[Cluster]:
    """The servers' and the CLI's URL goes through PgBouncer; the cluster's `database_url`, for
    the tests' own reads, straight to the schema."""
    with fresh_schema() as direct_url:
        (schema,) = parse_qs(urlsplit(direct_url).query)["search_path"]
        with (
            running_pgbouncer(POSTGRES_URL, [schema]) as bouncer,
            running_servers(
                tmp_path_factory.mktemp("pooled"),
                bouncer.url(schema),
                SERVERS,
                cache_url=redis_server.url,
            ) as cluster,
        ):
            yield dataclasses.replace(cluster, database_url=direct_url)


async def test_ten_thousand_purchases_sell_exactly_the_stock(pooled: Cluster) -> None:
    await sell_out(pooled, "PGB-STORM", STOCK, ATTEMPTS, CONCURRENCY)


async def test_last_item_has_exactly_one_winner_across_servers(pooled: Cluster) -> None:
    await race_for_last_item(pooled, "PGB-LAST", rounds=50, buyers=8)


async def test_opposite_order_orders_neither_deadlock_nor_split(pooled: Cluster) -> None:
    await opposite_orders(pooled, ("PGB-A", "PGB-B"), stock=300, orders=400, concurrency=64)


async def test_duplicate_idempotent_purchases_at_two_servers_apply_once(pooled: Cluster) -> None:
    await duplicate_purchases_apply_once(pooled, "PGB-IDEM", rounds=50)


async def test_verify_finds_nothing_wrong(pooled: Cluster) -> None:
    """Sets, purchases, restocks, orders, keyed writes, single and batch reads."""
    urls = [arg for url in pooled.urls for arg in ("--url", url)]
    run = await asyncio.to_thread(
        verify, *urls, "--token", pooled.admin_token, "--seconds", "4", "--seed", "19"
    )
    assert run.returncode == 0 and "verdict: CORRECT" in run.stdout, run.stdout + run.stderr


async def test_history_with_redis_restarted_mid_run(
    pooled: Cluster, redis_server: RedisServer
) -> None:
    """Last in this module: Redis comes back empty."""

    async def restart_redis() -> None:
        redis_server.kill()
        await asyncio.sleep(0.5)
        redis_server.start()

    await run_and_check(pooled, restart_redis, list(range(SERVERS)))
