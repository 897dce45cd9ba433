"""The shared cache's guarantees (docs/cache.md), each scenario run on the coherent cache and on
the naive design it replaces: the coherent one must hold, the naive one must break.

Servers are Inventories in this process, each with its own database connections and its own
Redis connection, over the real database (both backends) and the real Redis.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from stockkeeper import failpoints, metrics
from stockkeeper.cache import scripts
from stockkeeper.cache.base import DirectReads
from stockkeeper.cache.read_mode import ReadModeOptions, Source
from stockkeeper.cache.redis import RedisCache
from stockkeeper.cache.resp import CacheUnavailable, RespClient
from stockkeeper.domain import Change, InvalidRequest, Item, Unavailable
from stockkeeper.failpoints import FailpointError
from tests.cache.conftest import NO_FEED, OpenServer, Server
from tests.cache.naive import expect
from tests.eventually import eventually
from tests.holds import held
from tests.store.test_held import hold_around_the_service


async def buy(server: Server, sku: str) -> Change:
    return (await server.inventory.decrement_stock(sku, 1, user="t")).change


async def write_then_die(server: Server, sku: str) -> None:
    """A purchase that commits, then its process dies before telling the cache."""
    with failpoints.armed("cache.push.before", "error"), pytest.raises(FailpointError):
        await buy(server, sku)


# --- G1: monotonic reads ------------------------------------------------------------------------


@pytest.mark.parametrize("expired", [False, True], ids=["cached", "expired"])
@pytest.mark.parametrize("kind", ["coherent", "naive"])
async def test_g1_a_slow_fill_never_replaces_a_newer_served_version(
    open_server: OpenServer, redis: RespClient, sku: str, kind: str, expired: bool
) -> None:
    """The stale-set race: a reader fetches v1, a writer commits v2, v2 is served (and then,
    in one variant, expires), then the reader's fill of v1 arrives."""
    a, b = await open_server(kind, **NO_FEED), await open_server(kind, **NO_FEED)
    await a.inventory.set_stock(sku, 5, user="t")
    async with held("service.read.after_fetch") as hold:
        slow = asyncio.create_task(a.read(sku))
        await hold.reached()
        await buy(b, sku)
        served = await b.read(sku)
        if expired:
            await redis.call("DEL", b.key(sku))
        hold.release()
        later = [await slow]
    later += [await server.read(sku) for server in (a, b)]
    assert served == Item(sku, 4, 2)
    expect(kind, all(item.version >= served.version for item in later))


@pytest.mark.parametrize("kind", ["coherent", "naive-set"])
async def test_g1_updates_arriving_out_of_order_never_lower_the_value(
    open_server: OpenServer, sku: str, kind: str
) -> None:
    a = await open_server(kind, **NO_FEED)
    await a.inventory.set_stock(sku, 5, user="t")
    await a.read(sku)
    await a.cache.committed([Change(sku, -1, 3, 3, 0)])
    await a.cache.committed([Change(sku, -1, 4, 2, 0)])  # the older one, late
    expect(kind, (await a.read(sku)).version == 3)


@pytest.mark.parametrize("kind", ["coherent", "naive"])
async def test_g1_redis_emptied_mid_fill_serves_nothing_older(
    open_server: OpenServer, redis: RespClient, sku: str, kind: str
) -> None:
    """Redis restarts empty (every key of the SKU vanishes) while a fill is in flight, after a
    newer version was served from it."""
    a, b = await open_server(kind, **NO_FEED), await open_server(kind, **NO_FEED)
    await a.inventory.set_stock(sku, 5, user="t")
    await b.read(sku)
    async with held("service.read.after_fetch") as hold:
        await redis.call("DEL", b.key(sku))
        slow = asyncio.create_task(a.read(sku))
        await hold.reached()
        await buy(b, sku)
        served = await b.read(sku)
        await redis.call("DEL", b.key(sku))  # the restart
        hold.release()
        await slow
    expect(kind, (await b.read(sku)).version >= served.version == 2)


