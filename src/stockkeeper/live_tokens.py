"""Which tokens are live, as this process knows them: a snapshot the store keeps current.

Authentication is a hash and a dict lookup, never a query. The snapshot follows the store's
token change counter, which every token create and revoke moves in its own transaction: a
background check every `check_every_ms` (one cheap query) reloads the token table only when
the counter moved, so every server refuses a revoked token within about that long.

A token the snapshot lacks waits for one refresh that begins after it arrived, so a token made
a moment ago by another process works on its first request. Refreshes are single-flight and
start at least `refresh_ms_min` apart, so a flood of random tokens costs at most
1000 / refresh_ms_min counter queries a second, however many arrive. While the database is
down, the last snapshot keeps serving the callers it knows.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from stockkeeper import auth, metrics
from stockkeeper.domain import Principal, Unavailable
from stockkeeper.outage_log import OutageLog
from stockkeeper.store import Store

log = logging.getLogger("stockkeeper.tokens")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RefreshLimits:
    """How fresh the snapshot is kept, and how long anything waits for it."""

    check_every_ms: int = 500  # a revoked token is refused within about this long
    refresh_ms_min: int = 50  # between the starts of two refreshes, however many are asked for
    refresh_ms_max: int = 2_000  # one refresh (counter query and maybe a load), then it fails
    unknown_wait_ms_max: int = 3_000  # a request with an unknown token waits this long at most


class LiveTokens:
    """This process's snapshot of live tokens, refreshed in the background once started."""

    def __init__(self, store: Store, limits: RefreshLimits | None = None) -> None:
        self._store = store
        self._limits = limits or RefreshLimits()
        self._snapshot = auth.TokenSnapshot()
        self._one_at_a_time = asyncio.Lock()
        self._queued: asyncio.Task[bool] | None = None  # the next refresh, not yet begun
        self._last_started_s = -math.inf
        self._tasks: set[asyncio.Task[Any]] = set()
        self._checker: asyncio.Task[None] | None = None
        self._outage = OutageLog("token snapshot refresh (serving the last snapshot)", log)

    def start(self) -> None:
        """Check the counter every `check_every_ms` from now until close()."""
        if self._checker is None:
            self._checker = self._spawn(self._check_forever())

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def find(self, token: str) -> Principal | None:
        """The token's principal, None if it is not live; Unavailable if that cannot be told."""
        token_hash = auth.token_hash(token, await self._store.token_key())
        principal = self._snapshot.find(token_hash)
        if principal is None:
            if not await self.refresh():
                raise Unavailable("cannot check the token: the database did not answer in time")
            principal = self._snapshot.find(token_hash)
        return principal

    def add(self, token_hash: bytes, principal: Principal) -> None:
        """A token this process just stored: usable here at once, even if the database then
        goes away before the next refresh."""
        self._snapshot = self._snapshot.with_token(token_hash, principal)

    async def refresh(self) -> bool:
        """Wait (bounded) for a refresh that begins after this call; True if it succeeded."""
        if self._queued is None:
            self._queued = self._spawn(self._refresh_in_turn())
        try:
            async with asyncio.timeout(self._limits.unknown_wait_ms_max / 1000):
                # Shielded: one caller giving up must not cancel the refresh others wait for.
                return await asyncio.shield(self._queued)
        except TimeoutError:
            return False

    async def _check_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._limits.check_every_ms / 1000)

    async def _refresh_in_turn(self) -> bool:
        async with self._one_at_a_time:
            wait_s = self._last_started_s + self._limits.refresh_ms_min / 1000 - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            # From here on a newcomer's token may postdate this refresh's query: it queues the
            # next refresh instead of joining this one.
            self._queued = None
            self._last_started_s = time.monotonic()
            try:
                async with asyncio.timeout(self._limits.refresh_ms_max / 1000):
                    await self._load_if_changed()
            except Exception as error:
                metrics.TOKEN_SNAPSHOT_FAILURES.inc()
                self._outage.failed(error)
                return False
            self._outage.recovered()
            return True

    async def _load_if_changed(self) -> None:
        metrics.TOKEN_SNAPSHOT_CHECKS.inc()
        if await self._store.token_generation() == self._snapshot.generation:
            return
        metrics.TOKEN_SNAPSHOT_LOADS.inc()
        generation, principals = await self._store.live_tokens()
        self._snapshot = auth.TokenSnapshot(generation, principals)

    def _spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task close() will end; held here so it is never collected while running."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
