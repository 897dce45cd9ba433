"""A cached read's cost on several caches, in one run: `Inventory.read` of one cached item (the
coherent cache's Lua read on uvloop, like the server), per cache URL.

Each sample: GETS reads one at a time (each read's latency: p50, p99; reads/s, the client's
CPU per read: what a server pays), then GETS reads from 64 callers at once (reads/s, CPU per
read: their commands share writes). The caches alternate for several rounds and the table shows
each one's median and its ratio to the first, so a burst of load from elsewhere on the machine
skews one sample, not one side. The database is read once, to fill.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import uvloop

from bench import POSTGRES_URL
from stockkeeper.bench.cluster import fresh_schema
from stockkeeper.service import Inventory

SKU = "CACHED-READ-BENCH"
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
    base = next(iter(medians))
    for name in list(medians)[1:]:
        ratios = (v / b for v, b in zip(medians[name], medians[base], strict=True))
        print(f"{name + '/' + base:<10}" + "".join(f"{ratio:>10.2f}" for ratio in ratios))


def compare(start_caches: Callable[[ExitStack], dict[str, str]], gets: int, rounds: int) -> None:
    """Start the caches (their URLs by name, the baseline first) and a fresh schema, measure,
    print the table, and stop everything."""
    with ExitStack() as stack:
        cache_urls = start_caches(stack)
        database_url = stack.enter_context(fresh_schema(POSTGRES_URL))
        uvloop.run(run(database_url, cache_urls, gets, rounds))