def paused_replies(server: Server) -> asyncio.Transport:
    """Stop this server reading Redis's replies: Redis runs what it was sent, and the process
    cannot yet see what came of it."""
    transport = server.cache._client._connection._transport  # type: ignore[attr-defined]
    transport.pause_reading()
    return transport


async def evalsha_calls(redis: RespClient) -> int:
    stats = (await redis.call("INFO", "commandstats")).decode()
    line = next(line for line in stats.splitlines() if line.startswith("cmdstat_evalsha:"))
    return int(line.split("calls=")[1].split(",")[0])


async def b_serves_v2_then_a_reads(
    a: Server, b: Server, sku: str, first: asyncio.Task[Item], replies: asyncio.Transport
) -> None:
    """B commits v2 and serves it; then a reader begins on A, whose load `first` has had its
    result (v1) decided in Redis, unread. The load answers v1; the later reader, v2."""
    await buy(b, sku)
    served = await b.read(sku)
    later = asyncio.create_task(a.read(sku))
    await asyncio.sleep(0.01)
    replies.resume_reading()
    assert (await first).version == 1
    assert (await later).version >= served.version == 2


async def test_g1_a_reader_arriving_after_redis_filled_a_load_does_not_join_it(
    open_server: OpenServer, redis: RespClient, sku: str
) -> None:
    """A's load of v1 has been FILLED in Redis; A has not read the reply. B commits v2 and
    serves it. A reader that begins on A now must not be handed the load's v1."""
    a, b = await open_server(**NO_FEED), await open_server(**NO_FEED)
    await a.inventory.set_stock(sku, 5, user="t")
    async with held("service.read.after_fetch") as hold:
        first = asyncio.create_task(a.read(sku))
        await hold.reached()
        replies = paused_replies(a)
        hold.release()

        async def filled() -> bool:
            return await redis.call("HGET", a.key(sku), "q") == b"5"

        assert await eventually(filled, 2)
    await b_serves_v2_then_a_reads(a, b, sku, first, replies)


async def test_g1_a_reader_arriving_after_redis_answered_a_waiting_load_does_not_join_it(
    open_server: OpenServer, redis: RespClient, sku: str
) -> None:
    """A waits for another filler's value; its poll has been answered with v1 in Redis, and A
    has not read the reply. B commits v2 and serves it. A later reader on A must see v2."""
    poll_ms = 200.0
    a = await open_server(wait_poll_ms=poll_ms, lease_wait_ms_max=5_000.0, **NO_FEED)
    b = await open_server(**NO_FEED)
    await a.inventory.set_stock(sku, 5, user="t")
    other = "another-filler"
    await redis.evalsha(scripts.READ, (a.key(sku),), (other, 10_000, 10_000))
    first = asyncio.create_task(a.read(sku))

    async def waiting() -> bool:
        return sku in a.cache._loads  # type: ignore[attr-defined]

    assert await eventually(waiting, 2)  # A got WAIT and sleeps until its next poll
    replies = paused_replies(a)
    await redis.evalsha(scripts.FILL, (a.key(sku),), (other, 1, 5, 60_000, 0))
    calls = await evalsha_calls(redis)

    async def polled() -> bool:
        return await evalsha_calls(redis) > calls  # A's poll ran, its answer unread

    assert await eventually(polled, 2 * poll_ms / 1000 + 1)
    await b_serves_v2_then_a_reads(a, b, sku, first, replies)
    assert a.db_reads == []  # A was served by the other filler, as the scenario meant


async def test_g1_no_such_item_is_not_shared_with_a_reader_that_began_after_it_was_read(
    open_server: OpenServer, sku: str
) -> None:
    """A's load found no such item; then B creates the item and serves it; a reader that
    began on A after that must not be told it does not exist."""
    a, b = await open_server(**NO_FEED), await open_server(**NO_FEED)
    async with held("service.read.after_fetch") as hold:
        first = asyncio.create_task(a.cache.read(sku))
        await hold.reached()
        await b.inventory.set_stock(sku, 5, user="t")
        served = await b.read(sku)
        later = asyncio.create_task(a.cache.read(sku))
        await asyncio.sleep(0.01)
        hold.release()
        assert await first is None
        read = await later
    assert served == Item(sku, 5, 1) and read is not None and read.item == served


