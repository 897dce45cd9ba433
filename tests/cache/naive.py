"""The buggy design the coherent cache replaces, kept in the tests only: cache-aside with a TTL,
an unversioned SET on fill and delete-on-write. Each guarantee test runs its scenario on this too
and asserts that it breaks here."""

from __future__ import annotations

from collections.abc import Sequence

from stockkeeper import failpoints
from stockkeeper.cache.resp import RespClient
from stockkeeper.cache.scripts import Keys
from stockkeeper.domain import Change, Item, ItemRead
from stockkeeper.store import Store


class NaiveCacheAside:
    """`on_write="delete"` drops the entry on every write; `"set"` writes the new value
    through, unversioned."""

    def __init__(
        self,
        client: RespClient,
        store: Store,
        keys: Keys,
        ttl_s: int = 300,
        on_write: str = "delete",
    ) -> None:
        self.keys = keys
        self._client = client
        self._store = store
        self._ttl_s = ttl_s
        self._on_write = on_write

    async def start(self) -> None:
        return None

    async def read(self, sku: str, min_version: int | None = None) -> ItemRead | None:
        cached = await self._client.call("GET", self.keys.item(sku))
        if cached is not None:
            version, on_hand = map(int, cached.split(b":"))
            return ItemRead(Item(sku, on_hand, version), cache_hit=True)
        item = await self._store.get_item(sku)
        await failpoints.hit("service.read.after_fetch")
        if item is None:
            return None
        value = f"{item.version}:{item.on_hand}"
        await self._client.call("SET", self.keys.item(sku), value, "EX", self._ttl_s)
        return ItemRead(item, cache_hit=False)

    async def read_many(self, skus: Sequence[str]) -> list[ItemRead | None]:
        return [await self.read(sku) for sku in skus]

    async def committed(self, changes: Sequence[Change]) -> None:
        for change in changes:
            if self._on_write == "delete":
                await self._client.call("DEL", self.keys.item(change.sku))
            else:
                value = f"{change.version}:{change.on_hand}"
                await self._client.call("SET", self.keys.item(change.sku), value, "EX", self._ttl_s)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        await self._client.close()


def expect(kind: str, holds: bool) -> None:
    """The coherent cache must hold; every naive design must break the same scenario."""
    assert holds == (kind == "coherent"), f"{kind}: guarantee {'held' if holds else 'broken'}"
