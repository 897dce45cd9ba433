"""The cache client on a real Redis Cluster (3 primaries, a replica each, started here): slot
routing, MOVED and ASK, purges on every primary, fencing a promoted primary, and the cache's hit
path on it. The histories under load while slots move and primaries fail over are in
tests/distributed/test_redis_cluster.py."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from stockkeeper import metrics
from stockkeeper.cache import RedisCacheOptions, open_cache
from stockkeeper.cache.client import RedisClient
from stockkeeper.cache.read_mode import ReadModeOptions
from stockkeeper.cache.redis import RedisCache
from stockkeeper.cache.resp import CacheUnavailable, Endpoint, RespClient, Script
from stockkeeper.cache.slots import slot
from stockkeeper.service import Inventory
from stockkeeper.store import Store, open_store
from tests.cache.naive import expect
from tests.distributed.redis_cluster import ClusterNode, RedisCluster, cli, running_redis_cluster
from tests.eventually import eventually

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    with running_redis_cluster() as cluster:
        yield cluster


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[Store]:
    store = await open_store(postgres_url)
    await store.migrate()
    yield store
    await store.close()


def connect(endpoint: Endpoint) -> RespClient:
    return RespClient(endpoint, timeout_ms=2_000, connect_timeout_ms=2_000)


@pytest.fixture
async def client(redis_cluster: RedisCluster, store: Store) -> AsyncIterator[RedisClient]:
    client = new_client(redis_cluster, store, "sk:test:*")
    yield client
    await client.close()


def new_client(redis_cluster: RedisCluster, store: Store, pattern: str) -> RedisClient:
    seed = connect(Endpoint.parse(redis_cluster.seed_url))
    return RedisClient(seed, connect, store, pattern)


def key_on(redis_cluster: RedisCluster, node: ClusterNode) -> str:
    """A fresh key (hash-tagged like the cache's) whose slot `node` serves."""
    owned = set(redis_cluster.slots_of(node))
    while True:
        key = f"sk:test:{{{uuid.uuid4().hex[:10]}}}"
        if slot(key) in owned:
            return key


def test_the_slot_of_a_key_is_the_one_redis_computes(redis_cluster: RedisCluster) -> None:
    node = redis_cluster.nodes[0]
    keys = ["foo", "{user1000}.following", "a{}b", "{}{x}", "x{y", "sk:ns:{SKU-1}", "ünï{cødé}"]
    keys += [f"sk:ab12:{{{n}}}" for n in range(50)]
    for key in keys:
        assert slot(key) == int(cli(node, "CLUSTER", "KEYSLOT", key)), key


async def test_a_url_naming_any_node_routes_every_key_to_its_primary(
    redis_cluster: RedisCluster, client: RedisClient
) -> None:
    keys = [f"sk:test:{{{n}}}" for n in range(300)]
    await asyncio.gather(*(client.call("SET", key, "v") for key in keys))
    assert client.cluster is True
    holders = set()
    for key in keys:
        owner = redis_cluster.node_for_slot(slot(key))
        assert cli(owner, "EXISTS", key) == "1"
        holders.add(owner.port)
    assert len(holders) == 3
    assert await client.call("GET", keys[0]) == b"v"
    assert await client.call("PING") == b"PONG"  # every primary


async def test_a_single_redis_is_told_apart_and_served_directly(store: Store) -> None:
    client = RedisClient(connect(Endpoint.parse("redis://127.0.0.1:6379/0")), connect, store, "")
    try:
        assert client.cluster is None
        assert await client.call("PING") == b"PONG"
        assert client.cluster is False
    finally:
        await client.close()


async def test_a_slot_that_moved_is_followed_and_the_map_read_again(
    redis_cluster: RedisCluster, client: RedisClient
) -> None:
    source, target = redis_cluster.primaries()[:2]
    key = key_on(redis_cluster, source)
    await client.call("SET", key, "moved")
    move_slot(redis_cluster, slot(key), source, target)
    try:
        assert await client.call("GET", key) == b"moved"  # MOVED, then the new map
        assert redis_cluster.node_for_slot(slot(key)).port == target.port
    finally:
        move_slot(redis_cluster, slot(key), target, source)


async def test_a_key_half_way_through_a_migration_is_asked_for_where_it_went(
    redis_cluster: RedisCluster, client: RedisClient
) -> None:
    source, target = redis_cluster.primaries()[:2]
    key = key_on(redis_cluster, source)
    await client.call("SET", key, "asked")
    key_slot = slot(key)
    cli(target, "CLUSTER", "SETSLOT", str(key_slot), "IMPORTING", source.node_id)
    cli(source, "CLUSTER", "SETSLOT", str(key_slot), "MIGRATING", target.node_id)
    cli(source, "MIGRATE", "127.0.0.1", str(target.port), key, "0", "5000")
    try:
        assert await client.call("GET", key) == b"asked"  # source: ASK; target: ASKING, GET
        assert redis_cluster.node_for_slot(key_slot).port == source.port  # the map is the same
    finally:
        for node in (source, target):
            cli(node, "CLUSTER", "SETSLOT", str(key_slot), "NODE", target.node_id)
        move_slot(redis_cluster, key_slot, target, source)


async def test_a_script_a_node_does_not_know_is_loaded_there_in_the_same_write(
    redis_cluster: RedisCluster, client: RedisClient
) -> None:
    """A promoted primary has no scripts (SCRIPT LOAD is not replicated): NOSCRIPT, then
    SCRIPT LOAD and the command in one write, on that node."""
    read = Script("return redis.call('GET', KEYS[1])")
    keys = [f"sk:test:{{script-{n}}}" for n in range(30)]  # on every primary
    await asyncio.gather(*(client.call("SET", key, key) for key in keys))
    for node in redis_cluster.primaries():
        assert cli(node, "SCRIPT", "FLUSH") == "OK"
    replies = await asyncio.gather(*(client.evalsha(read, (key,)) for key in keys))
    assert replies == [key.encode() for key in keys]


async def test_delete_matching_covers_every_primary(
    redis_cluster: RedisCluster, client: RedisClient
) -> None:
    mine = [f"sk:mine:{{{n}}}" for n in range(200)]
    other = "sk:other:{1}"
    await asyncio.gather(*(client.call("SET", key, "v") for key in [*mine, other]))
    await client.delete_matching("sk:mine:*")
    assert all(cli(redis_cluster.node_for_slot(slot(k)), "EXISTS", k) == "0" for k in mine)
    assert await client.call("GET", other) == b"v"


async def test_the_cache_on_a_cluster_hits_and_never_trips(
    redis_cluster: RedisCluster, postgres_url: str, store: Store
) -> None:
    """The issue's measure: 20 cold keys, 400 reads each, cost 8,000 database reads when the client
    followed no redirect; routed, each key is read from the database about once."""
    inventory = Inventory(store)
    # A long lease, and a long wait for the feed: a loop starved by 8,000 reads at once must
    # not let either lapse between rounds (reads then wait or go to the database, correctly,
    # and this test is about routing).
    options = RedisCacheOptions(
        timeout_ms=2_000,
        feed_fresh_ms=2_000.0,
        read_mode=ReadModeOptions(lease_ms=2_000.0),
    )
    cache = await open_cache(redis_cluster.seed_url, store, options)
    inventory.cache = cache
    trips = metrics.CACHE_TRIPS._value.get()  # type: ignore[attr-defined]
    db_reads = metrics.ITEM_DB_READS._value.get()  # type: ignore[attr-defined]
    try:
        assert isinstance(cache, RedisCache)
        mode = cache._mode

        async def serving_hits() -> bool:  # a new database's first epoch waits one lease
            return mode.redis_from_s <= time.monotonic() < mode.redis_until_s

        assert await eventually(serving_hits, timeout_s=5)
        skus = [f"C-{uuid.uuid4().hex[:8]}-{n}" for n in range(20)]
        for sku in skus:
            await inventory.set_stock(sku, 7, user="t")
        cold = await asyncio.gather(*(inventory.read(sku) for sku in skus for _ in range(400)))
        assert {read.item.on_hand for read in cold} == {7}
        assert metrics.ITEM_DB_READS._value.get() - db_reads <= 2 * len(skus)  # type: ignore[attr-defined]
        warm = await asyncio.gather(*(inventory.read(sku) for sku in skus for _ in range(400)))
        assert all(read.cache_hit for read in warm)
        assert metrics.CACHE_TRIPS._value.get() == trips  # type: ignore[attr-defined]
    finally:
        await cache.close()


async def test_a_promoted_primary_serves_only_after_its_keys_were_deleted_once(
    redis_cluster: RedisCluster, store: Store
) -> None:
    """A replica promoted may hold older values than its primary served: before anyone uses
    it, its keys go (once, recorded in the database), and a later client trusts the record."""
    first = new_client(redis_cluster, store, "sk:fence:*")
    later = new_client(redis_cluster, store, "sk:fence:*")
    try:
        primary = redis_cluster.primaries()[0]
        (replica,) = redis_cluster.replicas_of(primary)
        key = key_on(redis_cluster, primary).replace("sk:test:", "sk:fence:")  # same slot
        await first.call("SET", key, "older")
        assert await replicated(primary)  # the replica holds it too
        redis_cluster.failover(replica)
        answers: list[object] = []

        async def served() -> bool:
            try:
                answers.append(await first.call("GET", key))  # MOVED, the new map, fencing
            except CacheUnavailable as error:
                answers.append(str(error))
                return False
            return True

        assert await eventually(served, timeout_s=10)
        assert answers[-1] is None and b"older" not in answers, answers
        assert any("promoted" in str(answer) for answer in answers), answers
        assert await store.cache_node_purged(identity(replica))
        await first.call("SET", key, "after")
        assert await later.call("GET", key) == b"after"  # the record: no second purge
    finally:
        await first.close()
        await later.close()


async def replicated(primary: ClusterNode) -> bool:
    """Whether the replica acknowledged every write so far, within 10 s: a fresh cluster's
    link may still be syncing, and a link may drop and come back."""

    async def acknowledged() -> bool:
        return cli(primary, "WAIT", "1", "200") == "1"

    return await eventually(acknowledged, timeout_s=10)


def identity(node: ClusterNode) -> str:
    def field(section: str, name: str) -> str:
        lines = cli(node, "INFO", section).splitlines()
        (line,) = [line for line in lines if line.startswith(name + ":")]
        return line.split(":", 1)[1].strip()

    return f"{field('server', 'run_id')}:{field('replication', 'master_replid')}"


def move_slot(
    redis_cluster: RedisCluster, key_slot: int, source: ClusterNode, target: ClusterNode
) -> None:
    """Redis's own four steps for moving one slot, keys included."""
    cli(target, "CLUSTER", "SETSLOT", str(key_slot), "IMPORTING", source.node_id)
    cli(source, "CLUSTER", "SETSLOT", str(key_slot), "MIGRATING", target.node_id)
    while keys := cli(source, "CLUSTER", "GETKEYSINSLOT", str(key_slot), "100").split():
        cli(source, "MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *keys)
    for node in redis_cluster.primaries():
        cli(node, "CLUSTER", "SETSLOT", str(key_slot), "NODE", target.node_id)
    redis_cluster.settle()


class TrustsEveryPrimary:
    """The naive design: a ledger that says every promoted primary was purged already."""

    async def cache_node_purged(self, node: str) -> bool:
        return True

    async def record_cache_node_purged(self, node: str) -> None:
        raise AssertionError("never asked: nothing is fenced")


# Forcing the loss can miss (the replica has no v1 either after its failover, seen once in
# CI): then there is no scenario to judge, and it is set up again on a new cluster.
LOSS_ATTEMPTS = 3


@pytest.mark.parametrize("kind", ["coherent", "naive"])
async def test_a_write_lost_in_a_failover_never_brings_an_older_value_back(
    store: Store, kind: str
) -> None:
    """Asynchronous replication, forced: the replica is frozen (SIGSTOP) and cut off while its
    primary acknowledges v2, then the primary dies and the thawed replica, holding v1, is
    promoted.
    Fenced, v2's reader never sees v1: the promoted primary's keys go before it serves."""
    for _ in range(LOSS_ATTEMPTS):
        with running_redis_cluster() as cluster:
            ledger = store if kind == "coherent" else TrustsEveryPrimary()
            seed = connect(Endpoint.parse(cluster.seed_url))
            client = RedisClient(seed, connect, ledger, "sk:lost:*")  # type: ignore[arg-type]
            try:
                key = await _lose_v2(cluster, client)
                if key is None:
                    continue
                expect(kind, b"v1" not in await _answers_until_served(client, key))
                return
            finally:
                await client.close()
    pytest.fail(f"the write was not lost in {LOSS_ATTEMPTS} attempts: no scenario")


async def _answers_until_served(client: RedisClient, key: str) -> list[object]:
    """Read `key` until a read is answered (a refusal in between is an answer too)."""
    answers: list[object] = []

    async def served() -> bool:
        try:
            answers.append(await client.call("GET", key))
        except CacheUnavailable as error:
            answers.append(str(error))
            return False
        return True

    assert await eventually(served, timeout_s=15)
    return answers


async def _lose_v2(cluster: RedisCluster, client: RedisClient) -> str | None:
    """Write v1, then v2 that only the primary takes, then kill it: the key, once its replica,
    holding v1, is promoted; None if the promoted replica does not hold v1."""
    primary = cluster.primaries()[0]
    (replica,) = cluster.replicas_of(primary)
    key = key_on(cluster, primary).replace("sk:test:", "sk:lost:")
    await client.call("SET", key, "v1")
    assert await replicated(primary)
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        # Cut the link too: a frozen process's kernel would still take in the stream
        # (none to cut if the link had dropped already: the write is lost all the same).
        cli(primary, "CLIENT", "KILL", "TYPE", "replica")
        await client.call("SET", key, "v2")
        assert await client.call("GET", key) == b"v2"  # served: a reader saw v2
        cluster.kill(primary)
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    cluster.wait_for_failover_of(primary)
    return key if cli(replica, "GET", key) == "v1" else None