# --- G2: visible everywhere, also when the writer dies after COMMIT ----------------------------


@pytest.mark.parametrize("kind", ["coherent", "naive"])
async def test_g2_a_writer_dying_after_commit_is_visible_everywhere_within_100_ms(
    open_server: OpenServer, sku: str, kind: str
) -> None:
    a, b = await open_server(kind), await open_server(kind)
    await a.inventory.set_stock(sku, 5, user="t")
    assert (await b.read(sku)).version == 1
    await write_then_die(a, sku)
    committed_at = time.monotonic()

    async def b_serves_it() -> bool:
        return (await b.read(sku)).version == 2

    await eventually(b_serves_it, 0.5)
    expect(kind, time.monotonic() - committed_at < 0.1)


@pytest.mark.parametrize("kind", ["coherent", "naive"])
async def test_g2_a_fill_in_flight_never_hides_a_write_pushed_meanwhile(
    open_server: OpenServer, sku: str, kind: str
) -> None:
    """A reader fetched v1; a writer commits v2 and pushes it (nothing cached yet: the push
    leaves a version floor); the reader's fill of v1 lands. The writer must still read v2."""
    a, b = await open_server(kind, **NO_FEED), await open_server(kind, **NO_FEED)
    await a.inventory.set_stock(sku, 5, user="t")
    async with held("service.read.after_fetch") as hold:
        slow = asyncio.create_task(a.read(sku))
        await hold.reached()
        mine = await buy(b, sku)
        hold.release()
        await slow
    expect(kind, (await b.read(sku)).version == mine.version == 2)


@pytest.mark.parametrize("kind", ["coherent", "naive-set"])
async def test_g2_a_late_push_of_an_older_write_never_hides_a_newer_one(
    open_server: OpenServer, sku: str, kind: str
) -> None:
    """Writer a commits v2 and is slow to push; writer b commits v3, pushes, and must go on
    serving v3 (its own write) after a's push of v2 lands."""
    a, b = await open_server(kind, **NO_FEED), await open_server(kind, **NO_FEED)
    await a.inventory.set_stock(sku, 5, user="t")
    await a.read(sku)
    async with held("cache.push.before") as hold:
        slow = asyncio.create_task(buy(a, sku))
        await hold.reached()
        mine = await buy(b, sku)
        at_once = (await b.read(sku)).version == mine.version == 3
        hold.release()
        await slow
    expect(kind, at_once and (await b.read(sku)).version == 3)


async def test_g2_min_version_reads_through_a_cache_that_is_behind(
    open_server: OpenServer, sku: str
) -> None:
    a = await open_server(**NO_FEED)
    await a.inventory.set_stock(sku, 5, user="t")
    await a.read(sku)
    await write_then_die(a, sku)
    assert (await a.read(sku)).version == 1  # the feed has not run: the cache is behind
    assert (await a.inventory.read(sku, min_version=2)).item == Item(sku, 4, 2)
    assert (await a.inventory.read(sku)).item.version == 2  # the read-through raised it
    with pytest.raises(InvalidRequest, match="min_version"):
        await a.inventory.read(sku, min_version=3)


# --- G3: writes keep keys cached ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["coherent", "naive"])
async def test_g3_a_write_leaves_its_key_cached(
    open_server: OpenServer, sku: str, kind: str
) -> None:
    a = await open_server(kind, **NO_FEED)
    await a.inventory.set_stock(sku, 5, user="t")
    await a.read(sku)
    await buy(a, sku)
    read = await a.inventory.read(sku)
    expect(kind, read.cache_hit and read.item.version == 2)


