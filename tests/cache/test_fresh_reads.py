"""Single flight that never hands a reader a read begun before it arrived."""

from __future__ import annotations

import asyncio

import pytest

from stockkeeper.cache.fresh_reads import FreshReads


class Source:
    """Reads numbered in the order they began; each waits until released."""

    def __init__(self) -> None:
        self.began = 0
        self.release = asyncio.Event()

    async def read(self, sku: str) -> int:
        self.began += 1
        number = self.began
        await self.release.wait()
        return number


async def test_a_burst_shares_one_read() -> None:
    source = Source()
    reads = FreshReads(source.read)
    readers = [asyncio.create_task(reads.read("A")) for _ in range(50)]
    await asyncio.sleep(0)
    source.release.set()
    assert await asyncio.gather(*readers) == [1] * 50


async def test_a_reader_arriving_during_a_read_shares_the_next_one_only() -> None:
    source = Source()
    reads = FreshReads(source.read)
    first = asyncio.create_task(reads.read("A"))
    await asyncio.sleep(0.01)  # the first read has begun
    late = [asyncio.create_task(reads.read("A")) for _ in range(10)]
    await asyncio.sleep(0.01)
    assert source.began == 1  # the late ones wait for it to end, then share one
    source.release.set()
    assert await first == 1
    assert await asyncio.gather(*late) == [2] * 10
    assert source.began == 2


async def test_skus_do_not_share() -> None:
    source = Source()
    reads = FreshReads(source.read)
    a, b = asyncio.create_task(reads.read("A")), asyncio.create_task(reads.read("B"))
    await asyncio.sleep(0.01)
    source.release.set()
    assert sorted(await asyncio.gather(a, b)) == [1, 2]


async def test_an_error_reaches_every_reader_of_its_round_and_the_next_round_runs() -> None:
    calls = 0

    async def failing_once(sku: str) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise ConnectionError("database gone")
        return calls

    reads = FreshReads(failing_once)
    first = [asyncio.create_task(reads.read("A")) for _ in range(3)]
    await asyncio.sleep(0.005)
    late = asyncio.create_task(reads.read("A"))
    for reader in first:
        with pytest.raises(ConnectionError):
            await reader
    assert await late == 2


async def test_a_cancelled_reader_leaves_the_round_to_the_others() -> None:
    source = Source()
    reads = FreshReads(source.read)
    gone, stays = asyncio.create_task(reads.read("A")), asyncio.create_task(reads.read("A"))
    await asyncio.sleep(0.01)
    gone.cancel()
    source.release.set()
    assert await stays == 1
    assert gone.cancelled()


async def test_close_cancels_what_is_in_flight() -> None:
    source = Source()
    reads = FreshReads(source.read)
    reader = asyncio.create_task(reads.read("A"))
    await asyncio.sleep(0.01)
    await reads.close()
    with pytest.raises(asyncio.CancelledError):
        await reader
