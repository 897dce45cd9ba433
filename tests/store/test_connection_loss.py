"""PostgreSQL drops the service's connections (restart, failover, idle kill): work goes on."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from stockkeeper import failpoints, metrics
from stockkeeper.domain import Item, Unavailable
from stockkeeper.service import Inventory
from stockkeeper.store import StoreOptions, open_store
from tests.conftest import POSTGRES_URL
from tests.holds import held

ROUNDS = 3


async def drop_connections(application_name: str) -> None:
    """Terminate the app's current sessions, and wait until the server has let them go."""
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        pids = await conn.fetchval(
            "SELECT array_agg(pid) FROM pg_stat_activity WHERE application_name = $1",
            application_name,
        )
        assert pids, f"no session of {application_name} to drop"
        await conn.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
        for _ in range(250):
            if not await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
            ):
                return
            await asyncio.sleep(0.02)
        pytest.fail(f"sessions {pids} outlived pg_terminate_backend")
    finally:
        await conn.close()


def connection_lost_retries() -> float:
    return metrics.TRANSACTION_RETRIES.labels(reason="connection_lost")._value.get()


@contextlib.asynccontextmanager
async def dropping_inventory(postgres_url: str) -> AsyncIterator[tuple[Inventory, str]]:
    name = f"sk_{uuid.uuid4().hex[:10]}"
    async with await Inventory.open(
        f"{postgres_url}&application_name={name}", StoreOptions(pool_size=2)
    ) as inv:
        await inv.set_stock("A-1", 10, user="test")
        yield inv, name


def once(action: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A failpoint action that runs `action` the first time it is hit, so the run it forces
    again passes the point untouched."""
    fired = False

    async def first() -> None:
        nonlocal fired
        if not fired:
            fired = True
            await action()

    return first


def drop_once(name: str) -> Callable[[], Awaitable[None]]:
    """A failpoint action that drops the app's connections the first time it is hit."""
    return once(lambda: drop_connections(name))


async def test_idle_connections_dropped_between_requests(postgres_url: str) -> None:
    async with dropping_inventory(postgres_url) as (inv, name):
        for n in range(ROUNDS):
            await drop_connections(name)
            assert (await inv.get_stock("A-1")).on_hand == 10 - n
            await drop_connections(name)
            receipt = await inv.decrement_stock("A-1", 1, user="test")
            assert (receipt.change.on_hand, receipt.change.version) == (9 - n, n + 2)
        page = await inv.audit("A-1")
    assert [e.version for e in page.entries] == list(range(1, ROUNDS + 2))


async def test_connection_dropped_mid_transaction_is_run_again_once(postgres_url: str) -> None:
    """Before COMMIT the server rolled the work back, so running it again applies it once."""
    async with dropping_inventory(postgres_url) as (inv, name):
        retries_before = connection_lost_retries()
        with failpoints.armed("store.write.before_audit", drop_once(name)):
            receipt = await inv.decrement_stock("A-1", 1, user="test", idempotency_key="k")
        assert (receipt.change.on_hand, receipt.change.version) == (9, 2)
        assert connection_lost_retries() - retries_before == 1
        page = await inv.audit("A-1")
    assert [(e.version, e.delta) for e in page.entries] == [(1, 10), (2, -1)]


async def test_connection_dropped_at_commit_is_unavailable_and_a_keyed_retry_settles_it(
    postgres_url: str,
) -> None:
    """At COMMIT the outcome is unknown to the client: it is not run again behind its back."""
    async with dropping_inventory(postgres_url) as (inv, name):
        with (
            failpoints.armed("store.write.before_commit", drop_once(name)),
            pytest.raises(Unavailable, match="outcome unknown"),
        ):
            await inv.decrement_stock("A-1", 1, user="test", idempotency_key="k-1")
        first = await inv.decrement_stock("A-1", 1, user="test", idempotency_key="k-1")
        again = await inv.decrement_stock("A-1", 1, user="test", idempotency_key="k-1")
        assert (first.replayed, again.replayed) == (False, True)
        assert first.changes == again.changes
        assert (await inv.get_stock("A-1")).on_hand == 9


async def test_connection_dropped_during_a_one_statement_purchase_is_not_run_again(
    postgres_url: str,
) -> None:
    """A purchase without a key is one statement, its own transaction: once it is sent, a lost
    connection leaves its outcome unknown, so it is reported, never run again behind the
    caller's back (which could apply it twice)."""
    async with (
        dropping_inventory(postgres_url) as (inv, name),
        await Inventory.open(postgres_url) as holder,
    ):
        retries_before = connection_lost_retries()
        async with held("store.write.before_commit") as hold:
            holding = asyncio.create_task(
                holder.decrement_stock("A-1", 1, user="test", idempotency_key="hold")
            )
            await hold.reached()  # holder has the row locked until it commits
            waiting = asyncio.create_task(inv.decrement_stock("A-1", 1, user="test"))
            await wait_for_lock_wait(name)
            await drop_connections(name)
            with pytest.raises(Unavailable, match="outcome unknown"):
                await waiting
            hold.release()
            await holding
        assert connection_lost_retries() == retries_before
        assert await holder.get_stock("A-1") == Item("A-1", 9, 2)


async def wait_for_lock_wait(application_name: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        for _ in range(250):
            if await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = $1 AND wait_event_type = 'Lock'",
                application_name,
            ):
                return
            await asyncio.sleep(0.02)
        pytest.fail("the purchase never waited for the row lock")
    finally:
        await conn.close()


async def test_a_statement_asyncpg_refused_to_begin_is_run_again_even_if_it_commits(
    postgres_url: str,
) -> None:
    """A session the server ended while it sat idle in the pool: asyncpg refuses the next
    operation ("cannot switch to state") before it sends a byte, so even a statement that
    commits by itself is safe to run again. Any other fault of a committing statement leaves
    its outcome unknown."""
    store = await open_store(postgres_url)
    try:
        attempts = 0

        async def refused_once(conn: asyncpg.Connection) -> int:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise asyncpg.exceptions.InternalClientError(
                    "cannot switch to state 11; another operation (2) is in progress"
                )
            return int(await conn.fetchval("SELECT 1"))

        assert await store._run(refused_once, commits=True) == 1  # type: ignore[attr-defined]
        assert attempts == 2

        async def lost_midway(conn: asyncpg.Connection) -> int:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")

        with pytest.raises(Unavailable, match="outcome unknown"):
            await store._run(lost_midway, commits=True)  # type: ignore[attr-defined]
    finally:
        await store.close()