@pytest.mark.parametrize("kind", ["coherent", "naive"])
async def test_g3_xfetch_renews_a_hot_key_before_it_expires(
    open_server: OpenServer, sku: str, kind: str
) -> None:
    """A key read continuously through three TTLs never misses after the first read."""
    options = {"ttl_s": 0.3, "xfetch_delta_ms_min": 20.0} if kind == "coherent" else {}
    a = await open_server(kind, **NO_FEED, **options)
    if kind != "coherent":
        a.cache._ttl_s = 1  # type: ignore[attr-defined]  # the naive cache's TTL, in seconds
    await a.inventory.set_stock(sku, 5, user="t")
    misses = 0
    deadline = time.monotonic() + 3 * (0.3 if kind == "coherent" else 1.0)
    while time.monotonic() < deadline:
        misses += not (await a.inventory.read(sku)).cache_hit
        await asyncio.sleep(0.001)
    expect(kind, misses == 1)


# --- G4: no thundering herd -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["coherent", "naive"])
async def test_g4_a_cold_key_stampede_reads_the_database_once_per_server(
    open_server: OpenServer, sku: str, kind: str
) -> None:
    servers = [await open_server(kind, **NO_FEED) for _ in range(4)]
    if kind == "coherent":  # an earlier test's outage may have left the cluster switching
        assert await eventually(lambda: serving_hits(servers), timeout_s=5)
    await servers[0].inventory.set_stock(sku, 5, user="t")
    expect(kind, await stampede(servers, sku) <= 1)


@pytest.mark.parametrize("mode", ["switching", "database"])
async def test_g4_a_stampede_while_the_cluster_reads_the_database_reads_it_once_per_server(
    open_server: OpenServer, sku: str, mode: str
) -> None:
    """With no lease on Redis mode (a switch under way) every read is a read-through, and in
    database mode every read reads the database: each must still be one read per burst and
    server, not one per reader (the design before single flight here: 100 of 100)."""
    servers = [await open_server(**NO_FEED) for _ in range(4)]
    store = servers[0].store
    await servers[0].inventory.set_stock(sku, 5, user="t")
    if mode == "database":
        await store.vote_database_reads("test-g4", 1_500)
    await store.switch_read_mode((await store.read_mode()).epoch, "database")
    wanted = None if mode == "switching" else Source.DATABASE

    async def in_mode() -> bool:
        return all(s.cache._mode.source(time.monotonic()) is wanted for s in servers)  # type: ignore[attr-defined]

    assert await eventually(in_mode, timeout_s=5)
    assert await stampede(servers, sku) <= 1
    assert await eventually(lambda: serving_hits(servers), timeout_s=10)  # as it found it


async def serving_hits(servers: list[Server]) -> bool:
    now = time.monotonic()
    modes = [server.cache._mode for server in servers]  # type: ignore[attr-defined]
    return all(mode.redis_from_s <= now < mode.redis_until_s for mode in modes)


async def stampede(servers: list[Server], sku: str) -> int:
    """100 readers per server at once: the most database reads any one server made."""
    reads = [server.read(sku) for server in servers for _ in range(100)]
    items = await asyncio.gather(*reads)
    assert set(items) == {Item(sku, 5, 1)}
    return max(len(server.db_reads) for server in servers)


# --- G5: degraded, never wrong --------------------------------------------------------------------


async def test_g5_with_redis_unreachable_reads_and_writes_go_on_from_the_database(
    database_url: str, sku: str
) -> None:
    from stockkeeper.service import Inventory

    async with await Inventory.open(database_url, cache_url="redis://127.0.0.1:1/0") as inventory:
        assert isinstance(inventory.cache, RedisCache) and not inventory.cache.up
        await inventory.set_stock(sku, 5, user="t")
        await inventory.decrement_stock(sku, 2, user="t")
        read = await inventory.read(sku)
        assert read.item == Item(sku, 3, 2) and not read.cache_hit
        with pytest.raises(Unavailable, match="cache unreachable"):
            await inventory.cache.ping()


