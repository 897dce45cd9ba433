"""Holding a coroutine at a failpoint until the test lets it go: deterministic interleavings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from stockkeeper import failpoints

HOLD_S_MAX = 10.0


class Hold:
    """Holds the first coroutine that hits the point; later hits pass straight through."""

    def __init__(self) -> None:
        self._reached = asyncio.Event()
        self._released = asyncio.Event()
        self._taken = False

    async def __call__(self) -> None:
        if self._taken:
            return
        self._taken = True
        self._reached.set()
        await asyncio.wait_for(self._released.wait(), HOLD_S_MAX)

    async def reached(self) -> None:
        await asyncio.wait_for(self._reached.wait(), HOLD_S_MAX)

    def release(self) -> None:
        self._released.set()


@asynccontextmanager
async def held(point: str) -> AsyncIterator[Hold]:
    hold = Hold()
    with failpoints.armed(point, hold):
        try:
            yield hold
        finally:
            hold.release()
