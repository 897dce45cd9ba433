"""Redis memory per cached SKU, measured: N items made through `Inventory`, each read once (the
fill), on a private redis-server; `used_memory` before and after, divided by N, and `MEMORY
USAGE` of one key. The hash holds incarnation, version, on_hand, install time and (while a fill
is out) a lease; the key names the deployment's namespace and the SKU.

Usage (from the project folder; needs PostgreSQL and redis-server):
    .venv/bin/python -m bench.cache_memory [items=20000] [sku_chars=12]
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import ExitStack

import uvloop

from bench import POSTGRES_URL
from stockkeeper.bench.cluster import fresh_schema, private_redis
from stockkeeper.cache.resp import RespClient
from stockkeeper.service import Inventory
from stockkeeper.store import open_store

BATCH = 200


async def used_memory(redis: RespClient) -> int:
    info: bytes = await redis.call("INFO", "memory")
    for line in info.decode().splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    raise RuntimeError("INFO memory has no used_memory")


async def run(database_url: str, redis_url: str, items: int, sku_chars: int) -> None:
    store = await open_store(database_url)
    await store.migrate()
    await store.close()
    redis = RespClient.from_url(redis_url, timeout_ms=5_000)
    inventory = await Inventory.open(database_url, cache_url=redis_url)
    try:
        skus = [f"S{n:0{sku_chars - 1}d}" for n in range(items)]
        for first in range(0, items, BATCH):
            batch = skus[first : first + BATCH]
            await asyncio.gather(*(inventory.set_stock(sku, 7, user="bench") for sku in batch))
        before = await used_memory(redis)
        for first in range(0, items, BATCH):
            await asyncio.gather(*(inventory.read(sku) for sku in skus[first : first + BATCH]))
        after = await used_memory(redis)
        keys = inventory.cache.keys  # type: ignore[attr-defined]
        one = await redis.call("MEMORY", "USAGE", keys.item(skus[0]), "SAMPLES", "0")
        grew = after - before
        print(f"{items} SKUs of {sku_chars} characters, each cached once")
        print(f"  used_memory grew by {grew:,} bytes: {grew / items:.0f} per SKU")
        print(f"  MEMORY USAGE of one key: {one} bytes")
    finally:
        await inventory.close()
        await redis.close()


def main(items: int = 20_000, sku_chars: int = 12) -> None:
    with ExitStack() as stack:
        redis_url = stack.enter_context(private_redis())
        database_url = stack.enter_context(fresh_schema(POSTGRES_URL))
        uvloop.run(run(database_url, redis_url, items, sku_chars))


if __name__ == "__main__":
    main(*(int(argument) for argument in sys.argv[1:3]))