async def test_g5_a_hanging_redis_costs_one_bounded_timeout(
    open_server: OpenServer, redis: RespClient, sku: str
) -> None:
    lease = ReadModeOptions(lease_ms=200.0, poll_ms=50.0, margin_ms=20.0)
    a = await open_server(timeout_ms=50, recovery_probe_ms=5_000, read_mode=lease, **NO_FEED)
    await a.inventory.set_stock(sku, 5, user="t")
    await a.read(sku)
    trips = metrics.CACHE_TRIPS._value.get()
    await redis.call("CLIENT", "PAUSE", 400, "ALL")
    started = time.monotonic()
    first = await a.inventory.read(sku)
    first_s = time.monotonic() - started
    second = await a.inventory.read(sku)
    both_s = time.monotonic() - started
    await asyncio.sleep(0.4)
    assert metrics.CACHE_TRIPS._value.get() == trips + 1  # one trip, counted for /metrics
    assert first.item == second.item == Item(sku, 5, 1)
    assert not first.cache_hit and not second.cache_hit
    # 50 ms, then the switch to database reads (one 200 ms mode lease), then a database read.
    assert first_s < 0.5 and both_s < 0.5, (first_s, both_s)


@pytest.mark.parametrize("protected", [True, False])
async def test_g5_after_an_outage_nothing_stale_is_served(
    open_server: OpenServer, redis: RespClient, sku: str, protected: bool
) -> None:
    """Redis kept v1 while this process could not reach it and committed v2; when it comes
    back, v2 is pushed before any hit. Without the catch-up, v1 would be served."""
    a = await open_server(recovery_probe_ms=50.0, **NO_FEED)
    assert isinstance(a.cache, RedisCache)
    await a.inventory.set_stock(sku, 5, user="t")
    await a.read(sku)
    if not protected:

        async def skip() -> None:
            return None

        a.cache._tailer.catch_up = skip  # type: ignore[method-assign]
    a.cache._trip(CacheUnavailable("the connection is lost"))
    await buy(a, sku)
    assert await redis.call("HGET", a.key(sku), "v") == b"1"

    async def recovered() -> bool:
        return a.cache.up  # type: ignore[attr-defined]

    assert await eventually(recovered, 5)
    read = await a.inventory.read(sku)
    assert read.cache_hit
    assert (read.item.version == 2) == protected


async def test_g5_more_changes_than_the_pending_set_keeps_reset_the_cache(
    open_server: OpenServer, sku: str
) -> None:
    """Three SKUs change behind this server's back while it keeps at most two pending pushes:
    it must not serve the old values; it deletes every key of its namespace and refills."""
    a = await open_server(pending_skus_max=2, recovery_probe_ms=20.0, **NO_FEED)
    b = await open_server(**NO_FEED)
    assert isinstance(a.cache, RedisCache)
    skus = [f"{sku}-{n}" for n in range(3)]
    for one in skus:
        await a.inventory.set_stock(one, 5, user="t")
        await a.read(one)
    for one in skus:
        await write_then_die(b, one)
    await a.cache._tailer.step()  # one poll brings all three

    async def recovered() -> bool:
        return a.cache.up  # type: ignore[attr-defined]

    assert await eventually(recovered, 5)
    assert [(await a.read(one)).version for one in skus] == [2, 2, 2]


