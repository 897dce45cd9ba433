"""The network cuts the store's connection to PostgreSQL in mid-transaction and during COMMIT:
a real cut, an RST from the `FaultProxy` between the store and PostgreSQL, at a failpoint of the
write. test_connection_loss.py has the server-side kills (pg_terminate_backend) of the same
moments; here each scenario also runs a naive write kept in this file, which must break it.

The naive writes do what a store or a client without idempotency keys does about a lost
connection: run the purchase again, as if nothing had applied. One is the same conditional
decrement and audit entry in plain asyncpg, run again from the start; the other is stockkeeper's
own purchase in a generic retry loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import asyncpg
import pytest

from stockkeeper import failpoints
from stockkeeper.domain import OrderLine, Receipt, Unavailable
from stockkeeper.faults.proxy import FaultProxy
from stockkeeper.holds import HoldReceipt
from stockkeeper.retry import RetryPolicy, retrying
from tests.cache.test_read_source import proxied
from tests.eventually import eventually
from tests.store.test_connection_loss import connection_lost_retries, dropping_inventory, once

T = TypeVar("T")
State = tuple[tuple[int, int], list[tuple[int, int]]]
"""(on_hand, version) of the item, and (version, delta) of each of its audit entries."""

SKU = "A-1"  # dropping_inventory's item: 10 on hand, version 1
UNTOUCHED: State = ((10, 1), [(1, 10)])
APPLIED_ONCE: State = ((9, 2), [(1, 10), (2, -1)])
APPLIED_TWICE: State = ((8, 3), [(1, 10), (2, -1), (3, -1)])
TAKEN_TWICE_AUDITED_ONCE: State = ((8, 3), [(1, 10), (3, -1)])
BEFORE_CHANGE = "store.write.before_change"
BEFORE_COMMIT = "store.write.before_commit"
COMMIT_DELAY_MS = 500.0
"""How long the proxy keeps the COMMIT, and then its reply: the test must see the commit and
cut within it, so it is long against a poll of the database and short for the suite."""
PATIENCE_S = 5.0
ATTEMPTS_MAX = 3
BLIND = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)
"""Every error a lost connection raises, which the naive write takes for "nothing applied"."""
TAKE_ONE = (
    "UPDATE items SET on_hand = on_hand - 1, version = version + 1 "
    "WHERE sku = $1 AND on_hand >= 1 RETURNING on_hand, version"
)
AUDIT_ONE = (
    "INSERT INTO audit (sku, version, delta, on_hand, user_name, reason, at) "
    "VALUES ($1, $2, -1, $3, 'naive', 'purchase', clock_timestamp())"
)


@pytest.fixture
def pg_proxy(postgres_url: str) -> Iterator[tuple[FaultProxy, str]]:
    with proxied(postgres_url) as pair:
        yield pair


@pytest.fixture
async def direct(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection that bypasses the proxy: what the database holds, whatever the cut."""
    conn = await asyncpg.connect(postgres_url)
    try:
        yield conn
    finally:
        await conn.close()


async def state(conn: asyncpg.Connection) -> State:
    item = await conn.fetchrow("SELECT on_hand, version FROM items WHERE sku = $1", SKU)
    audit = await conn.fetch(
        "SELECT version, delta FROM audit WHERE sku = $1 ORDER BY version", SKU
    )
    return (item["on_hand"], item["version"]), [(row["version"], row["delta"]) for row in audit]


def judge(kind: str, found: State, held: State, broken: State) -> None:
    """Stockkeeper must leave the database `held`; the naive write must break the same
    interleaving, and leave it `broken`."""
    assert found == (held if kind == "stockkeeper" else broken), kind


def every_unavailable(error: BaseException) -> str | None:
    """The naive retry loop's idea of transient: any Unavailable, outcome unknown or not."""
    return "blind" if isinstance(error, Unavailable) else None


