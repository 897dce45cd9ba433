"""The embedded cache (`memory://` on SQLite): a near cache that proves itself on every read.

Several `serve --workers` processes share one SQLite file, each with its own dict. A read first
asks `PRAGMA data_version` on a connection of its own (a few µs, synchronous): unchanged means no
connection anywhere committed since this dict was last made current, so every entry is. Changed
means: apply the audit rows after the last one seen (rowid order is commit order) to the cached
entries first. Nothing here awaits between proving and serving, so no write can slip between.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from stockkeeper import failpoints, metrics
from stockkeeper.cache.base import read_database
from stockkeeper.domain import Change, Item, ItemRead
from stockkeeper.store import Store
from stockkeeper.store.protocol import LocalView


class ProvenMemoryCache:
    def __init__(
        self,
        store: Store,
        view: LocalView,
        *,
        entries_max: int = 100_000,
        catch_up_rows_max: int = 10_000,
    ) -> None:
        self._store = store
        self._view = view
        self._entries: dict[str, Item] = {}
        self._entries_max = entries_max
        self._catch_up_rows_max = catch_up_rows_max
        self._data_version = view.data_version()
        self._last_id = view.last_id()
        # Bumped by every catch-up: a fill fetched before one may be older than what it applied.
        self._generation = 0

    async def start(self) -> None:
        return None

    def _make_current(self) -> None:
        data_version = self._view.data_version()
        if data_version == self._data_version:
            return
        rows = self._view.changes_after(self._last_id, self._catch_up_rows_max + 1)
        if len(rows) > self._catch_up_rows_max:
            self._entries.clear()
            self._last_id = self._view.last_id()
        else:
            for audit_id, change in rows:
                cached = self._entries.get(change.sku)
                if cached is not None and cached.version < change.version:
                    self._entries[change.sku] = change.item
                self._last_id = audit_id
        self._data_version = data_version
        self._generation += 1

    async def read(self, sku: str, min_version: int | None = None) -> ItemRead | None:
        try:
            self._make_current()
            cached = self._entries.get(sku)
            if cached is not None and (min_version is None or cached.version >= min_version):
                metrics.CACHE_HITS.inc()
                return ItemRead(cached, cache_hit=True)
            generation = self._generation
            metrics.ITEM_DB_READS.inc()
            item = self._view.get_item(sku)
        except sqlite3.Error:
            # A busy or broken view: the store's own connection answers, uncached.
            item = await read_database(self._store, sku)
            generation = -1
        await failpoints.hit("service.read.after_fetch")
        metrics.CACHE_MISSES.inc()
        if item is None:
            return None
        if generation == self._generation:
            if len(self._entries) >= self._entries_max:
                del self._entries[next(iter(self._entries))]
            self._entries[sku] = item
        return ItemRead(item, cache_hit=False)

    async def read_many(self, skus: Sequence[str]) -> list[ItemRead | None]:
        return [await self.read(sku) for sku in skus]

    async def committed(self, changes: Sequence[Change]) -> None:
        """Nothing to do: the next read sees data_version move and catches up."""

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
