"""The change feed's tailer as the hit path's clock (docs/cache.md, G2): a hit needs a poll,
pushed in full, that began at most `fresh_ms` before the read, and a reader that finds it older
makes the tailer poll at once rather than wait out its pause."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from stockkeeper.cache.redis import RedisCacheOptions
from stockkeeper.cache.resp import RespClient
from stockkeeper.cache.scripts import Keys
from stockkeeper.cache.tailer import FeedTailer
from stockkeeper.domain import FeedEntry
from stockkeeper.tasks import cancel_and_wait
from tests.cache.conftest import REDIS_URL
from tests.eventually import eventually

PAUSE_MS = 60_000.0  # the tailer's own pause: no poll would come without the reader's call
FRESH_MS = 80.0


class CountedFeed:
    """A feed with nothing new, counting when each poll was sent."""

    def __init__(self) -> None:
        self.polls: list[float] = []

    async def poll(self) -> list[FeedEntry]:
        self.polls.append(time.monotonic())
        return []

    async def recent(self, seconds: float) -> list[FeedEntry]:
        return []


def began_just_before(fresh_until_s: float, poll_sent_s: float) -> bool:
    """The window runs from when the tailer sent the poll, a moment before the feed saw it."""
    started_s = fresh_until_s - FRESH_MS / 1000
    return poll_sent_s - 0.01 < started_s <= poll_sent_s


async def test_a_waiting_reader_gets_a_poll_begun_after_it_at_once() -> None:
    feed = CountedFeed()
    client = RespClient.from_url(REDIS_URL, timeout_ms=2000)
    tailer = FeedTailer(
        feed,
        client,
        Keys("test-tailer"),
        ttl_ms=1000,
        replay_s=0,
        pending_skus_max=10,
        fresh_ms=FRESH_MS,
        is_up=lambda: True,
        trip=lambda error: None,
    )
    assert tailer.fresh_until_s == -math.inf  # no hit before the first poll is pushed
    running = asyncio.create_task(tailer.run(PAUSE_MS))
    try:

        async def first_round() -> bool:  # positioned, then its first poll pushed
            return tailer.fresh_until_s > -math.inf

        assert await eventually(first_round, 5)
        first_fresh = tailer.fresh_until_s
        assert began_just_before(first_fresh, feed.polls[1])
        asked_s = time.monotonic()
        await tailer.pushed(timeout_s=5.0)  # without the call's poke: the 60 s pause, then 5 s
        assert len(feed.polls) == 3 and feed.polls[2] >= asked_s
        assert began_just_before(tailer.fresh_until_s, feed.polls[2])
    finally:
        await cancel_and_wait(running)
        await client.close()


@pytest.mark.parametrize(("poll_ms", "fresh_ms"), [(80.0, 80.0), (100.0, 80.0), (0.0, 80.0)])
def test_a_poll_interval_that_leaves_no_fresh_window_is_refused(
    poll_ms: float, fresh_ms: float
) -> None:
    """A tailer that polls as seldom as the window allows would let no hit through."""
    with pytest.raises(ValueError, match="poll interval"):
        RedisCacheOptions(feed_poll_ms=poll_ms, feed_fresh_ms=fresh_ms)
