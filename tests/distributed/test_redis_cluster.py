"""The distributed setup on a real Redis Cluster (3 primaries, a replica each): 3 `serve`
processes given one node's URL, under verify's mixed load (purchases, restocks, sets, orders,
keyed repeats, single and batch reads), every answer checked against the audit log while slots
migrate between primaries, and while primaries fail over: a graceful `CLUSTER FAILOVER`, then a
primary killed. No read may go back, none may be stale, and every promoted primary is fenced
(its keys deleted, once, recorded in the database) before it serves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from stockkeeper.bench.scrape import Samples, scrape
from stockkeeper.store.rows import PURGED_NODE_KEY
from stockkeeper.verify.run import Report, VerifyOptions, verify
from tests.distributed.cluster import Cluster, fresh_schema, running_servers
from tests.distributed.redis_cluster import RedisCluster, running_redis_cluster

pytestmark = pytest.mark.distributed

SERVERS = 3
TRIPS = "stockkeeper_cache_degraded_trips_total"
READS = "stockkeeper_cache_requests_total"
HITS, MISSES = f"{READS} hit", f"{READS} miss"
REDIRECTS = "stockkeeper_cache_cluster_redirects_total"
FENCES = "stockkeeper_cache_cluster_fences_total"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[RedisCluster, Cluster]]:
    with (
        running_redis_cluster() as redis_cluster,
        fresh_schema() as database_url,
        running_servers(tmp_path, database_url, SERVERS, cache_url=redis_cluster.seed_url) as c,
    ):
        yield (
            redis_cluster,
            Cluster(c.urls, c.admin_token, c.clerk_token, c.processes, database_url),
        )


async def judged(
    servers: Cluster,
    seconds: float,
    seed: int,
    beside: Callable[[float], Coroutine[Any, Any, None]],
) -> Report:
    options = VerifyOptions(servers.urls, servers.admin_token, seconds=seconds, seed=seed)
    report = await verify(options, alongside=beside)
    print(f"\n{len(report.ops)} operations, {len(report.entries)} audit entries: {report.counts()}")
    assert report.ok, report.verdict
    return report


async def counters(servers: Cluster) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        scraped: list[Samples] = [await scrape(session, url) for url in servers.urls]
    totals = dict.fromkeys((TRIPS, HITS, MISSES, REDIRECTS, FENCES), 0.0)
    for samples in scraped:
        for (name, labels), value in samples.items():
            result = dict(labels).get("result")
            key = name if result is None else f"{name} {result}"
            if key in totals:
                totals[key] += value
    return totals


async def test_histories_hold_while_slots_migrate(
    setup: tuple[RedisCluster, Cluster],
) -> None:
    """Half the slots of one primary move to another and back under load: MOVED and ASK are
    followed, so the cache never trips and keeps hitting."""
    redis_cluster, servers = setup
    source, target = redis_cluster.primaries()[:2]

    async def reshard(started_s: float) -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(redis_cluster.reshard, source, target, 2_700)
        await asyncio.to_thread(redis_cluster.reshard, target, source, 2_700)

    await judged(servers, seconds=8, seed=31, beside=reshard)
    after = await counters(servers)
    print(after)
    assert after[TRIPS] == 0 and after[REDIRECTS] > 0, after
    assert after[HITS] > 0 and after[HITS] >= 0.9 * (after[HITS] + after[MISSES]), after


async def test_histories_hold_while_primaries_fail_over(
    setup: tuple[RedisCluster, Cluster],
) -> None:
    """A replica takes over by `CLUSTER FAILOVER`; later another primary is SIGKILLed and its
    replica promoted (asynchronous replication: acknowledged writes may be lost there). Both
    promoted primaries are fenced before they serve; the history shows no read going back."""
    redis_cluster, servers = setup
    graceful, killed = redis_cluster.primaries()[:2]

    async def fail_over(started_s: float) -> None:
        await asyncio.sleep(1.5)
        (replica,) = redis_cluster.replicas_of(graceful)
        await asyncio.to_thread(redis_cluster.failover, replica)
        await asyncio.sleep(2.0)
        redis_cluster.kill(killed)
        await asyncio.to_thread(redis_cluster.wait_for_failover_of, killed)

    await judged(servers, seconds=12, seed=37, beside=fail_over)
    conn = await asyncpg.connect(servers.database_url)
    try:
        fenced = await conn.fetchval(
            "SELECT count(*) FROM stockkeeper_meta WHERE key LIKE $1", PURGED_NODE_KEY + "%"
        )
    finally:
        await conn.close()
    assert fenced == 2
    assert 2 <= (await counters(servers))[FENCES] <= 2 * SERVERS  # once each, per process at most
