"""One read source for the cluster (docs/cache.md, "One read source"), with real partitions:
each faulted server reaches Redis or PostgreSQL through its own `FaultProxy`, which holds the
bytes (connections open, nothing delivered) as a network partition does.

Each scenario runs on the coherent cache, which must hold, and on the per-process degraded mode
it replaced (`stockkeeper.bench.baselines.ProcessLocalSource`), which must break it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import pytest

from stockkeeper.cache.read_mode import ReadModeOptions, Source
from stockkeeper.cache.redis import RedisCache
from stockkeeper.domain import ReadsRefused
from stockkeeper.faults.proxy import FaultProxy
from tests.cache.conftest import NO_FEED, REDIS_URL, OpenServer, Server
from tests.cache.naive import expect
from tests.conftest import WITH_PGBOUNCER
from tests.eventually import eventually
from tests.holds import held

# Short leases keep the scenarios short; the argument does not depend on their length.
FAST_LEASE = {"lease_ms": 200.0, "poll_ms": 20.0, "margin_ms": 20.0}
FAST = {
    "read_mode": ReadModeOptions(**FAST_LEASE),
    **NO_FEED,  # no tailer pushes the held write for its writer
    "timeout_ms": 50,
    "recovery_probe_ms": 50.0,
    "read_wait_ms_max": 400.0,
}


@contextmanager
def proxied(url: str) -> Iterator[tuple[FaultProxy, str]]:
    """A proxy in front of the server a URL names, and the same URL through it."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    with FaultProxy(parts.hostname, parts.port) as proxy:
        netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
        yield proxy, urlunsplit(parts._replace(netloc=netloc))


@dataclass
class History:
    """Reads as their callers saw them: (started, ended, version), on one clock."""

    reads: list[tuple[float, float, int]] = field(default_factory=list)
    refused: int = 0

    async def read(self, server: Server, sku: str) -> None:
        started = time.monotonic()
        try:
            version = (await server.read(sku)).version
        except ReadsRefused:
            self.refused += 1
            return
        self.reads.append((started, time.monotonic(), version))

    def went_back(self) -> list[tuple[tuple[float, float, int], tuple[float, float, int]]]:
        """Pairs (earlier, later): `later` began after `earlier` ended, and is older."""
        return [
            (earlier, later)
            for earlier in self.reads
            for later in self.reads
            if later[0] > earlier[1] and later[2] < earlier[2]
        ]


@pytest.fixture
async def redis_proxy() -> AsyncIterator[tuple[FaultProxy, str]]:
    with proxied(REDIS_URL) as pair:
        yield pair


async def alternate(history: History, servers: list[Server], sku: str, rounds: int) -> None:
    for _ in range(rounds):
        for server in servers:
            await history.read(server, sku)


@pytest.mark.parametrize("database_url", WITH_PGBOUNCER, indirect=True)
@pytest.mark.parametrize("kind", ["coherent", "per-process"])
async def test_g1_a_server_cut_off_from_redis_never_makes_a_read_go_back(
    open_server: OpenServer, redis_proxy: tuple[FaultProxy, str], sku: str, kind: str
) -> None:
    """A reaches Redis through a proxy that is cut; B reaches it directly. B commits v2 and has
    not pushed it yet (Redis still holds v1). A reader alternates between A and B. Per-process,
    A serves the database's v2 and B then Redis's v1. One source: A waits for the cluster to
    switch to database reads, and B stops serving Redis before anyone serves the database."""
    proxy, a_url = redis_proxy
    a = await open_server(kind, redis_url=a_url, **FAST)
    b = await open_server(kind, **FAST)
    await a.inventory.set_stock(sku, 5, user="t")
    history = History()
    await alternate(history, [a, b], sku, 2)
    async with held("cache.push.before") as push:
        write = asyncio.create_task(b.inventory.decrement_stock(sku, 1, user="t"))
        await push.reached()
        proxy.hold()
        await alternate(history, [a, b], sku, 10)
        push.release()
        await write
    proxy.heal()
    await alternate(history, [a, b], sku, 2)
    versions = {version for _, _, version in history.reads}
    assert versions == {1, 2} and history.refused == 0, (versions, history.refused)
    expect(kind, not history.went_back())


