"""Behind PgBouncer 1.18 in transaction mode, what no parametrized store test can show: what the
URL must say, and that every write still commits synchronously, though no session setting
reaches the server through the pooler. (The other store tests run through it too: see
conftest.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from stockkeeper.domain import Unavailable
from stockkeeper.service import Inventory
from stockkeeper.store import open_store
from tests.distributed.pgbouncer import PgBouncer, running_pgbouncer
from tests.distributed.postgres_server import PostgresServer, running_postgres
from tests.eventually import eventually

WAIT_S_MAX = 10.0
# Required, this standby (it never comes) holds every commit made with synchronous_commit = on;
# one on the server's default (off, below) does not wait.
NO_STANDBY = "ALTER SYSTEM SET synchronous_standby_names = 'nobody'"


async def test_without_the_url_parameter_the_refusal_says_what_to_add(pgbouncer_url: str) -> None:
    plain = pgbouncer_url.partition("?")[0]
    with pytest.raises(Unavailable, match=r"unsupported startup parameter.*\?pooler=transaction"):
        await open_store(plain)


async def test_a_pooled_url_with_a_search_path_or_another_pooler_is_refused() -> None:
    """search_path is a startup parameter: PgBouncer refuses it, or drops it if told to ignore
    it, and then the tables would be looked for in the wrong schema. Both are refused before
    any connection is tried."""
    nowhere = "postgresql://postgres@127.0.0.1:1/stock"
    with pytest.raises(ValueError, match="search_path cannot pass a transaction pooler"):
        await open_store(f"{nowhere}?pooler=transaction&search_path=elsewhere")
    with pytest.raises(ValueError, match="unsupported pooler=statement"):
        await open_store(f"{nowhere}?pooler=statement")


@pytest.fixture(scope="module")
def lax_postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL whose default is synchronous_commit = off."""
    with running_postgres({"synchronous_commit": "off"}) as server:
        yield server


@pytest.fixture
async def lax_pooled(lax_postgres: PostgresServer) -> AsyncIterator[tuple[Inventory, PgBouncer]]:
    """An Inventory on `lax_postgres` (schema public) through a PgBouncer of its own."""
    with running_pgbouncer(lax_postgres.url, ["public"]) as bouncer:
        async with await Inventory.open(bouncer.url("public")) as inventory:
            yield inventory, bouncer


async def admin(server: PostgresServer, *sql: str) -> None:
    conn = await asyncpg.connect(server.url)
    try:
        for statement in sql:
            await conn.execute(statement)
    finally:
        await conn.close()


async def waiting_for_standby(server: PostgresServer, count: int) -> bool:
    """Whether `count` sessions wait at COMMIT for a synchronous standby."""
    conn = await asyncpg.connect(server.url)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
        )
    finally:
        await conn.close()
    return bool(found == count)


async def test_every_write_through_pgbouncer_commits_synchronously_whatever_the_default(
    lax_postgres: PostgresServer, lax_pooled: tuple[Inventory, PgBouncer]
) -> None:
    """A one-statement purchase, a keyed purchase and an order wait at COMMIT for the missing
    standby, as synchronous commits do; a plain client's commit through the same pooler, on
    the server's default, does not. Once the standby is no longer required, all three land."""
    inventory, bouncer = lax_pooled
    for sku in ("S-1", "S-2", "S-3"):  # one each: a commit waiting keeps its row locks
        await inventory.set_stock(sku, 10, user="t")
    plain = await asyncpg.connect(bouncer.url("public").partition("?")[0], statement_cache_size=0)
    await admin(lax_postgres, NO_STANDBY, "SELECT pg_reload_conf()")
    writes = [
        asyncio.create_task(inventory.decrement_stock("S-1", 1, user="t")),
        asyncio.create_task(inventory.decrement_stock("S-2", 1, user="t", idempotency_key="k")),
        asyncio.create_task(inventory.place_order([{"sku": "S-3", "quantity": 1}], user="t")),
    ]
    try:
        await asyncio.wait_for(plain.execute("CREATE TABLE unimportant (x int)"), WAIT_S_MAX)
        assert await eventually(lambda: waiting_for_standby(lax_postgres, 3), WAIT_S_MAX)
        assert not any(write.done() for write in writes)
    finally:
        await plain.close()
        await admin(
            lax_postgres, "ALTER SYSTEM RESET synchronous_standby_names", "SELECT pg_reload_conf()"
        )
    receipts = await asyncio.wait_for(asyncio.gather(*writes), WAIT_S_MAX)
    assert [r.change.version for r in receipts] == [2, 2, 2]
