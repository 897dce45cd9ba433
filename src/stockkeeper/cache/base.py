"""What every cache in front of the store offers the service, and the cache that is none."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from stockkeeper import failpoints, metrics
from stockkeeper.domain import Change, Item, ItemRead
from stockkeeper.store import Store


async def read_database(store: Store, sku: str) -> Item | None:
    """Every item read the database serves passes here, so /metrics can count them."""
    metrics.ITEM_DB_READS.inc()
    return await store.get_item(sku)


class ReadCache(Protocol):
    """The service's one read path. Each read answers a state at least as new as every state
    any read (on any server) returned before it began (docs/cache.md, G1)."""

    async def start(self) -> None: ...

    async def read(self, sku: str, min_version: int | None = None) -> ItemRead | None:
        """The item (version ≥ `min_version` unless the database itself is behind it), or None
        for an unknown SKU."""
        ...

    async def read_many(self, skus: Sequence[str]) -> list[ItemRead | None]: ...

    async def committed(self, changes: Sequence[Change]) -> None:
        """Offer the states a write just committed (before its caller is answered)."""
        ...

    async def ping(self) -> None:
        """Raise Unavailable unless the cache answers."""
        ...

    async def close(self) -> None: ...


class DirectReads:
    """No cache: every read goes to the database. Used where no cache can prove itself
    current (`memory://` with PostgreSQL), and for the Redis cache's database reads."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def start(self) -> None:
        return None

    async def read(self, sku: str, min_version: int | None = None) -> ItemRead | None:
        item = await read_database(self._store, sku)
        await failpoints.hit("service.read.after_fetch")
        metrics.CACHE_MISSES.inc()
        return None if item is None else ItemRead(item, cache_hit=False)

    async def read_many(self, skus: Sequence[str]) -> list[ItemRead | None]:
        return [await self.read(sku) for sku in skus]

    async def committed(self, changes: Sequence[Change]) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
