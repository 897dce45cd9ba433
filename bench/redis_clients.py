"""CPU per Redis command of each client, on uvloop like the server, against the local Redis.

The cache's hot path is one Redis round trip per read, at 10,000 reads/s on 2 cores: the client
process's CPU per command (time.process_time over the run, divided by the commands) is what the
server pays; Redis's own CPU is not counted. Each case: N workers (asyncio.gather) each looping
the command on a warm key, after a warm-up that also opens redis-py's pooled connections. The
cases run round-robin for several rounds and the table shows each one's median, so a burst of
load from elsewhere on the machine skews one sample, not one client.

Usage: .venv/bin/python bench/redis_clients.py [ops=20000] [rounds=3]
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
import uvloop
from redis._parsers import BaseParser, _AsyncHiredisParser, _AsyncRESP2Parser, _AsyncRESP3Parser

from stockkeeper.cache.resp import RespClient, Script

HOST = os.environ.get("STOCKKEEPER_BENCH_REDIS_HOST", "127.0.0.1")
PORT = int(os.environ.get("STOCKKEEPER_BENCH_REDIS_PORT", "6379"))
CONCURRENCIES = (1, 64)
HMGET = Script("return redis.call('HMGET', KEYS[1], 'v', 'q')")


@dataclass(frozen=True)
class Case:
    client: str
    command: str
    once: Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class Sample:
    ops_per_s: float
    cpu_us: float  # process CPU (user + system) per command
    sys_us: float  # the kernel's part of it: syscalls, wake-ups


async def measure(once: Callable[[], Awaitable[Any]], concurrency: int, ops: int) -> Sample:
    per_worker = max(1, ops // concurrency)

    async def worker(rounds: int) -> None:
        for _ in range(rounds):
            await once()

    await asyncio.gather(*(worker(max(1, per_worker // 10)) for _ in range(concurrency)))
    gc.collect()
    system = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(per_worker) for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    system = resource.getrusage(resource.RUSAGE_SELF).ru_stime - system
    done = per_worker * concurrency
    return Sample(done / wall, cpu / done * 1e6, system / done * 1e6)


def redis_py(parser: type[BaseParser], protocol: int) -> redis.Redis:
    pool = redis.ConnectionPool(host=HOST, port=PORT, parser_class=parser, protocol=protocol)
    return redis.Redis(connection_pool=pool)


async def main(ops: int = 20_000, rounds: int = 3) -> None:
    prefix = f"sk-bench-redis:{uuid.uuid4().hex[:8]}:"
    key, hkey = f"{prefix}k", f"{prefix}h"
    admin = redis.Redis(host=HOST, port=PORT)
    await admin.set(key, b"x" * 64)
    await admin.hset(hkey, mapping={"v": "12", "q": "7"})
    redis_pys = {
        "redis-py python RESP2": redis_py(_AsyncRESP2Parser, 2),
        "redis-py python RESP3": redis_py(_AsyncRESP3Parser, 3),
        "redis-py hiredis RESP3": redis_py(_AsyncHiredisParser, 3),
    }
    ours = RespClient.from_url(f"redis://{HOST}:{PORT}/0", timeout_ms=1000)
    try:
        hiredis_py = redis_pys["redis-py hiredis RESP3"]
        # redis-py's Script object: EVALSHA with its own NOSCRIPT fallback, as an app would use.
        hmget_py = hiredis_py.register_script(HMGET.source)
        assert await hmget_py(keys=[hkey]) == [b"12", b"7"]
        assert await ours.call("GET", key) == b"x" * 64
        assert await ours.evalsha(HMGET, [hkey]) == [b"12", b"7"]
        cases = [Case(name, "GET", functools.partial(c.get, key)) for name, c in redis_pys.items()]
        cases += [
            Case("redis-py hiredis RESP3", "EVALSHA", lambda: hmget_py(keys=[hkey])),
            Case("RespClient", "GET", lambda: ours.call("GET", key)),
            Case("RespClient", "EVALSHA", lambda: ours.evalsha(HMGET, [hkey])),
        ]
        samples: dict[tuple[int, int], list[Sample]] = {}
        for _ in range(rounds):
            for index, case in enumerate(cases):
                for concurrency in CONCURRENCIES:
                    sample = await measure(case.once, concurrency, ops)
                    samples.setdefault((index, concurrency), []).append(sample)
    finally:
        for client in redis_pys.values():
            await client.aclose()
        await ours.close()
        await admin.delete(key, hkey)
        await admin.aclose()
    print(f"{ops} commands per sample, median of {rounds}; uvloop; Redis at {HOST}:{PORT}")
    header = (
        f"{'client':<24}{'command':<9}{'conc':>5}{'ops/s':>10}{'µs CPU/op':>11}{'of it sys':>11}"
    )
    print(header)
    print("-" * len(header))
    for (index, concurrency), runs in samples.items():
        case = cases[index]
        print(
            f"{case.client:<24}{case.command:<9}{concurrency:>5}"
            f"{statistics.median(s.ops_per_s for s in runs):>10,.0f}"
            f"{statistics.median(s.cpu_us for s in runs):>11.1f}"
            f"{statistics.median(s.sys_us for s in runs):>11.1f}"
        )


if __name__ == "__main__":
    arguments = [int(argument) for argument in sys.argv[1:3]]
    uvloop.run(main(*arguments))
