"""CPU of one cached GET inside the app, with no HTTP server: the ASGI app is called directly
(real PostgreSQL schema, the local Redis), so what is left of a server's per-request CPU under
load belongs to granian, the event loop and the kernel (BENCHMARKS.md, "Why the read p99 ...").

Prints µs per GET one at a time (a Redis round trip each) and µs of CPU per GET with 32 callers
at once (their Redis commands share writes), after a warm-up.

Usage: .venv/bin/python bench/read_path_inprocess.py [reads=20000]
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

import asyncpg
import uvloop

from stockkeeper.domain import Role
from stockkeeper.http.app import App
from stockkeeper.service import Inventory

POSTGRES_URL = os.environ.get(
    "STOCKKEEPER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("STOCKKEEPER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CALLERS = 32


async def _sql(statement: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def measure(reads: int) -> None:
    schema = f"sk_inprocess_{uuid.uuid4().hex[:8]}"
    await _sql(f"CREATE SCHEMA {schema}")
    try:
        url = f"{POSTGRES_URL}?search_path={schema}"
        async with await Inventory.open(url, cache_url=REDIS_URL) as inventory:
            await inventory.set_stock("A-1", 100, user="bench")
            token = await inventory.create_token("bench", Role.CLERK)
            app = App.for_inventory(inventory)
            scope = {
                "type": "http",
                "method": "GET",
                "path": "/v1/items/A-1",
                "query_string": b"",
                "headers": [(b"authorization", f"Bearer {token}".encode())],
            }

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: MutableMapping[str, Any]) -> None:
                return None

            async def caller(count: int) -> None:
                for _ in range(count):
                    await app(scope, receive, send)

            await caller(2_000)  # warm: the key is cached, the token snapshot loaded
            started = time.perf_counter()
            await caller(reads)
            one_s = (time.perf_counter() - started) / reads
            cpu = time.process_time()
            await asyncio.gather(*(caller(reads // CALLERS) for _ in range(CALLERS)))
            cpu_s = (time.process_time() - cpu) / (reads // CALLERS * CALLERS)
        print(f"one at a time: {one_s * 1e6:.1f} µs per GET (wall, a Redis round trip each)")
        print(f"{CALLERS} at once:    {cpu_s * 1e6:.1f} µs of CPU per GET")
    finally:
        await _sql(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    uvloop.run(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
