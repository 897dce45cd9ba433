"""The change feed's consumer: pushes every committed change into Redis, so a writer that died
between its COMMIT and its own push cannot leave a stale value behind (docs/cache.md, G2).

Every server runs one. Pushes are fenced by version, so several tailers and the writers' own
pushes never undo each other. While this process cannot reach Redis, changes wait in a bounded
pending set (the newest state per SKU); `catch_up()` drains it before the process may serve from
Redis again (G5).

It is also what makes a hit safe to serve (G2): a writer that cannot reach Redis acknowledges
its committed change unpushed, so a hit may only be served while this process's last poll,
pushed in full, began less than `fresh_ms` ago (`fresh_until_s`). Then every change committed
before that poll began is in Redis, whoever wrote it and whatever became of them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable

from stockkeeper import failpoints, metrics
from stockkeeper.cache import scripts
from stockkeeper.cache.client import CacheClient
from stockkeeper.cache.resp import CacheReplyError, CacheUnavailable
from stockkeeper.cache.scripts import PushReply
from stockkeeper.domain import FeedEntry
from stockkeeper.outage_log import OutageLog
from stockkeeper.store.protocol import ChangeFeed
from stockkeeper.tasks import Rounds, pause

log = logging.getLogger("stockkeeper.cache")

PUSH_BATCH_MAX = 1_000


class FeedTailer:
    def __init__(
        self,
        feed: ChangeFeed,
        client: CacheClient,
        keys: scripts.Keys,
        *,
        ttl_ms: int,
        replay_s: float,
        pending_skus_max: int,
        fresh_ms: float,
        is_up: Callable[[], bool],
        trip: Callable[[Exception], None],
    ) -> None:
        self._feed = feed
        self._client = client
        self._keys = keys
        self._ttl_ms = ttl_ms
        self._replay_s = replay_s
        self._pending_skus_max = pending_skus_max
        self._fresh_s = fresh_ms / 1000
        self._is_up = is_up
        self._trip = trip
        self._pending: dict[str, FeedEntry] = {}
        # More SKUs changed while Redis was away than we keep: recovery deletes every key.
        self._overflowed = False
        self._lock = asyncio.Lock()
        self.positioned = False
        # Hits may be served until then: monotonic, from the start of the last poll pushed.
        self.fresh_until_s = -math.inf
        self._pushed = Rounds()
        self._wanted = asyncio.Event()  # a reader waits for a poll: skip the pause

    def add(self, entries: Iterable[FeedEntry]) -> None:
        """Remember states to push (the newest per SKU)."""
        for entry in entries:
            known = self._pending.get(entry.sku)
            if known is not None and known.version > entry.version:
                continue
            if known is None and len(self._pending) >= self._pending_skus_max:
                self._overflowed = True
                self._pending.clear()
            if not self._overflowed:
                self._pending[entry.sku] = entry

    async def position(self) -> None:
        async with self._lock:
            await self._ensure_positioned()

    async def _ensure_positioned(self) -> None:
        """Start at the present, then queue the last `replay_s` of changes: a writer that died
        before its push while no tailer ran may have left a value that only these fix. Runs
        once, under the lock, before any other poll (a second positioning would drop a poll)."""
        if not self.positioned:
            await self._feed.poll()
            # Already in memory, one entry per SKU: no cap (the cap bounds what an outage adds).
            for entry in await self._feed.recent(self._replay_s):
                self._pending[entry.sku] = entry
            self.positioned = True

    async def pushed(self, timeout_s: float) -> None:
        """Return when the next poll is pushed in full, or after `timeout_s`. That poll
        begins now, not at the end of the tailer's pause: a reader is waiting for it."""
        self._wanted.set()
        await self._pushed.wait(timeout_s)

    def _fresh(self, polled_s: float) -> None:
        """Redis holds every change committed before `polled_s`, when the poll was sent."""
        self.fresh_until_s = max(self.fresh_until_s, polled_s + self._fresh_s)
        self._pushed.ended()

    async def step(self) -> None:
        """One poll of the feed; push what it brought if Redis is reachable."""
        async with self._lock:
            await self._ensure_positioned()
            polled_s = time.monotonic()
            self.add(await self._feed.poll())
            if not self._is_up():
                return
            try:
                if self._overflowed:
                    # Too many SKUs to keep: only recovery's reset of every key is safe.
                    raise CacheUnavailable("more changed SKUs than the pending set keeps")
                await self._flush()
            except (CacheUnavailable, CacheReplyError) as error:
                self._trip(error)
            else:
                self._fresh(polled_s)

    async def catch_up(self) -> None:
        """Poll once (after Redis came back), then push everything pending; raises
        CacheUnavailable if Redis fails meanwhile. On return nothing committed before the
        poll is missing from Redis."""
        async with self._lock:
            await self._ensure_positioned()
            polled_s = time.monotonic()
            self.add(await self._feed.poll())
            if self._overflowed:
                # Keep what is committed from now on: a change this process makes while the
                # delete runs may meet a fill of an older state that another server read after
                # the delete passed its key.
                self._overflowed = False
                self._pending.clear()
                await self._client.delete_matching(self._keys.pattern)
                await failpoints.hit("cache.reset.after_delete")
                if self._overflowed:
                    raise CacheUnavailable("the pending set overflowed again during the reset")
            await self._flush()
            self._fresh(polled_s)

    async def _flush(self) -> None:
        # Loops until empty with no await between the last check and returning, so a writer
        # that queued a change during a push is pushed too.
        while self._pending:
            batch = list(self._pending.values())[:PUSH_BATCH_MAX]
            replies = await asyncio.gather(
                *(
                    self._client.evalsha(
                        scripts.PUSH,
                        (self._keys.item(e.sku),),
                        (e.version, e.on_hand, self._ttl_ms, e.held),
                    )
                    for e in batch
                )
            )
            for entry, reply in zip(batch, replies, strict=True):
                if self._pending.get(entry.sku) is entry:
                    del self._pending[entry.sku]
                _observe_lag(entry, reply)

    async def run(self, poll_ms: float) -> None:
        """Forever: poll every `poll_ms` (positioning first, retrying while the database is
        down). The database being down only pauses it; the position survives."""
        outage = OutageLog("change feed", log)
        while True:
            try:
                await self.step()
            except Exception as error:
                outage.failed(error)
                await asyncio.sleep(1)
            else:
                outage.recovered()
            await pause(poll_ms / 1000, self._wanted)


def _observe_lag(entry: FeedEntry, reply: list[int | bytes]) -> None:
    """Lag of a change = when Redis first held a value at its version minus its audit time."""
    if math.isnan(entry.at_s):  # queued from a receipt, which carries no audit time
        return
    kind = reply[0]
    if kind == PushReply.INSTALLED:
        installed_us = int(reply[1])
    elif kind == PushReply.CURRENT and int(reply[1]) == entry.version:
        installed_us = int(reply[2])
    else:
        return
    metrics.VISIBILITY_LAG.observe(max(installed_us / 1e6 - entry.at_s, 0.0))
