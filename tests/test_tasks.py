"""Stopping background tasks: wait for their end, keep their errors quiet, and never swallow
the caller's own cancellation (what `suppress(CancelledError)` around `await task` did)."""

from __future__ import annotations

import asyncio

import pytest

from stockkeeper.tasks import cancel_and_wait


async def slow_to_stop(stopped: list[str]) -> None:
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        await asyncio.sleep(0.2)  # cleanup on the way out
        stopped.append("stopped")
        raise


async def test_it_waits_until_every_task_has_ended() -> None:
    stopped: list[str] = []
    tasks = [asyncio.create_task(slow_to_stop(stopped)) for _ in range(3)]
    await asyncio.sleep(0)
    await cancel_and_wait(*tasks, None)
    assert stopped == ["stopped"] * 3 and all(task.done() for task in tasks)


async def test_an_error_on_the_way_out_is_not_raised_to_the_caller() -> None:
    async def fails_when_stopped() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails_when_stopped())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert isinstance(task.exception(), RuntimeError)


async def test_the_callers_own_cancellation_is_passed_on() -> None:
    stopped: list[str] = []
    task = asyncio.create_task(slow_to_stop(stopped))
    await asyncio.sleep(0)
    closing = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0.05)
    closing.cancel()  # a shutdown told to stop waiting
    with pytest.raises(asyncio.CancelledError):
        await closing