def control(change: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    """A proxy control as a failpoint action: in force before the write goes on."""

    async def act() -> None:
        change()

    return act


async def blind_purchase(database_url: str, *, atomic: bool) -> None:
    """The naive write: take one and write its audit entry, no idempotency key, and after any
    connection error run it again from the start. `atomic=False` lets each statement commit on
    its own. It passes the store's failpoints, so a test forces the same moments on both."""
    for _ in range(ATTEMPTS_MAX):
        conn = await asyncpg.connect(database_url)
        try:
            async with contextlib.AsyncExitStack() as stack:
                if atomic:
                    await stack.enter_async_context(conn.transaction())
                row = await conn.fetchrow(TAKE_ONE, SKU)
                await failpoints.hit("store.write.before_audit")
                await conn.execute(AUDIT_ONE, SKU, row["version"], row["on_hand"])
                await failpoints.hit("store.write.before_commit")
            return
        except BLIND:
            continue
        finally:
            if not conn.is_closed():
                await conn.close()
    pytest.fail(f"the naive write failed {ATTEMPTS_MAX} times")


async def cut_at_commit(
    proxy: FaultProxy,
    direct: asyncpg.Connection,
    write: Coroutine[Any, Any, T],
    *,
    point: str,
    reached: bool,
) -> T:
    """Run `write` and cut its connection while what commits it is in flight (the COMMIT, or a
    statement that commits by itself, sent after failpoint `point`): after the server has
    committed (`reached`: the proxy delays it, then its reply, so the test sees the commit
    while the reply is still queued), or while the proxy still holds it."""
    if reached:

        async def in_flight() -> bool:
            return await state(direct) != UNTOUCHED  # committed

        arrive = control(lambda: proxy.delay(COMMIT_DELAY_MS))
    else:

        async def in_flight() -> bool:
            return proxy.bytes_held > 0

        arrive = control(proxy.hold)
    with failpoints.armed(point, once(arrive)):
        task = asyncio.create_task(write)
        assert await eventually(in_flight, PATIENCE_S), "the commit never got under way"
        proxy.hold()  # the reply, if any, stays in the proxy
        proxy.reset()
        proxy.delay(0)
        proxy.heal()
        return await task


@pytest.mark.parametrize("kind", ["stockkeeper", "blind-retry-autocommit"])
async def test_a_cut_mid_transaction_applies_the_purchase_once(
    pg_proxy: tuple[FaultProxy, str], direct: asyncpg.Connection, kind: str
) -> None:
    """Forced: the write has taken the item and not yet written its audit entry
    (store.write.before_audit) when the connection is reset. In one transaction the server rolls
    the change back, so stockkeeper runs the write again, once, on a fresh connection. The naive
    write commits each statement on its own: the decrement stays without its audit entry, and
    its blind retry takes a second item."""
    proxy, url = pg_proxy
    async with dropping_inventory(url) as (inv, _):
        retries_before = connection_lost_retries()
        with failpoints.armed("store.write.before_audit", once(control(proxy.reset))):
            if kind == "stockkeeper":
                await inv.decrement_stock(SKU, 1, user="test", idempotency_key="k-1")
                assert connection_lost_retries() - retries_before == 1
            else:
                await blind_purchase(url, atomic=False)
    judge(kind, await state(direct), APPLIED_ONCE, TAKEN_TWICE_AUDITED_ONCE)


@pytest.mark.parametrize(
    ("kind", "reached"),
    [
        pytest.param("stockkeeper", True, id="stockkeeper-committed"),
        pytest.param("stockkeeper", False, id="stockkeeper-not-committed"),
        pytest.param("blind-retry", True, id="blind-retry-committed"),
    ],
)
async def test_a_cut_during_commit_is_unavailable_and_a_keyed_retry_applies_it_once(
    pg_proxy: tuple[FaultProxy, str], direct: asyncpg.Connection, kind: str, reached: bool
) -> None:
    """Forced: the connection is reset while the COMMIT is in flight, either after the server
    committed and before its reply got back, or before the COMMIT reached the server. The
    client sees the same reset either way, so stockkeeper answers Unavailable in both, never
    "not applied", and runs nothing again by itself; a retry with the same key replays the
    first answer if it committed and applies it if not: once either way. The naive write takes
    the reset for "nothing applied" and runs the purchase again: after a lost reply, twice. (Its
    guess is right when the COMMIT never arrived, so that case cannot break it.)"""
    proxy, url = pg_proxy
    async with dropping_inventory(url) as (inv, _):
        if kind == "stockkeeper":

            def buy() -> Coroutine[Any, Any, Receipt]:
                return inv.decrement_stock(SKU, 1, user="test", idempotency_key="k-1")

            with pytest.raises(Unavailable, match="connection lost during COMMIT, outcome unknown"):
                await cut_at_commit(proxy, direct, buy(), point=BEFORE_COMMIT, reached=reached)
            assert await state(direct) == (APPLIED_ONCE if reached else UNTOUCHED)
            assert (await buy()).replayed == reached
        else:
            naive = blind_purchase(url, atomic=True)
            await cut_at_commit(proxy, direct, naive, point=BEFORE_COMMIT, reached=reached)
    judge(kind, await state(direct), APPLIED_ONCE, APPLIED_TWICE)


# A one-line hold without a key is one statement too: it changes version and held, not on_hand.
HELD_ONCE: State = ((10, 2), [(1, 10), (2, 0)])
HELD_TWICE: State = ((10, 3), [(1, 10), (2, 0), (3, 0)])


@pytest.mark.parametrize("write", ["purchase", "hold"])
@pytest.mark.parametrize(
    ("kind", "reached"),
    [
        pytest.param("stockkeeper", True, id="stockkeeper-committed"),
        pytest.param("stockkeeper", False, id="stockkeeper-not-committed"),
        pytest.param("retry-loop", True, id="retry-loop-committed"),
    ],
)
async def test_a_cut_during_a_one_statement_purchase_is_reported_never_run_again(
    pg_proxy: tuple[FaultProxy, str],
    direct: asyncpg.Connection,
    kind: str,
    reached: bool,
    write: str,
) -> None:
    """Forced: a purchase without a key is one statement that commits by itself; the
    connection is reset while it is in flight (sent after store.write.before_change), after the
    server committed it or before the server got it. Without a key nothing can tell the two
    apart later, so stockkeeper reports Unavailable and leaves it applied once or not at all.
    The naive caller wraps the purchase in a generic retry loop that takes a lost connection
    for "try again" (stockkeeper.retry with every Unavailable transient): after a lost reply
    it buys twice."""
    proxy, url = pg_proxy
    async with dropping_inventory(url) as (inv, _):

        def buy() -> Coroutine[Any, Any, Receipt | HoldReceipt]:
            if write == "hold":
                return inv.hold([OrderLine(SKU, 1)], 60, user="test")
            return inv.decrement_stock(SKU, 1, user="test")

        if kind == "stockkeeper":
            with pytest.raises(Unavailable, match="connection lost during the write, outcome"):
                await cut_at_commit(proxy, direct, buy(), point=BEFORE_CHANGE, reached=reached)
        else:
            naive = retrying(buy, every_unavailable, RetryPolicy())
            await cut_at_commit(proxy, direct, naive, point=BEFORE_CHANGE, reached=reached)
    once_, twice = (HELD_ONCE, HELD_TWICE) if write == "hold" else (APPLIED_ONCE, APPLIED_TWICE)
    judge(kind, await state(direct), once_ if reached else UNTOUCHED, twice)
