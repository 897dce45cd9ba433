"""The shared cache (`redis://`): versioned values, fill leases, incarnations, pushes, and the
change feed's tailer. The protocol and why it holds are in docs/cache.md; the scripts are in
cache/scripts.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stockkeeper import failpoints, metrics
from stockkeeper.cache import scripts
from stockkeeper.cache.base import read_database
from stockkeeper.cache.client import CacheClient
from stockkeeper.cache.fresh_reads import FreshReads
from stockkeeper.cache.read_mode import ReadModeLease, ReadModeOptions, ReadSource, Source
from stockkeeper.cache.resp import CacheReplyError, CacheUnavailable
from stockkeeper.cache.scripts import FillReply, ReadReply
from stockkeeper.cache.tailer import FeedTailer
from stockkeeper.domain import (
    Busy,
    Change,
    FeedEntry,
    Item,
    ItemRead,
    ReadsRefused,
    Unavailable,
)
from stockkeeper.store import Store
from stockkeeper.tasks import cancel_and_wait

log = logging.getLogger("stockkeeper.cache")

# Unreachable, or answering errors (out of memory under `noeviction`, say): either way the
# database answers instead, and the process serves no hit until recovery has caught up.
CACHE_ERRORS = (CacheUnavailable, CacheReplyError)


@dataclass(frozen=True, slots=True)
class RedisCacheOptions:
    ttl_s: float = 300.0
    lease_ms: int = 200
    registration_ttl_ms: int = 2_000
    wait_poll_ms: float = 2.0
    lease_wait_ms_max: float = 50.0
    load_attempts_max: int = 3
    timeout_ms: float = 100.0
    feed_poll_ms: float = 10.0
    # A hit needs this process's last poll of the feed, pushed in full, to have begun less than
    # this long ago: a change whose writer could not push it is then served within it (G2).
    feed_fresh_ms: float = 80.0
    pending_skus_max: int = 100_000
    recovery_probe_ms: float = 200.0
    xfetch_beta: float = 1.0
    xfetch_delta_ms_min: float = 2.0
    refreshes_in_flight_max: int = 64
    read_mode: ReadModeOptions = field(default_factory=ReadModeOptions)
    # How long a read may wait for a safe source (a switch of the cluster's read mode takes
    # one mode lease) before it is refused with 503.
    read_wait_ms_max: float = 1_000.0

    def __post_init__(self) -> None:
        if not 0 < self.feed_poll_ms < self.feed_fresh_ms:
            raise ValueError(
                f"the change feed's poll interval ({self.feed_poll_ms:g} ms) must be positive "
                f"and below the age a hit allows its last poll ({self.feed_fresh_ms:g} ms)"
            )


@dataclass(slots=True)
class _Load:
    """One database load of a SKU that this process's readers share (single-flight).

    A joiner may only be given a result decided after it joined (docs/cache.md, G1): so no one
    joins while a command whose reply decides the result is in flight (`joinable`), and a
    "no such item" found by a database read that began before a joiner arrived is not its to
    share (`fetches`, `found_nothing_at`)."""

    task: asyncio.Task[tuple[Item | None, bool]] = field(init=False)
    joinable: bool = True
    fetches: int = 0  # database reads this load has begun
    found_nothing_at: int = 0  # which of them found no such item (0: none)

    async def fetch(self, store: Store, sku: str) -> Item | None:
        self.fetches += 1
        item = await read_database(store, sku)
        if item is None:
            self.found_nothing_at = self.fetches
        return item

    async def deciding(self, command: Awaitable[Any]) -> Any:
        """Run a command whose reply may decide the result: Redis executes it at a moment this
        process cannot see, so no reader may join until the reply is handled."""
        self.joinable = False
        try:
            return await command
        finally:
            self.joinable = True


class RedisCache:
    def __init__(
        self,
        client: CacheClient,
        store: Store,
        keys: scripts.Keys,
        options: RedisCacheOptions | None = None,
        read_source: Callable[[RedisCache], ReadSource] | None = None,
    ) -> None:
        self._client = client
        self._store = store
        # Single flight for the reads that must begin after their reader: database mode's,
        # and read-throughs (pushed before they are served).
        self._database_reads = FreshReads(self._read_database)
        self._read_throughs = FreshReads(self._read_through_now)
        self.options = options or RedisCacheOptions()
        self._ttl_ms = int(self.options.ttl_s * 1000)
        self._read_args = (self.options.lease_ms, self.options.registration_ttl_ms)
        self._mode_poll_s = self.options.read_mode.poll_ms / 1000
        self._loads: dict[str, _Load] = {}
        self._token_prefix = secrets.token_hex(8) + ":"
        self._token_counter = itertools.count()
        self._refreshing: dict[str, asyncio.Future[tuple[Item | None, bool]]] = {}
        self._load_ms = 0.0  # moving average of a load's duration, for XFetch
        self._up = True
        self._closing = False
        self._recovery: asyncio.Task[None] | None = None
        self.keys = keys
        self._tailer = FeedTailer(
            store.change_feed(),
            client,
            keys,
            ttl_ms=self._ttl_ms,
            replay_s=self.options.ttl_s + 60,
            pending_skus_max=self.options.pending_skus_max,
            fresh_ms=self.options.feed_fresh_ms,
            is_up=lambda: self._up,
            trip=self._trip,
        )
        self._tailing: asyncio.Task[None] | None = None
        self._mode: ReadSource = (
            read_source(self)
            if read_source is not None
            else ReadModeLease(
                store,
                self.options.read_mode,
                reaches_redis=lambda: self._up,
                catch_up=self._catch_up,
            )
        )

    @property
    def up(self) -> bool:
        """False while this process cannot reach Redis: it serves no hit until recovery has
        caught up, and the cluster reads from the database meanwhile."""
        return self._up

    async def start(self) -> None:
        try:
            await self._client.call("PING")
        except CACHE_ERRORS as error:
            self._trip(error)
        with contextlib.suppress(Unavailable):
            await self._tailer.position()
        self._tailing = asyncio.create_task(self._tailer.run(self.options.feed_poll_ms))
        await self._mode.start()

    async def close(self) -> None:
        self._closing = True
        await self._mode.close()
        await self._database_reads.close()
        await self._read_throughs.close()
        loads = (load.task for load in self._loads.values())
        await cancel_and_wait(self._tailing, self._recovery, *self._refreshing.values(), *loads)
        await self._client.close()

    async def ping(self) -> None:
        try:
            await self._client.call("PING")
        except CACHE_ERRORS as error:
            raise Unavailable(f"cache unreachable: {error}") from error

    # --- degraded mode ----------------------------------------------------------------------

    def _trip(self, error: Exception) -> None:
        if self._closing:  # our own close() failed what was in flight: nothing to recover
            return
        if self._up:
            metrics.CACHE_TRIPS.inc()
            log.warning(
                "cache unreachable (%s): no hits until it recovers; the cluster reads from "
                "the database meanwhile",
                error,
            )
        self._up = False
        self._mode.poke()
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover())

    async def _catch_up(self) -> bool:
        """Push everything committed so far: True once Redis holds it all."""
        try:
            await self._tailer.catch_up()
        except CACHE_ERRORS as error:
            self._trip(error)
            return False
        return True

    async def _recover(self) -> None:
        while not self._up:
            await asyncio.sleep(self.options.recovery_probe_ms / 1000)
            try:
                await self._client.call("PING")
                await self._tailer.catch_up()
            except (*CACHE_ERRORS, Unavailable):
                continue
            except Exception:
                log.exception("cache recovery failed; trying again")
                continue
            self._up = True
            log.warning("cache reachable again: every change made meanwhile is pushed")

    # --- reads ------------------------------------------------------------------------------

    async def read(self, sku: str, min_version: int | None = None) -> ItemRead | None:
        """From the source the cluster's read mode allows now (docs/cache.md, One read source).
        A read counts as served from a source only if this worker still held its lease when
        the answer was decided, so the lease is checked again once the answer is in."""
        started_s = time.monotonic()
        if self._hits_allowed(started_s):
            mode = self._mode
            try:
                read = await self._read_redis(sku, min_version)
            except CACHE_ERRORS as error:
                self._trip(error)
            else:
                if time.monotonic() < mode.redis_until_s:
                    return read
        return await self._read_elsewhere(sku, min_version, started_s)

    def _hits_allowed(self, now_s: float) -> bool:
        """The hit path's test: Redis reachable, a live lease on a caught-up `redis` epoch, and
        a poll of the feed pushed in full that began at most `feed_fresh_ms` before now."""
        mode = self._mode
        return (
            self._up
            and mode.redis_from_s <= now_s < mode.redis_until_s
            and now_s < self._tailer.fresh_until_s
        )

    async def _read_elsewhere(
        self, sku: str, min_version: int | None, started_s: float
    ) -> ItemRead | None:
        """The slow path: a switch under way, a lease not renewed, Redis unreachable, the feed
        behind. Bounded by `read_wait_ms_max` in all, database reads included. A hit needs a
        poll pushed that began at most `feed_fresh_ms` before the read did (`started_s`): one
        that ends while the read waits will do, however long the loop takes to wake it."""
        wait_ms = self.options.read_wait_ms_max
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_ms / 1000):
                while True:
                    source = self._mode.source(time.monotonic())
                    try:
                        if source is Source.REDIS and self._up:
                            if started_s >= self._tailer.fresh_until_s:
                                # The feed is behind (its database slow or out of reach): a
                                # hit now could miss a change whose writer did not push it.
                                metrics.FEED_WAITS.inc()
                                await self._tailer.pushed(self._mode_poll_s)
                                continue
                            read = await self._read_redis(sku, min_version)
                        elif source is Source.DATABASE:
                            read = self._answer(await self._database_reads.read(sku), True)
                        elif self._up:
                            # Pushed before it is served: safe whatever the mode.
                            metrics.LEASELESS_READ_THROUGHS.inc()
                            return self._answer(await self._read_throughs.read(sku), True)
                        else:
                            await self._mode.changed(wait_ms / 1000)
                            continue
                    except CACHE_ERRORS as error:
                        self._trip(error)
                        continue
                    except Busy:
                        raise  # overload: waiting here would only add to it
                    except Unavailable:
                        # The database may be back at the next lease poll (a restart): a
                        # short wait serves more readers than a 503 at once.
                        await self._mode.changed(wait_ms / 1000)
                        continue
                    if self._mode.source(time.monotonic()) is source:
                        return read
        metrics.READS_REFUSED.inc()
        raise ReadsRefused(
            f"no read source was safe within {wait_ms:g} ms: the cluster's read mode is "
            "switching, or this server cannot reach Redis or the database"
        )

    async def _read_redis(self, sku: str, min_version: int | None) -> ItemRead | None:
        if min_version is None:
            load = self._loads.get(sku)
            if load is not None and load.joinable:
                return await self._join(sku, load)
        return await self._resolve(sku, await self._read_script(sku), min_version)

    async def read_many(self, skus: Sequence[str]) -> list[ItemRead | None]:
        """One round trip for the whole batch when every SKU is cached (pipelined)."""
        started_s = time.monotonic()
        if self._hits_allowed(started_s):
            mode = self._mode
            try:
                replies = await asyncio.gather(*(self._read_script(sku) for sku in skus))
                reads = await asyncio.gather(
                    *(self._resolve(sku, r, None) for sku, r in zip(skus, replies, strict=True))
                )
            except CACHE_ERRORS as error:
                self._trip(error)
            else:
                if time.monotonic() < mode.redis_until_s:
                    return list(reads)
        elsewhere = (self._read_elsewhere(sku, None, started_s) for sku in skus)
        return list(await asyncio.gather(*elsewhere))

    def _read_script(self, sku: str) -> Any:
        # A token names an incarnation or a lease holder: unique per process and per call.
        token = f"{self._token_prefix}{next(self._token_counter)}"
        return self._client.evalsha(scripts.READ, (self.keys.item(sku),), (token, *self._read_args))

    async def _resolve(
        self, sku: str, reply: list[Any], min_version: int | None
    ) -> ItemRead | None:
        if reply[0] == ReadReply.HIT:
            version = int(reply[1])
            if min_version is None or version >= min_version:
                metrics.CACHE_HITS.inc()
                self._maybe_refresh(sku, int(reply[3]), reply[4])
                return ItemRead(_hit(sku, reply), cache_hit=True)
        if min_version is not None:
            # The cache is behind the caller, or empty: no lease or shared load could promise
            # min_version (another filler may bring an older value), the database can.
            return self._answer(await self._read_throughs.read(sku), True)
        load = self._loads.get(sku)
        if load is None or not load.joinable:
            load = self._start_load(sku, ReadReply(reply[0]), reply[1])
        return await self._join(sku, load)

    def _start_load(self, sku: str, kind: ReadReply, incarnation: bytes) -> _Load:
        load = _Load()
        load.task = asyncio.ensure_future(self._fetch(sku, kind, incarnation, load))
        self._loads[sku] = load
        load.task.add_done_callback(lambda _: self._forget(sku, load))
        return load

    def _forget(self, sku: str, load: _Load) -> None:
        if self._loads.get(sku) is load:
            del self._loads[sku]

    async def _join(self, sku: str, load: _Load) -> ItemRead | None:
        fetches_seen = load.fetches
        item, from_db = await asyncio.shield(load.task)
        if item is None and load.found_nothing_at <= fetches_seen:
            # "No such item" was read before this reader began: the item may have been created,
            # and served by another server, since. Only a read that began after it may say so.
            item, from_db = await self._read_throughs.read(sku), True
        return self._answer(item, from_db)

    @staticmethod
    def _answer(item: Item | None, from_db: bool) -> ItemRead | None:
        (metrics.CACHE_MISSES if from_db else metrics.CACHE_HITS).inc()
        return None if item is None else ItemRead(item, cache_hit=not from_db)

    async def _fetch(
        self, sku: str, kind: ReadReply, incarnation: bytes, load: _Load
    ) -> tuple[Item | None, bool]:
        """(item, whether this server read the database for it). See docs/cache.md, "The read
        path", steps 3-4."""
        try:
            if kind == ReadReply.WAIT:
                waited = await self._wait_for_filler(sku, load)
                if isinstance(waited, Item):
                    return waited, False
                incarnation = waited
            for _ in range(self.options.load_attempts_max - 1):
                started = time.perf_counter()
                item = await load.fetch(self._store, sku)
                await failpoints.hit("service.read.after_fetch")
                if item is None:
                    # No such item: free the lease rather than make other servers wait it out
                    # (deleting a key is always safe: every fill registered in it is LOST).
                    await self._client.call("DEL", self.keys.item(sku))
                    return None, True
                reply = await load.deciding(
                    self._client.evalsha(
                        scripts.FILL,
                        (self.keys.item(sku),),
                        (incarnation, item.version, item.on_hand, self._ttl_ms, item.held),
                    )
                )
                self._load_ms += ((time.perf_counter() - started) * 1000 - self._load_ms) / 8
                if reply[0] == FillReply.FILLED:
                    return item, True
                if reply[0] == FillReply.NEWER:
                    return Item(sku, int(reply[2]), int(reply[1]), int(reply[3])), True
                again = await load.deciding(self._read_script(sku))  # LOST or FLOOR: anew
                if again[0] == ReadReply.HIT:
                    return _hit(sku, again), True
                incarnation = again[1]
            # Last attempt: the database read decides, so it must begin after every joiner.
            load.joinable = False
            return await self._read_through(sku, load)
        except CACHE_ERRORS as error:
            self._trip(error)
            raise  # each reader chooses its source again
        finally:
            # Decided: no one may join between the task's end and `_forget` a loop turn later.
            load.joinable = False

    async def _read_through(self, sku: str, load: _Load) -> tuple[Item | None, bool]:
        """Read the database now and push what it says before serving it: newer than anything
        served before this call began, and nothing served after it can be older."""
        item = await load.fetch(self._store, sku)
        if item is not None:
            await self._push(item)
        return item, True

    async def _read_through_now(self, sku: str) -> Item | None:
        item, _ = await self._read_through(sku, _Load())
        return item

    async def _read_database(self, sku: str) -> Item | None:
        item = await read_database(self._store, sku)
        await failpoints.hit("service.read.after_fetch")
        return item

    async def _wait_for_filler(self, sku: str, load: _Load) -> Item | bytes:
        """Another process holds the fill lease: poll Redis (not the database) for its value.
        Returns the value, or the incarnation to load into ourselves."""
        deadline = time.monotonic() + self.options.lease_wait_ms_max / 1000
        incarnation = b""
        while time.monotonic() < deadline:
            await asyncio.sleep(self.options.wait_poll_ms / 1000)
            reply = await load.deciding(self._read_script(sku))
            if reply[0] == ReadReply.HIT:
                return _hit(sku, reply)
            incarnation = reply[1]
            if reply[0] == ReadReply.LEASE:
                break
        return incarnation

    def _maybe_refresh(self, sku: str, pttl_ms: int, incarnation: bytes) -> None:
        """XFetch (Vattani et al.): renew early with a probability that rises as the TTL runs
        out, so a hot key is reloaded once, before it expires, not by a crowd after. Readers
        keep hitting meanwhile: the refresh is nobody's to join."""
        if pttl_ms < 0 or sku in self._refreshing:
            return
        delta_ms = max(self._load_ms, self.options.xfetch_delta_ms_min)
        if pttl_ms > -delta_ms * self.options.xfetch_beta * math.log(1.0 - random.random()):
            return
        if len(self._refreshing) >= self.options.refreshes_in_flight_max:
            return
        task = asyncio.ensure_future(self._fetch(sku, ReadReply.LEASE, incarnation, _Load()))
        self._refreshing[sku] = task
        task.add_done_callback(lambda done: self._refreshed(sku, done))

    def _refreshed(self, sku: str, task: asyncio.Future[tuple[Item | None, bool]]) -> None:
        self._refreshing.pop(sku, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("early refresh of %s failed: %s", sku, task.exception())

    # --- writes -----------------------------------------------------------------------------

    async def committed(self, changes: Sequence[Change]) -> None:
        if not self._up:
            self._tailer.add(_entries(changes))
            return
        try:
            await asyncio.gather(*(self._push(change.item) for change in changes))
        except Exception as error:
            # The change is committed whatever Redis says: the feed will push it, and until
            # then this process reads from the database.
            if not isinstance(error, CACHE_ERRORS):
                log.exception("push after commit failed")
            self._tailer.add(_entries(changes))
            self._trip(error)

    async def _push(self, item: Item) -> None:
        await self._client.evalsha(
            scripts.PUSH,
            (self.keys.item(item.sku),),
            (item.version, item.on_hand, self._ttl_ms, item.held),
        )


def _hit(sku: str, reply: list[Any]) -> Item:
    """The value of a READ that hit: v, q, pttl, i, h."""
    return Item(sku, int(reply[2]), int(reply[1]), int(reply[5]))


def _entries(changes: Sequence[Change]) -> list[FeedEntry]:
    # A receipt has no audit time: NaN, so no lag is observed from it (the feed's own entry
    # for the same version, which has one, replaces it in the pending set).
    return [FeedEntry(c.sku, c.version, c.on_hand, math.nan, c.held) for c in changes]