@pytest.mark.parametrize("changed", [1, 2], ids=["kept", "overflowing-again"])
async def test_g5_writes_made_while_recovery_resets_the_cache_are_pushed_before_any_hit(
    open_server: OpenServer, sku: str, changed: int
) -> None:
    """Recovery from an overflowed pending set deletes every key. Meanwhile B refills X (v2)
    and this process commits v3: once it serves hits again, it must serve v3, not B's v2. With
    two SKUs written meanwhile the pending set overflows again, and the reset starts over."""
    a = await open_server(pending_skus_max=1, recovery_probe_ms=20.0, **NO_FEED)
    b = await open_server(**NO_FEED)
    assert isinstance(a.cache, RedisCache)
    skus = [f"{sku}-x", f"{sku}-y"]
    for one in skus:
        await a.inventory.set_stock(one, 5, user="t")
        await a.read(one)
    async with held("cache.reset.after_delete") as hold:
        for one in skus:
            await write_then_die(b, one)
        await a.cache._tailer.step()  # two changed SKUs, one kept: overflow, trip, reset
        await hold.reached()
        assert [(await b.read(one)).version for one in skus] == [2, 2]
        mine = [await buy(a, one) for one in skus[:changed]]
        hold.release()

        async def recovered() -> bool:
            return a.cache.up  # type: ignore[attr-defined]

        assert await eventually(recovered, 5)
    versions = [(await a.read(change.sku)).version for change in mine]
    assert versions == [change.version for change in mine] == [3] * changed


@pytest.mark.parametrize("kind", ["coherent", "none"])
async def test_g5_while_the_database_is_down_cached_items_are_still_served(
    open_server: OpenServer, sku: str, kind: str
) -> None:
    a = await open_server(**NO_FEED)
    await a.inventory.set_stock(sku, 5, user="t")
    await a.read(sku)
    if kind == "none":
        a.inventory.cache = DirectReads(a.store)

    async def database_down(sku: str) -> Item | None:
        raise Unavailable("database unreachable: connection refused")

    a.store.get_item = database_down  # type: ignore[method-assign]
    try:
        served = (await a.read(sku)) == Item(sku, 5, 1)
    except Unavailable:
        served = False
    assert served == (kind == "coherent")


# --- the batch read -------------------------------------------------------------------------------


async def test_read_many_answers_in_one_round_trip_when_every_sku_is_cached(
    open_server: OpenServer, sku: str
) -> None:
    a = await open_server(**NO_FEED)
    skus = [f"{sku}-{n}" for n in range(5)]
    for n, one in enumerate(skus):
        await a.inventory.set_stock(one, n, user="t")
    found, unknown = await a.inventory.read_many([*skus[:3], f"{sku}-none"])
    assert [r.item for r in found] == [Item(s, n, 1) for n, s in enumerate(skus[:3])]
    assert unknown == [f"{sku}-none"] and not any(r.cache_hit for r in found)
    reads_before = len(a.db_reads)
    found, unknown = await a.inventory.read_many(list(reversed(skus)))
    assert [r.item.sku for r in found] == list(reversed(skus)) and unknown == []
    assert [r.cache_hit for r in found] == [False, False, True, True, True]
    assert len(a.db_reads) == reads_before + 2


# --- held stock -----------------------------------------------------------------------------------


async def test_held_travels_with_on_hand_through_fills_pushes_and_the_feed(
    open_server: OpenServer, database_url: str, sku: str
) -> None:
    """The hash keeps `h` beside `q`, both written with `v`: a fill, a writer's push and a
    tailer's push each carry the held count of their version."""
    a = await open_server(**NO_FEED)
    b = await open_server()  # its tailer brings what no writer pushed
    await a.inventory.set_stock(sku, 10, user="t")
    held_at_2 = await hold_around_the_service(database_url, Item(sku, 10, 1), 3)
    assert not (await a.inventory.read(sku)).cache_hit  # filled from the database
    hit = await a.inventory.read(sku)
    assert hit.cache_hit and hit.item == held_at_2
    await b.inventory.decrement_stock(sku, 2, user="t")  # B pushes v3
    hit = await a.inventory.read(sku)
    assert hit.cache_hit and hit.item == Item(sku, 8, 3, 3)
    held_at_4 = await hold_around_the_service(database_url, hit.item, 1)  # nobody pushes it

    async def tailed() -> bool:
        read = await a.inventory.read(sku)
        return read.cache_hit and read.item == held_at_4

    assert await eventually(tailed, 5)
