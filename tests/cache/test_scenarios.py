"""Issue 17's catalogue, in process: each scenario forces one interleaving with failpoints (and,
where Redis must go away, a `FaultProxy`) against the real database (both backends) and the real
Redis. It runs on the coherent cache, which must hold, and on naive cache-aside (delete on
write, TTL fill), which must break, by the interleaving and not by luck (`expect`).

Readers are recorded as `History` (started, ended, version) on one clock: a read goes back if it
began after another read ended and answered an older version.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest

from stockkeeper.cache.read_mode import ReadModeOptions
from stockkeeper.cache.resp import CacheUnavailable, RespClient
from stockkeeper.domain import Item, ReadsRefused, Receipt
from tests.cache.conftest import NO_FEED, REDIS_URL, OpenServer, Server
from tests.cache.naive import expect
from tests.cache.test_read_source import FAST, FAST_LEASE, History, proxied
from tests.eventually import eventually
from tests.holds import held

VISIBLE_S_MAX = 0.1  # G2: every server serves a change within 100 ms of its commit
WATCH_S = 0.15  # how long readers keep reading after a commit: past VISIBLE_S_MAX
# Redis outages: short votes, so the cluster is back on Redis within a second of the heal.
OUTAGE = {**FAST, "read_mode": ReadModeOptions(**FAST_LEASE, vote_ms=300.0)}


async def expire(redis: RespClient, key: str) -> None:
    """The key's TTL runs out now: Redis itself expires it (1 ms left, then a lookup)."""
    await redis.call("PEXPIRE", key, 1)

    async def gone() -> bool:
        return await redis.call("EXISTS", key) == 0

    assert await eventually(gone, 1)


async def watch(history: History, servers: list[Server], sku: str, until_s: float) -> None:
    """Read `sku` from every server in turn until `until_s` (monotonic)."""
    while time.monotonic() < until_s:
        for server in servers:
            await history.read(server, sku)


def older_after(history: History, since_s: float, version: int) -> list[tuple[float, float, int]]:
    """Reads that began after `since_s` and answered a version older than `version`."""
    return [read for read in history.reads if read[0] > since_s and read[2] < version]


@pytest.mark.parametrize("read_between", [False, True], ids=["refill-next", "read-between"])
@pytest.mark.parametrize("kind", ["coherent", "naive"])
async def test_an_entry_expiring_during_a_purchase_is_not_refilled_with_the_old_value(
    open_server: OpenServer, redis: RespClient, sku: str, kind: str, read_between: bool
) -> None:
    """v1 is cached. A purchase is held inside its transaction (v2 written, uncommitted); the
    key's TTL runs out; B misses and reads the database: v1, since v2 is not committed; B is held
    before its fill. The purchase commits and tells the cache (naive: a DEL of a key that has
    already expired). In one variant A then reads v2 (naive: its miss fills v2). Then B's fill
    lands, and every server reads on.

    Naive: B's unversioned SET of v1 lands after the DEL and stays for the whole TTL: every later
    read answers v1, the writer's own too, and after A served v2 reads go back. Coherent: B's
    miss began an incarnation, the writer's push left a floor of v2 in it (and A's fill, v2
    itself), so B's fill of v1 is refused: every reader serves v2."""
    a, b, c = [await open_server(kind, **NO_FEED) for _ in range(3)]
    await a.inventory.set_stock(sku, 5, user="t")
    assert (await c.read(sku)) == Item(sku, 5, 1)  # filled: v1 is cached
    history = History()
    async with held("store.write.before_commit") as purchase:
        # A key makes the purchase a transaction on PostgreSQL too, so it has an inside.
        bought = asyncio.create_task(
            a.inventory.decrement_stock(sku, 1, user="t", idempotency_key=f"order-{sku}")
        )
        await purchase.reached()
        await expire(redis, a.key(sku))
        async with held("service.read.after_fetch") as refill:
            slow = asyncio.create_task(history.read(b, sku))
            await refill.reached()
            purchase.release()
            mine = (await bought).change
            committed_s = time.monotonic()
            if read_between:
                await history.read(a, sku)
            refill.release()
            await slow
    await watch(history, [a, b, c], sku, committed_s + WATCH_S)
    assert mine.version == 2 and history.refused == 0
    stale = older_after(history, committed_s + VISIBLE_S_MAX, mine.version)
    expect(kind, not stale and not history.went_back())


async def outcome(answer: Awaitable[object]) -> object:
    """What a caller got: the answer, a clean refusal (503), or a cache error (a 500)."""
    try:
        return await answer
    except ReadsRefused:
        return "refused"
    except CacheUnavailable:
        return "cache error"


async def serve_hits(servers: list[Server], sku: str) -> bool:
    """Whether every server answers `sku` from Redis now (a refusal while it recovers: no)."""
    try:
        reads = [await server.inventory.read(sku) for server in servers]
    except ReadsRefused:
        return False
    return all(read.cache_hit for read in reads)


@pytest.mark.parametrize("kind", ["coherent", "naive"])
async def test_redis_lost_between_commit_and_push_serves_nothing_stale_once_back(
    open_server: OpenServer, sku: str, kind: str
) -> None:
    """Both servers reach Redis through one proxy. Redis holds v1. A's purchase commits v2 and
    is held before its push. Redis goes away with B's read in flight: the proxy holds B's
    command, then drops it and everything after (a partition that loses data; Redis keeps
    v1). A's push is released into the drop. Then the proxy heals.

    Coherent: A's push times out, A trips and keeps v2 pending, and acknowledges the purchase;
    B's read times out, B trips, and answers from the database once the cluster reads from it
    (or refuses, 503). Back on Redis, every server pushes what is pending (and one feed poll)
    before its first hit: nobody serves v1. Naive: the DEL is lost with the link, so A's
    purchase and B's read fail with a cache error (a 500), and once Redis is back it serves
    v1 for the rest of the TTL."""
    probe = f"{sku}-probe"  # never changed: tells when both servers serve Redis again
    with proxied(REDIS_URL) as (proxy, redis_url):
        a, b = [await open_server(kind, redis_url=redis_url, **OUTAGE) for _ in range(2)]
        for one in (sku, probe):
            await a.inventory.set_stock(one, 5, user="t")
            await a.read(one)
        history = History()
        await history.read(b, sku)
        async with held("cache.push.before") as push:
            bought = asyncio.create_task(outcome(a.inventory.decrement_stock(sku, 1, user="t")))
            await push.reached()
            proxy.hold()
            in_flight = asyncio.create_task(outcome(b.read(sku)))

            async def b_read_sent() -> bool:
                return proxy.bytes_held > 0

            assert await eventually(b_read_sent, 1) and not in_flight.done()
            proxy.drop()
            push.release()
            acknowledged, mid_request = await bought, await in_flight
        proxy.heal()
        healed_s = time.monotonic()

        async def back_on_redis() -> bool:
            return await serve_hits([a, b], probe)

        # Not `sku`: a read-through of it meanwhile would push v2 and hide a missing catch-up.
        assert await eventually(back_on_redis, 5)
        await watch(history, [a, b], sku, time.monotonic() + WATCH_S)
    print(f"\n{kind}: purchase {acknowledged}, read in flight {mid_request}")
    clean = isinstance(acknowledged, Receipt) and mid_request in (Item(sku, 4, 2), "refused")
    expect(kind, clean)
    expect(kind, not older_after(history, healed_s, 2) and not history.went_back())
