"""Single flight for database reads that must begin after their reader arrived.

A read-through (no lease held during a switch of the read mode) and a database-mode read may
only answer a reader with a state read after that reader began (docs/cache.md, G1): a read
already in flight may predate a change the reader has seen elsewhere. So readers arriving for
a SKU share the next read that has not begun yet, and a burst of N readers costs one database
read per SKU and process (two when the burst straddles one in flight), not N (G4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from stockkeeper.tasks import cancel_and_wait

T = TypeVar("T")


class FreshReads(Generic[T]):
    def __init__(self, read: Callable[[str], Awaitable[T]]) -> None:
        self._read = read
        self._next: dict[str, asyncio.Future[T]] = {}  # not begun: open to joiners
        self._running: dict[str, asyncio.Task[None]] = {}  # begun: closed to joiners
        self._closed = False

    async def read(self, sku: str) -> T:
        """A state read after this call began, shared with every reader that joined the
        same round before it began."""
        round_ = self._next.get(sku)
        if round_ is None:
            round_ = self._next[sku] = asyncio.get_running_loop().create_future()
            round_.add_done_callback(_retrieve)
            if sku not in self._running:
                self._begin(sku)
        return await asyncio.shield(round_)

    def _begin(self, sku: str) -> None:
        task = asyncio.ensure_future(self._run(sku))
        self._running[sku] = task
        task.add_done_callback(lambda _: self._ended(sku))

    async def _run(self, sku: str) -> None:
        # The round closes when its read begins, not when it was scheduled: everyone who
        # arrived meanwhile (one burst in one loop turn) shares it.
        round_ = self._next.pop(sku)
        try:
            result = await self._read(sku)
        except asyncio.CancelledError:
            round_.cancel()
            raise
        except Exception as error:
            if not round_.done():
                round_.set_exception(error)
        else:
            if not round_.done():
                round_.set_result(result)

    def _ended(self, sku: str) -> None:
        del self._running[sku]
        if sku in self._next and not self._closed:
            self._begin(sku)

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(*self._running.values())
        for round_ in self._next.values():
            round_.cancel()
        self._next.clear()


def _retrieve(round_: asyncio.Future[Any]) -> None:
    """Every reader may have gone (cancelled): the error is theirs, not the loop's to log."""
    if not round_.cancelled():
        round_.exception()
