"""Caches in front of the store's one read path (docs/cache.md).

`memory://` is the embedded default: on SQLite, a per-process cache that proves itself current on
every read; on PostgreSQL it caches nothing, since it could not. `redis://…` (or `rediss://…`,
over TLS) is the shared cache of the distributed setup.
"""

from __future__ import annotations

from collections.abc import Callable

from stockkeeper.cache.base import DirectReads, ReadCache
from stockkeeper.cache.client import RedisClient
from stockkeeper.cache.memory import ProvenMemoryCache
from stockkeeper.cache.read_mode import ReadSource
from stockkeeper.cache.redis import RedisCache, RedisCacheOptions
from stockkeeper.cache.resp import CacheUnavailable, Endpoint, RespClient
from stockkeeper.domain import Unavailable
from stockkeeper.store import Store, display_url

DEFAULT_CACHE_URL = "memory://"
CACHE_SCHEMES = ("memory://", "redis://", "rediss://", "unix://")

__all__ = [
    "DEFAULT_CACHE_URL",
    "ReadCache",
    "RedisCacheOptions",
    "check_cache_url",
    "open_cache",
    "ping_cache",
]


def check_cache_url(url: str) -> None:
    """Raise ValueError for a URL no cache could use, TLS files included, before anything
    starts."""
    if not url.startswith(CACHE_SCHEMES):
        raise ValueError(
            f"unsupported cache URL {url!r}: use memory://, redis://host:port/db, "
            "rediss://host:port/db (TLS) or unix:///path?db=N"
        )
    if url.startswith("memory://"):
        return
    try:
        endpoint = Endpoint.parse(url)
        if endpoint.tls is not None:
            endpoint.tls.context()
    except ValueError as error:
        raise ValueError(f"cache URL {display_url(url)}: {error}") from None


async def open_cache(
    url: str,
    store: Store,
    redis_options: RedisCacheOptions | None = None,
    *,
    read_source: Callable[[RedisCache], ReadSource] | None = None,
) -> ReadCache:
    """The cache a URL names, over `store`, started. `read_source` replaces the cluster's
    read mode lease of a Redis cache (a baseline's per-process degraded mode)."""
    check_cache_url(url)
    cache: ReadCache
    if url.startswith("memory://"):
        view = store.local_view()
        cache = DirectReads(store) if view is None else ProvenMemoryCache(store, view)
    else:
        from stockkeeper.cache.scripts import Keys

        options = redis_options or RedisCacheOptions()

        def connect(endpoint: Endpoint) -> RespClient:
            # A blackholed Redis costs a connect timeout: keep it as short as a command's.
            return RespClient(
                endpoint, timeout_ms=options.timeout_ms, connect_timeout_ms=options.timeout_ms
            )

        keys = Keys.for_database(await store.token_key())
        client = RedisClient(connect(Endpoint.parse(url)), connect, store, keys.pattern)
        cache = RedisCache(client, store, keys, options, read_source)
    await cache.start()
    return cache


async def ping_cache(url: str) -> None:
    """Raise Unavailable unless the cache at `url` answers (the in-process cache always does)."""
    check_cache_url(url)
    if url.startswith("memory://"):
        return
    client = RespClient.from_url(url, timeout_ms=2000, connect_timeout_ms=2000)
    try:
        await client.call("PING")
    except CacheUnavailable as error:
        raise Unavailable(f"cache unreachable at {display_url(url)}: {error}") from error
    finally:
        await client.close()
