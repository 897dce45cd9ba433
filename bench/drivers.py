"""asyncpg against psycopg 3 on the read path's query, same run, same database.

Usage: .venv/bin/python bench/drivers.py [reads=20000] [concurrency=16]
Install first: .venv/bin/pip install -e '.[bench]'
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import psycopg_pool

from stockkeeper.store.postgres import rollback_if_open

URL = os.environ.get("STOCKKEEPER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
POOL_SIZE = 10
QUERY = "SELECT on_hand, version FROM {schema}.items WHERE sku = {mark}"


async def timed(reads: int, concurrency: int, read_once: Callable[[], Awaitable[None]]) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await read_once()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(reads)))
    return reads / (time.perf_counter() - started)


async def main(reads: int, concurrency: int) -> None:
    schema = f"sk_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(URL)
    await admin.execute(
        f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.items "
        "(sku text PRIMARY KEY, on_hand bigint, version bigint);"
        f"INSERT INTO {schema}.items VALUES ('A-1', 7, 1)"
    )
    try:
        apg = await asyncpg.create_pool(
            URL, min_size=POOL_SIZE, max_size=POOL_SIZE, reset=rollback_if_open
        )
        apg_sql = QUERY.format(schema=schema, mark="$1")

        async def apg_read() -> None:
            async with apg.acquire() as conn:
                await conn.fetchrow(apg_sql, "A-1")

        pg3 = psycopg_pool.AsyncConnectionPool(
            URL, min_size=POOL_SIZE, max_size=POOL_SIZE, kwargs={"autocommit": True}, open=False
        )
        await pg3.open(wait=True)
        pg3_sql = QUERY.format(schema=schema, mark="%s")

        async def pg3_read() -> None:
            async with pg3.connection() as conn:
                await (await conn.execute(pg3_sql, ("A-1",), prepare=True)).fetchone()

        for name, read in (("asyncpg", apg_read), ("psycopg", pg3_read)) * 2:
            rate = await timed(reads, concurrency, read)
            print(f"{name}: {rate:,.0f} reads/s")
        await apg.close()
        await pg3.close()
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    asyncio.run(main(*(args + [20000, 16][len(args) :])))
