"""One read source for the whole cluster (docs/cache.md, "One read source").

A Redis hit and a database read that was not pushed to Redis may disagree: the database can be
ahead. So no two workers may serve those at the same time. The cluster's mode lives in one
database row, `(epoch, mode)`; each switch begins a new epoch. A worker holds a *lease* on the
epoch it last read: a read of the row sent at `t` (this worker's monotonic clock) lets it serve
that epoch's mode until `t + lease_ms - margin_ms`. A worker that first sees an epoch at `r`
serves its mode only from `r + lease_ms` on (or at once, once the row says `active`). Every lease
on an older epoch came from a read whose snapshot predates the switch, so it ends before
anyone serves the new mode. Renewing is a read: no commit, no write, when healthy.

A read that is pushed to Redis before it is served (a read-through) is safe in every mode, so a
worker that reaches Redis serves those while it holds no lease. One that reaches neither a lease
nor Redis waits, then refuses.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from stockkeeper import failpoints, metrics
from stockkeeper.domain import StockkeeperError
from stockkeeper.outage_log import OutageLog
from stockkeeper.store import Store
from stockkeeper.store.protocol import ReadModeView
from stockkeeper.tasks import Rounds, cancel_and_wait, pause

log = logging.getLogger("stockkeeper.cache")


class Source(enum.Enum):
    REDIS = "redis"  # hits, and fills fenced by the cache protocol
    DATABASE = "database"  # database reads served without a push


@dataclass(frozen=True, slots=True)
class ReadModeOptions:
    lease_ms: float = 500.0
    poll_ms: float = 100.0
    # What a lease gives up at its end: clock-rate drift between hosts over one lease (ppm,
    # so microseconds), with room to spare.
    margin_ms: float = 50.0
    # A vote keeps the cluster on database reads this long after its worker's last trip:
    # Redis that flaps every few hundred ms costs one switch each way per vote, not a storm.
    vote_ms: float = 2_000.0

    def __post_init__(self) -> None:
        if not 0 < self.margin_ms < self.lease_ms or not 0 < self.poll_ms < self.lease_ms:
            raise ValueError(
                f"read mode lease {self.lease_ms:g} ms must exceed its poll interval "
                f"({self.poll_ms:g} ms) and its margin ({self.margin_ms:g} ms)"
            )


class ReadSource(Protocol):
    """What the Redis cache asks before serving a read: which source is safe right now.

    `redis_from_s <= now < redis_until_s` is the hit path's test: two float comparisons. It
    may say no where `source` says REDIS (a previous epoch's lease), never the other way."""

    redis_from_s: float
    redis_until_s: float

    def source(self, now_s: float) -> Source | None: ...

    async def changed(self, timeout_s: float) -> None:
        """Return when the answer of `source` may have changed, or after `timeout_s`."""
        ...

    def poke(self) -> None:
        """This worker just lost Redis: act now rather than at the next poll."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class _Epoch:
    number: int
    mode: Source
    active_from_s: float  # monotonic
    lease_until_s: float  # monotonic
    caught_up: bool = False  # redis mode: Redis holds every state a database read returned


class ReadModeLease:
    """This worker's view of the cluster's read mode, renewed by one poll every `poll_ms`."""

    def __init__(
        self,
        store: Store,
        options: ReadModeOptions,
        *,
        reaches_redis: Callable[[], bool],
        catch_up: Callable[[], Awaitable[bool]],
    ) -> None:
        self._store = store
        self._options = options
        self._reaches_redis = reaches_redis
        self._catch_up = catch_up
        self._worker = secrets.token_hex(8)
        self._lease_s = options.lease_ms / 1000
        self._kept_s = (options.lease_ms - options.margin_ms) / 1000
        self._current: _Epoch | None = None
        self._previous: _Epoch | None = None  # its lease still runs out after a switch
        self._voted_at_s = -math.inf
        self._poked = asyncio.Event()
        self._polls = Rounds()
        self._task: asyncio.Task[None] | None = None
        self._outage = OutageLog("read mode lease", log)
        self.redis_from_s = math.inf
        self.redis_until_s = -math.inf

    @property
    def epoch(self) -> int:
        return 0 if self._current is None else self._current.number

    def source(self, now_s: float) -> Source | None:
        for epoch in (self._current, self._previous):
            if (
                epoch is not None
                and epoch.active_from_s <= now_s < epoch.lease_until_s
                and (epoch.mode is Source.DATABASE or epoch.caught_up)
            ):
                return epoch.mode
        return None

    async def changed(self, timeout_s: float) -> None:
        await self._polls.wait(timeout_s)

    def poke(self) -> None:
        self._poked.set()

    async def start(self) -> None:
        """One round before serving, so a healthy worker serves hits from its first read."""
        await self.step()
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        await cancel_and_wait(self._task)

    def observe(self, view: ReadModeView, sent_s: float, received_s: float) -> None:
        """Take one read of the row, sent at `sent_s` and answered at `received_s`."""
        current = self._current
        if current is None or view.epoch > current.number:
            # Active: every older lease lapsed before that was recorded, so before this read.
            start_s = sent_s if view.active else received_s + self._lease_s
            self._previous = current
            self._current = _Epoch(view.epoch, Source(view.mode), start_s, sent_s + self._kept_s)
            if current is not None:
                log.warning(
                    "read mode: epoch %d, %s reads (was epoch %d, %s)",
                    view.epoch,
                    view.mode,
                    current.number,
                    current.mode.value,
                )
        elif view.epoch == current.number:
            current.lease_until_s = max(current.lease_until_s, sent_s + self._kept_s)
            if view.active:
                current.active_from_s = min(current.active_from_s, sent_s)
        # An older epoch than one seen (a late answer, a database restored from a backup)
        # renews nothing: the leases run out and reads wait or read through.
        self._refresh_window()

    def _refresh_window(self) -> None:
        """The current epoch's Redis window, for the hit path."""
        current = self._current
        if current is not None and current.mode is Source.REDIS and current.caught_up:
            self.redis_from_s, self.redis_until_s = current.active_from_s, current.lease_until_s
        else:
            self.redis_from_s, self.redis_until_s = math.inf, -math.inf

    async def step(self) -> None:
        """One poll, and what it calls for: vote, switch, record activation, catch up."""
        sent_s = time.monotonic()
        try:
            view = await self._store.read_mode()
            received_s = time.monotonic()
            self.observe(view, sent_s, received_s)
            current = self._current
            assert current is not None and current.number >= view.epoch
            if current.number == view.epoch:
                await self._act(view, current, received_s)
        except StockkeeperError as error:
            self._outage.failed(error)  # not renewed: the lease runs out, reads go elsewhere
        else:
            self._outage.recovered()
        finally:
            self._polls.ended()

    async def _act(self, view: ReadModeView, current: _Epoch, now_s: float) -> None:
        reaches_redis = self._reaches_redis()
        if not reaches_redis:
            if now_s - self._voted_at_s >= self._options.vote_ms / 3000:
                await self._store.vote_database_reads(self._worker, int(self._options.vote_ms))
                self._voted_at_s = now_s
                metrics.READ_MODE_VOTES.inc()
            if view.mode == Source.REDIS.value:
                await self._switch(view.epoch, Source.DATABASE)
        elif view.mode == Source.DATABASE.value and not view.voted:
            await self._switch(view.epoch, Source.REDIS)
        if now_s < current.active_from_s:
            return
        if not view.active:
            await failpoints.hit("cache.read_mode.before_activate")
            await self._store.activate_read_mode(view.epoch)
        if current.mode is Source.REDIS and not current.caught_up and reaches_redis:
            # A poll of the feed that begins now sees every commit any database read of an
            # earlier epoch returned: once it is pushed, Redis is at least that new.
            await failpoints.hit("cache.read_mode.before_catch_up")
            current.caught_up = await self._catch_up()
            self._refresh_window()

    async def _switch(self, epoch: int, mode: Source) -> None:
        await failpoints.hit("cache.read_mode.before_switch")
        if await self._store.switch_read_mode(epoch, mode.value):
            metrics.READ_MODE_SWITCHES.labels(mode=mode.value).inc()
            self._poked.set()  # see the new epoch at once

    async def _run(self) -> None:
        while True:
            await pause(self._options.poll_ms / 1000, self._poked)
            try:
                await self.step()
            except Exception as error:
                self._outage.failed(error)
