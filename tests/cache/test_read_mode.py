"""The cluster read mode's leases (docs/cache.md, "One read source"): at no moment may two
workers serve from sources that can disagree.

The first test drives the real `ReadModeLease.observe`/`source` of several workers through a
simulated database on one clock: polls that are slow to take their snapshot and slow to answer,
polls that are lost, switches at random moments, activations written as workers see them. It
samples every worker every millisecond, and runs once more with the wait before a new epoch
removed, which must break it.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from stockkeeper.cache.read_mode import ReadModeLease, ReadModeOptions, Source
from stockkeeper.store import Store, open_store
from stockkeeper.store.protocol import ReadModeView
from tests.cache.naive import expect

OPTIONS = ReadModeOptions(lease_ms=500.0, poll_ms=100.0, margin_ms=50.0)
SIMULATED_S = 8.0
SAMPLE_S = 0.001


@dataclass
class Database:
    """The read mode row's history: (visible from, epoch, mode, active)."""

    rows: list[tuple[float, int, str, bool]] = field(
        default_factory=lambda: [(0.0, 1, "redis", True)]
    )

    def at(self, t: float) -> ReadModeView:
        _, epoch, mode, active = max(row for row in self.rows if row[0] <= t)
        return ReadModeView(epoch, mode, active, voted=False)

    def switch(self, t: float) -> None:
        _, epoch, mode, _ = self.rows[-1]
        self.rows.append((t, epoch + 1, "database" if mode == "redis" else "redis", False))

    def activate(self, t: float, epoch: int) -> None:
        last = self.rows[-1]
        if last[1] == epoch and not last[3]:
            self.rows.append((t, epoch, last[2], True))


def lease() -> ReadModeLease:
    async def nothing() -> bool:
        return True

    store = cast(Store, object())  # observe() and source() never touch it
    return ReadModeLease(store, OPTIONS, reaches_redis=lambda: True, catch_up=nothing)


def simulate(seed: int, leases: list[ReadModeLease]) -> tuple[int, int]:
    """(samples at which two workers served different sources, samples at which any served)."""
    rng = random.Random(seed)
    database = Database()
    events: list[tuple[float, int, str, int, Any]] = []
    order = 0

    def at(t: float, kind: str, worker: int, data: Any = None) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (t, order, kind, worker, data))

    t = rng.uniform(0.2, 1.0)
    while t < SIMULATED_S:
        at(t, "switch", -1)
        t += rng.uniform(0.05, 1.5)
    for worker in range(len(leases)):
        at(rng.uniform(0, 0.1), "send", worker)
    for n in range(int(SIMULATED_S / SAMPLE_S)):
        at(n * SAMPLE_S, "sample", -1)
    conflicts = served = 0
    while events:
        now, _, kind, worker, data = heapq.heappop(events)
        if kind == "switch":
            database.switch(now)
        elif kind == "send":
            if rng.random() > 0.1:  # else the poll is lost: no answer ever comes
                at(now + rng.uniform(0, 0.15), "snapshot", worker, now)
            if now < SIMULATED_S:
                at(now + OPTIONS.poll_ms / 1000 + rng.uniform(0, 0.05), "send", worker)
        elif kind == "snapshot":
            at(now + rng.uniform(0, 0.15), "receive", worker, (data, database.at(now)))
        elif kind == "receive":
            sent, view = data
            one = leases[worker]
            one.observe(view, sent, now)
            current = one._current
            assert current is not None
            current.caught_up = True  # catching up has its own tests
            one._refresh_window()
            if current.number == view.epoch and now >= current.active_from_s:
                database.activate(now + rng.uniform(0, 0.05), view.epoch)
        else:
            sources = {one.source(now) for one in leases} - {None}
            for one in leases:  # the hit path's window never says more than source()
                assert not one.redis_from_s <= now < one.redis_until_s or (
                    one.source(now) is Source.REDIS
                )
            conflicts += len(sources) > 1
            served += bool(sources)
    return conflicts, served


@pytest.mark.parametrize("kind", ["coherent", "no-wait"])
async def test_no_two_workers_ever_serve_different_sources(kind: str) -> None:
    conflicts = served = 0
    for seed in range(40):
        leases = [lease() for _ in range(4)]
        if kind == "no-wait":
            for one in leases:  # serve a new epoch as soon as it is seen
                one._lease_s = 0.0
        found, any_served = simulate(seed, leases)
        conflicts += found
        served += any_served
    assert served > 0.5 * 40 * SIMULATED_S / SAMPLE_S  # mostly serving: the check has teeth
    expect(kind, conflicts == 0)


async def test_a_lease_runs_out_without_renewal_and_a_new_epoch_waits_one_lease() -> None:
    one = lease()
    one.observe(ReadModeView(1, "redis", True, False), sent_s=10.0, received_s=10.01)
    one._current.caught_up = True  # type: ignore[union-attr]
    assert one.source(10.01) is Source.REDIS
    assert one.source(10.449) is Source.REDIS and one.source(10.45) is None  # 500 - 50 ms
    one.observe(ReadModeView(2, "database", False, False), sent_s=10.3, received_s=10.32)
    assert one.source(10.4) is Source.REDIS  # the old lease still runs
    assert one.source(10.5) is None  # neither: the old one ran out, the new is not active
    one.observe(ReadModeView(2, "database", False, False), sent_s=10.7, received_s=10.71)
    assert one.source(10.81) is None and one.source(10.82) is Source.DATABASE  # 10.32 + 0.5
    one.observe(ReadModeView(1, "redis", True, False), sent_s=10.9, received_s=10.91)
    assert one.epoch == 2 and one.source(11.149) is Source.DATABASE  # an older epoch: ignored
    assert one.source(11.15) is None  # and it renewed nothing


async def test_an_epoch_marked_active_is_served_at_once_but_redis_only_once_caught_up() -> None:
    one = lease()
    one.observe(ReadModeView(7, "redis", True, False), sent_s=1.0, received_s=1.01)
    assert one.source(1.02) is None  # Redis has not been caught up yet
    one._current.caught_up = True  # type: ignore[union-attr]
    assert one.source(1.02) is Source.REDIS


def test_a_lease_shorter_than_its_poll_or_margin_is_refused() -> None:
    with pytest.raises(ValueError, match="must exceed"):
        ReadModeOptions(lease_ms=100.0, poll_ms=100.0)
    with pytest.raises(ValueError, match="must exceed"):
        ReadModeOptions(lease_ms=100.0, poll_ms=50.0, margin_ms=100.0)


async def test_a_close_right_as_the_lease_is_poked_ends_its_task(database_url: str) -> None:
    """Python 3.11's `asyncio.wait_for` drops a cancellation that arrives as its awaitable
    completes: a close() right after a poke (a trip, as a server shuts down) then waited for
    the lease task forever. A CI run hung there; the lease waits with `asyncio.timeout`."""

    async def caught_up() -> bool:
        return True

    store = await open_store(database_url)
    await store.migrate()
    try:
        mode = ReadModeLease(store, OPTIONS, reaches_redis=lambda: True, catch_up=caught_up)
        await mode.start()
        await asyncio.sleep(0.02)  # waiting for its next poll
        mode.poke()
        closing = asyncio.create_task(mode.close())
        done, _ = await asyncio.wait({closing}, timeout=2)
        assert closing in done, "the lease task ignored its cancellation"
    finally:
        await store.close()
