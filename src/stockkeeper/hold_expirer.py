"""The background expirer every server runs: it records overdue holds as expired, so reads show
their stock as available again within a second of `expires_at`, even where no request needed
that stock. Requests never wait for it: each decides expiry by the database's clock itself.

Every server polls; the store skips holds another transaction has locked, so two servers never
record one expiry, and a killed expirer's transaction rolls back whole. The first server back
after an outage of them all records every overdue hold, a bounded batch at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from stockkeeper.domain import Expiry
from stockkeeper.outage_log import OutageLog
from stockkeeper.store import Store
from stockkeeper.tasks import cancel_and_wait

log = logging.getLogger("stockkeeper.holds")


@dataclass(frozen=True, slots=True)
class ExpirerOptions:
    poll_ms: float = 200  # between rounds; with a round's own time, well within the 1 s promise
    batch_max: int = 100  # holds per transaction: bounds its locks and its time
    batches_per_round_max: int = 50  # then the next round, after a pause: never a hot loop

    def __post_init__(self) -> None:
        if not 1 <= self.poll_ms <= 800:
            # Past 800 ms a round could not record an expiry within the promised second.
            raise ValueError(f"hold expiry poll_ms must be 1-800, not {self.poll_ms:g}")


class HoldExpirer:
    def __init__(
        self,
        store: Store,
        recorded: Callable[[list[Expiry]], Awaitable[None]],
        options: ExpirerOptions | None = None,
    ) -> None:
        self._store = store
        self._recorded = recorded
        self._options = options or ExpirerOptions()
        self._task: asyncio.Task[None] | None = None
        self._outage = OutageLog("hold expirer (requests still expire what they need)", log)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def round(self) -> int:
        """Record overdue holds until a batch comes back short (or the round's limit): how
        many."""
        expired_n = 0
        for _ in range(self._options.batches_per_round_max):
            expired = await self._store.expire_holds(self._options.batch_max)
            if expired:
                await self._recorded(expired)
            expired_n += len(expired)
            if len(expired) < self._options.batch_max:
                break
        return expired_n

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception as error:
                self._outage.failed(error)
            else:
                self._outage.recovered()
            await asyncio.sleep(self._options.poll_ms / 1000)
