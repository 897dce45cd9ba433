"""Caches in front of the store's read path.

`memory://` is the in-process cache of the embedded default; `redis://…` the shared cache of the
distributed setup. Reads still go to the database in this release: the coherent cache lands on
the service's one read path (`Inventory.read`) next. Until then a configured Redis is checked
for reachability, so a misconfigured deployment fails at start, not at cut-over.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from stockkeeper.domain import Unavailable

DEFAULT_CACHE_URL = "memory://"
CACHE_SCHEMES = ("memory://", "redis://", "rediss://", "unix://")


def check_cache_url(url: str) -> None:
    if not url.startswith(CACHE_SCHEMES):
        raise ValueError(f"unsupported cache URL {url!r}: use memory:// or redis://host:port/db")


async def ping_cache(url: str) -> None:
    """Raise unless the cache answers (the in-process cache always does)."""
    check_cache_url(url)
    if url.startswith("memory://"):
        return
    import redis.asyncio as redis
    from redis.exceptions import RedisError

    client = redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except RedisError as error:
        raise Unavailable(f"cache unreachable at {url}: {error}") from error
    finally:
        await client.aclose()


def cache_probes(url: str) -> dict[str, Callable[[], Awaitable[None]]]:
    """Readiness probes for the cache: /readyz names it when it is down."""
    check_cache_url(url)
    return {"cache": functools.partial(ping_cache, url)}
