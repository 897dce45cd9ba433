"""Background tasks: their pauses, waiting for their next round, and stopping them at
shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel each task and wait until all have ended. How each ended (cancelled, or an error
    on its way out) is not the caller's to see; the caller's own cancellation is, and
    `suppress(CancelledError)` around `await task` would swallow it, leaving a shutdown that
    was told to stop running on."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    if not running:
        return
    await asyncio.wait(running)
    for task in running:
        if not task.cancelled():
            task.exception()  # retrieved: an error on the way out is not logged as lost


class Rounds:
    """Lets callers wait for the end of a background loop's next round (a poll): one future
    per round, swapped for a fresh one as the round ends."""

    def __init__(self) -> None:
        self._next: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def ended(self) -> None:
        ended, self._next = self._next, asyncio.get_running_loop().create_future()
        ended.set_result(None)

    async def wait(self, timeout_s: float) -> None:
        """Return when the next round ends, or after `timeout_s`."""
        await _at_most(timeout_s, asyncio.shield(self._next))


async def pause(timeout_s: float, poked: asyncio.Event) -> None:
    """A background loop's pause between rounds: `timeout_s`, or less if `poked` is set
    (someone wants the next round now); it is cleared for the next pause."""
    await _at_most(timeout_s, poked.wait())
    poked.clear()


async def _at_most(timeout_s: float, awaitable: Awaitable[Any]) -> None:
    # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that
    # arrives as its awaitable completes, and the cancelled task then runs on.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await awaitable
