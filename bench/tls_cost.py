"""What TLS costs a cached read: `Inventory.read` of one cached item (the coherent cache's Lua
read, over RespClient, on uvloop like the server) against two private redis-servers started
alike, one plain-text and one TLS-only (a throwaway CA), in the same run.

Each sample: GETS reads one at a time (each read's latency: p50, p99; reads/s, the client's
CPU per read: what a server pays), then GETS reads from 64 callers at once (reads/s, CPU per
read: their commands share writes, so TLS's cost per write is shared too). Plain and
TLS alternate for several rounds and the table shows each one's median, so a burst of load from
elsewhere on the machine skews one sample, not one side. The database is read once, to fill.

Usage (from the project folder; needs PostgreSQL, redis-server and the test extra):
    .venv/bin/python -m bench.tls_cost [gets=20000] [rounds=3]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import uvloop
from tests.distributed.redis_server import RedisTls, running_redis
from tests.tls import make_pki

from stockkeeper.bench.cluster import fresh_schema
from stockkeeper.service import Inventory

POSTGRES_URL = os.environ.get(
    "STOCKKEEPER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
SKU = "TLS-BENCH"
CONCURRENCY = 64


@dataclass(frozen=True)
class Sample:
    p50_us: float
    p99_us: float
    serial_per_s: float  # one read at a time
    serial_cpu_us: float  # client CPU per read, one at a time
    parallel_per_s: float  # CONCURRENCY callers
    parallel_cpu_us: float  # client CPU per read, CONCURRENCY callers (their writes shared)


async def cached_read(inventory: Inventory) -> None:
    assert (await inventory.read(SKU)).cache_hit


async def measure(inventory: Inventory, gets: int) -> Sample:
    latencies = []
    serial_cpu, started = time.process_time(), time.perf_counter()
    for _ in range(gets):
        before = time.perf_counter()
        await cached_read(inventory)
        latencies.append(time.perf_counter() - before)
    serial_cpu, serial_s = time.process_time() - serial_cpu, time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)

    async def caller() -> None:
        for _ in range(gets // CONCURRENCY):
            await cached_read(inventory)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = gets // CONCURRENCY * CONCURRENCY
    return Sample(
        cuts[49] * 1e6,
        cuts[98] * 1e6,
        gets / serial_s,
        serial_cpu / gets * 1e6,
        done / wall,
        cpu / done * 1e6,
    )


async def run(database_url: str, cache_urls: dict[str, str], gets: int, rounds: int) -> None:
    inventories = {
        name: await Inventory.open(database_url, cache_url=url) for name, url in cache_urls.items()
    }
    try:
        first = next(iter(inventories.values()))
        await first.set_stock(SKU, 7, user="bench")
        for inventory in inventories.values():
            await inventory.read(SKU)  # the fill
            for _ in range(gets // 10):  # warm-up
                await cached_read(inventory)
        samples: dict[str, list[Sample]] = {name: [] for name in inventories}
        for _ in range(rounds):
            for name, inventory in inventories.items():
                samples[name].append(await measure(inventory, gets))
    finally:
        for inventory in inventories.values():
            await inventory.close()
    print(f"{gets} cached reads per sample, median of {rounds}; uvloop; Inventory.read")
    columns = {
        "p50_us": "p50 µs",
        "p99_us": "p99 µs",
        "serial_per_s": "reads/s",
        "serial_cpu_us": "µs CPU",
        "parallel_per_s": f"x{CONCURRENCY} /s",
        "parallel_cpu_us": "µs CPU",
    }
    header = f"{'':<10}" + "".join(f"{title:>10}" for title in columns.values())
    print(header)
    print("-" * len(header))
    medians = {
        name: [statistics.median(getattr(sample, field) for sample in runs) for field in columns]
        for name, runs in samples.items()
    }
    for name, values in medians.items():
        print(f"{name:<10}" + "".join(f"{value:>10,.1f}" for value in values))
    ratios = (tls / plain for tls, plain in zip(medians["tls"], medians["plain"], strict=True))
    print(f"{'tls/plain':<10}" + "".join(f"{ratio:>10.2f}" for ratio in ratios))


def main(gets: int = 20_000, rounds: int = 3) -> None:
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sk-tls-bench-")))
        pki = make_pki(folder)
        plain = stack.enter_context(running_redis())
        tls = stack.enter_context(running_redis(RedisTls(pki.server.cert, pki.server.key, pki.ca)))
        database_url = stack.enter_context(fresh_schema(POSTGRES_URL))
        cache_urls = {"plain": plain.url, "tls": f"{tls.url}?ssl_ca_certs={pki.ca}"}
        uvloop.run(run(database_url, cache_urls, gets, rounds))


if __name__ == "__main__":
    main(*(int(argument) for argument in sys.argv[1:3]))
