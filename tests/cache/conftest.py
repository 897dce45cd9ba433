"""Servers in one test process: each an Inventory with its own database connections and its own
cache client, sharing the real PostgreSQL or SQLite and the real Redis."""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest

from stockkeeper.bench.baselines import NaiveCacheAside, ProcessLocalSource
from stockkeeper.cache.base import ReadCache
from stockkeeper.cache.redis import RedisCache, RedisCacheOptions
from stockkeeper.cache.resp import RespClient
from stockkeeper.cache.scripts import Keys
from stockkeeper.domain import Item
from stockkeeper.service import Inventory
from stockkeeper.store import Store, open_store

REDIS_URL = os.environ.get("STOCKKEEPER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# The tailer stays out of a scenario's way (no poll repairs what it forces), and so does the
# check that needs its polls before a hit (G2): each scenario tests another mechanism.
NO_FEED = {"feed_poll_ms": 60_000.0, "feed_fresh_ms": math.inf}


@dataclass
class Server:
    inventory: Inventory
    store: Store
    cache: ReadCache
    db_reads: list[str] = field(default_factory=list)

    def key(self, sku: str) -> str:
        """The Redis key of `sku` (both the coherent and the naive cache name them alike)."""
        keys: Keys = self.cache.keys  # type: ignore[attr-defined]
        return keys.item(sku)

    async def read(self, sku: str, min_version: int | None = None) -> Item:
        return (await self.inventory.read(sku, min_version=min_version)).item


OpenServer = Callable[..., Awaitable[Server]]


@pytest.fixture
def sku() -> str:
    return f"T-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis() -> AsyncIterator[RespClient]:
    client = RespClient.from_url(REDIS_URL, timeout_ms=2000)
    yield client
    await client.close()


@pytest.fixture
async def open_server(database_url: str) -> AsyncIterator[OpenServer]:
    """open_server(kind, **RedisCacheOptions fields) → a started Server; kind is "coherent",
    "per-process" (the coherent cache with per-process degraded mode, a baseline), or "naive" /
    "naive-set" (stockkeeper.bench.baselines.NaiveCacheAside, delete-on-write / unversioned
    SET). `redis_url` and `database_url` reach this server's own way (a fault proxy, say)."""
    shared_database_url = database_url
    async with AsyncExitStack() as stack:

        async def open_one(
            kind: str = "coherent",
            redis_url: str = REDIS_URL,
            database_url: str = shared_database_url,
            **options: Any,
        ) -> Server:
            store = await open_store(database_url)
            await store.migrate()
            stack.push_async_callback(store.close)
            server = Server(Inventory(store), store, None)  # type: ignore[arg-type]
            get_item = store.get_item

            async def counted(sku: str) -> Item | None:
                server.db_reads.append(sku)
                return await get_item(sku)

            store.get_item = counted  # type: ignore[method-assign]
            timeout_ms = options.pop("timeout_ms", 500)
            client = RespClient.from_url(
                redis_url, timeout_ms=timeout_ms, connect_timeout_ms=timeout_ms
            )
            cache: ReadCache
            keys = Keys.for_database(await store.token_key())
            if kind.startswith("naive"):
                on_write = "set" if kind == "naive-set" else "delete"
                cache = NaiveCacheAside(client, store, keys, on_write=on_write)
            else:
                source = ProcessLocalSource if kind == "per-process" else None
                cache = RedisCache(client, store, keys, RedisCacheOptions(**options), source)
            await cache.start()
            stack.push_async_callback(cache.close)
            server.cache = server.inventory.cache = cache
            return server

        yield open_one
