"""Schema migration on start: a server starting on a schema at its revision runs no DDL, so a
restart under load neither stalls the cluster's writes nor deadlocks with them (the stress run
found both: every start took ACCESS EXCLUSIVE on audit for `ALTER TABLE … IF NOT EXISTS`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from stockkeeper import failpoints
from stockkeeper.store import open_store
from stockkeeper.store.postgres import SCHEMA_REVISION
from tests.conftest import POSTGRES_DIRECT_AND_POOLED, direct

# Straight at PostgreSQL and through PgBouncer: the DDL and its advisory lock need no session.
pytestmark = pytest.mark.parametrize("database_url", POSTGRES_DIRECT_AND_POOLED, indirect=True)

START_S_MAX = 5.0


@pytest.fixture
async def migrated(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A schema made by a first start, and a direct connection to it."""
    store = await open_store(database_url)
    await store.migrate()
    await store.close()
    conn = await asyncpg.connect(direct(database_url))
    try:
        yield conn
    finally:
        await conn.close()


async def start(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        await asyncio.wait_for(store.migrate(), START_S_MAX)
    finally:
        await store.close()


async def meta(conn: asyncpg.Connection, key: str) -> str | None:
    return await conn.fetchval("SELECT value FROM stockkeeper_meta WHERE key = $1", key)


async def test_a_start_on_a_current_schema_waits_for_no_write_in_flight(
    database_url: str, migrated: asyncpg.Connection
) -> None:
    """A write holds its locks on items, audit and idempotency_keys until it commits; a start
    meanwhile must not queue behind it (nor make every later write queue behind the start)."""
    async with migrated.transaction():
        await migrated.execute(
            "LOCK TABLE items, audit, idempotency_keys, tokens IN ROW EXCLUSIVE MODE"
        )
        await start(database_url)  # old code: TimeoutError, waiting for ACCESS EXCLUSIVE


async def test_a_schema_from_before_revisions_is_upgraded_once(
    database_url: str, migrated: asyncpg.Connection
) -> None:
    await migrated.execute("DELETE FROM stockkeeper_meta WHERE key = 'schema_revision'")
    await migrated.execute("ALTER TABLE tokens DROP COLUMN revoked_at")  # as in version 1
    await start(database_url)
    assert await meta(migrated, "schema_revision") == str(SCHEMA_REVISION)
    assert await migrated.fetchval(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_name = 'tokens' AND column_name = 'revoked_at' "
        "AND table_schema = current_schema()"
    )


async def test_a_newer_revision_is_left_alone_and_a_newer_version_refused(
    database_url: str, migrated: asyncpg.Connection
) -> None:
    await migrated.execute(
        "UPDATE stockkeeper_meta SET value = $1 WHERE key = 'schema_revision'",
        str(SCHEMA_REVISION + 1),
    )
    await start(database_url)
    assert await meta(migrated, "schema_revision") == str(SCHEMA_REVISION + 1), "not lowered"
    await migrated.execute("UPDATE stockkeeper_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(RuntimeError, match="schema is version 99, newer than this stockkeeper"):
        await start(database_url)


async def test_servers_starting_together_on_an_old_revision_run_the_ddl_once(
    database_url: str, migrated: asyncpg.Connection
) -> None:
    """Each saw the old revision before the lock; the one that waited for the lock must see the
    upgrade made meanwhile and take none of the DDL's locks again (a rolling deploy starts many
    servers at once)."""
    await migrated.execute("DELETE FROM stockkeeper_meta WHERE key = 'schema_revision'")
    reached, release = asyncio.Event(), asyncio.Event()
    ddl_runs = 0

    async def before_ddl() -> None:
        nonlocal ddl_runs
        ddl_runs += 1
        if ddl_runs == 1:  # the first holds the lock until the second is queued behind it
            reached.set()
            await asyncio.wait_for(release.wait(), START_S_MAX)

    with failpoints.armed("store.migrate.before_ddl", before_ddl):
        first = asyncio.create_task(start(database_url))
        await asyncio.wait_for(reached.wait(), START_S_MAX)
        second = asyncio.create_task(start(database_url))
        await asyncio.sleep(0.3)  # it read the old revision and waits on the advisory lock
        release.set()
        await asyncio.gather(first, second)
    assert ddl_runs == 1
    assert await meta(migrated, "schema_revision") == str(SCHEMA_REVISION)