@pytest.mark.parametrize("kind", ["coherent", "per-process"])
async def test_g1_a_server_cut_off_from_postgresql_fences_itself_before_others_switch(
    open_server: OpenServer,
    redis_proxy: tuple[FaultProxy, str],
    database_url: str,
    sku: str,
    kind: str,
) -> None:
    """A reaches Redis but not PostgreSQL; B reaches PostgreSQL but not Redis, and commits v2
    (Redis keeps v1). B's trip switches the cluster to database reads. A cannot renew its lease:
    it must stop serving Redis hits before B serves the database, and refuse rather than wait
    for ever. Per-process, A goes on serving v1 after B served v2."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a partition from the database needs a database over the network")
    b_redis_proxy, b_redis_url = redis_proxy
    with proxied(database_url) as (pg_proxy, a_database_url):
        a = await open_server(kind, database_url=a_database_url, **FAST)
        b = await open_server(kind, redis_url=b_redis_url, **FAST)
        await b.inventory.set_stock(sku, 5, user="t")
        history = History()
        await alternate(history, [a, b], sku, 2)
        pg_proxy.hold()
        b_redis_proxy.hold()
        await b.inventory.decrement_stock(sku, 1, user="t")
        started = time.monotonic()
        await alternate(history, [b, a], sku, 5)
        took_s = time.monotonic() - started
        b_redis_proxy.heal()
        pg_proxy.heal()
    served = [version for _, _, version in history.reads]
    assert 2 in served, served
    if kind == "coherent":
        assert history.refused > 0  # A, fenced, cannot read the database either
        assert took_s < 5 * 2 * 0.4 + 2, took_s  # no read waits much past read_wait_ms_max
    expect(kind, not history.went_back())


@pytest.mark.parametrize("kind", ["coherent", "no-feed-check"])
async def test_g2_a_server_cut_off_from_postgresql_serves_no_hit_a_write_it_cannot_see_made_stale(
    open_server: OpenServer,
    redis_proxy: tuple[FaultProxy, str],
    database_url: str,
    sku: str,
    kind: str,
) -> None:
    """A reaches PostgreSQL but not Redis: its push fails and it acknowledges v2 (committed),
    with Redis still at v1. B reaches Redis but not PostgreSQL, so no tailer can bring v2 to
    Redis and B cannot see A's switch to database reads. From 100 ms after A's answer, B must
    not serve v1: its last poll of the feed is too old, so it waits, then refuses. Checking
    only its lease (renewed before the cut), B serves v1 for up to one lease more (found by
    `python -m tests.stress --seed 20261203`, with PostgreSQL restarting)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a partition from the database needs a database over the network")
    a_redis_proxy, a_redis_url = redis_proxy
    options: dict[str, float] = {"timeout_ms": 50, "read_wait_ms_max": 400.0}
    if kind == "no-feed-check":
        options["feed_fresh_ms"] = math.inf
    with proxied(database_url) as (pg_proxy, b_database_url):
        a = await open_server(redis_url=a_redis_url, **options)
        b = await open_server(database_url=b_database_url, **options)
        await a.inventory.set_stock(sku, 5, user="t")
        assert (await b.read(sku)).version == 1  # Redis holds v1
        assert (await b.inventory.read(sku)).cache_hit
        pg_proxy.hold()
        a_redis_proxy.hold()
        await a.inventory.decrement_stock(sku, 1, user="t")
        acknowledged_s = time.monotonic()
        await asyncio.sleep(0.1)
        history = History()
        while time.monotonic() < acknowledged_s + 0.6:
            await history.read(b, sku)
        a_redis_proxy.heal()
        pg_proxy.heal()
    stale = [read for read in history.reads if read[2] < 2]
    assert history.reads or history.refused, "B answered nothing"
    expect(kind, not stale)


@pytest.mark.parametrize("kind", ["coherent", "no-catch-up"])
async def test_g1_back_on_redis_no_hit_is_older_than_a_database_read(
    open_server: OpenServer, redis_proxy: tuple[FaultProxy, str], sku: str, kind: str
) -> None:
    """A, cut off from Redis, commits v2 (its push fails) and dies; B, in database mode, serves
    v2 from the database. When Redis serves again, B's first hit must not be Redis's v1, even
    though no tailer has polled since (the feed is slow here) and no read of that SKU read
    through meanwhile: the switch back catches up before its first hit. Without that catch-up,
    it serves v1."""
    proxy, a_url = redis_proxy
    fast = {**FAST, "read_mode": ReadModeOptions(**{**FAST_LEASE, "vote_ms": 300.0})}
    a = await open_server(redis_url=a_url, **fast)
    b = await open_server(**fast)
    assert isinstance(b.cache, RedisCache)
    if kind == "no-catch-up":

        async def skipped() -> bool:
            return True

        b.cache._mode._catch_up = skipped  # type: ignore[attr-defined]
    probe = f"{sku}-probe"  # read meanwhile: its read-throughs would repair `sku` too
    for one in (sku, probe):
        await a.inventory.set_stock(one, 5, user="t")
        assert (await b.read(one)).version == 1  # cached
    proxy.hold()
    await a.inventory.decrement_stock(sku, 1, user="t")  # trips A: database reads everywhere

    async def from_the_database() -> bool:  # not reading through: that would push v2
        return b.cache._mode.source(time.monotonic()) is Source.DATABASE  # type: ignore[attr-defined]

    assert await eventually(from_the_database, 5)
    assert (await b.inventory.read(sku)).item.version == 2
    await a.cache.close()  # A dies with v2 in its pending set

    async def hit() -> bool:
        return (await b.inventory.read(probe)).cache_hit

    assert await eventually(hit, 5)  # the vote lapsed; B serves Redis again
    expect(kind, (await b.read(sku)).version == 2)
