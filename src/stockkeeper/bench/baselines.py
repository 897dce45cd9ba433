"""Baseline servers for the benchmarks, started by the same launcher as the real server
(`baseline_command` in stockkeeper.bench.cluster) so a comparison differs only in the app:

- `naive`: the real app over the design the coherent cache replaces (cache-aside, TTL,
  unversioned SET on fill, delete-on-write), to show what coherence costs and what it buys.
- `per-process`: the coherent cache with the degraded mode it had before one read source for
  the cluster: each process that cannot reach Redis reads from the database on its own, while
  the others go on serving Redis (docs/cache.md, "One read source", shows why that goes back).
- `hello`: a fixed answer to every request, the ceiling of granian + ASGI on this machine.

They live here, in bench code, and never in the product's request paths.

    python -m stockkeeper.bench.baselines {naive|per-process|hello} --port P --database URL \
        --cache URL
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence

import click

from stockkeeper import failpoints, metrics
from stockkeeper.cache import open_cache
from stockkeeper.cache.base import ReadCache, read_database
from stockkeeper.cache.read_mode import Source
from stockkeeper.cache.redis import RedisCache
from stockkeeper.cache.resp import RespClient
from stockkeeper.cache.scripts import Keys
from stockkeeper.domain import Change, Item, ItemRead
from stockkeeper.http.app import App, configure_worker_logging, settings_from_environment
from stockkeeper.http.messages import Receive, Scope, Send
from stockkeeper.service import Inventory
from stockkeeper.serving import Limits, serve_app, serve_options
from stockkeeper.store import Store

NAIVE_TTL_S = 300
REDIS_SCHEMES = ("redis://", "unix://")
HELLO_BODY = b'{"sku":"HELLO","on_hand":1,"version":1}'
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_HELLO_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(HELLO_BODY)),
    (b"etag", b'"1"'),
]


class NaiveCacheAside:
    """The buggy design the coherent cache replaces: cache-aside with a TTL, an unversioned SET
    on fill, and on every write either a DEL (`on_write="delete"`) or an unversioned SET of the
    new value (`"set"`). A fill racing a write can put an old state back for up to the TTL; the
    guarantee tests assert that it does. It counts hits, misses and database reads as the real
    caches do, so /metrics compares."""

    def __init__(
        self,
        client: RespClient,
        store: Store,
        keys: Keys,
        ttl_s: int = NAIVE_TTL_S,
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
            metrics.CACHE_HITS.inc()
            version, on_hand = map(int, cached.split(b":"))
            return ItemRead(Item(sku, on_hand, version), cache_hit=True)
        item = await read_database(self._store, sku)
        await failpoints.hit("service.read.after_fetch")
        metrics.CACHE_MISSES.inc()
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


class ProcessLocalSource:
    """Each process decides alone: Redis while it reaches Redis, else the database."""

    redis_from_s = -math.inf
    redis_until_s = math.inf

    def __init__(self, cache: RedisCache) -> None:
        self._cache = cache

    def source(self, now_s: float) -> Source | None:
        return Source.REDIS if self._cache.up else Source.DATABASE

    async def changed(self, timeout_s: float) -> None:
        await asyncio.sleep(timeout_s)

    def poke(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _require_redis(cache_url: str) -> None:
    if not cache_url.startswith(REDIS_SCHEMES):
        raise ValueError(
            f"the naive baseline caches in Redis: give a redis://host:port/db (or unix://) "
            f"cache URL, not {cache_url!r}"
        )


def create_naive_app() -> App:
    """The real app, configured like `create_app` by the environment, but reading through
    `NaiveCacheAside` (delete-on-write, TTL 300 s) in Redis instead of the coherent cache."""
    configure_worker_logging()
    settings = settings_from_environment()
    _require_redis(settings.cache_url)

    async def naive_cache(store: Store) -> NaiveCacheAside:
        timeout_ms = settings.redis_options.timeout_ms
        client = RespClient.from_url(
            settings.cache_url, timeout_ms=timeout_ms, connect_timeout_ms=timeout_ms
        )
        keys = Keys.for_database(await store.token_key())
        return NaiveCacheAside(client, store, keys, ttl_s=NAIVE_TTL_S, on_write="delete")

    async def open_inventory() -> Inventory:
        return await Inventory.open(
            settings.database_url, settings.store_options, cache=naive_cache
        )

    return App(open_inventory, settings.in_flight_max)


def create_per_process_app() -> App:
    """The real app, configured like `create_app`, with per-process degraded mode."""
    configure_worker_logging()
    settings = settings_from_environment()
    _require_redis(settings.cache_url)

    async def per_process_cache(store: Store) -> ReadCache:
        return await open_cache(
            settings.cache_url, store, settings.redis_options, read_source=ProcessLocalSource
        )

    async def open_inventory() -> Inventory:
        return await Inventory.open(
            settings.database_url, settings.store_options, cache=per_process_cache
        )

    return App(open_inventory, settings.in_flight_max)


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        more_body = True
        while more_body:  # read and drop the body, as a real app would
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more_body = bool(message.get("more_body", False))
        await send({"type": "http.response.start", "status": 200, "headers": _HELLO_HEADERS})
        await send({"type": "http.response.body", "body": HELLO_BODY})
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_hello_app() -> AsgiApp:
    """A bare ASGI app answering every request (any method, any path, /readyz too) 200 with one
    fixed item, touching nothing else: the most this HTTP stack can serve here."""
    return _hello


FACTORIES = {
    "naive": "stockkeeper.bench.baselines:create_naive_app",
    "per-process": "stockkeeper.bench.baselines:create_per_process_app",
    "hello": "stockkeeper.bench.baselines:create_hello_app",
}


@click.command()
@click.argument("kind", type=click.Choice(sorted(FACTORIES)))
@serve_options
def main(
    kind: str,
    host: str,
    port: int,
    workers: int,
    database_url: str,
    cache_url: str,
    limits: Limits,
) -> None:
    """Serve the baseline KIND (naive, per-process or hello) as `stockkeeper serve` serves the
    real app: same options, same preparation (schema, first admin token), same granian setup
    and shutdown."""
    if kind in ("naive", "per-process"):
        try:
            _require_redis(cache_url)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--cache") from None
    serve_app(FACTORIES[kind], host, port, workers, database_url, cache_url, limits)


if __name__ == "__main__":
    main()
