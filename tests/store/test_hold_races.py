"""Holds under concurrency, both ways: each interleaving is forced with failpoints, run against
the product and against a naive variant of one step (kept here), and the naive one must break.

The naive variants replace one step of the product's own hold algorithm (a seam on the
transaction's steps), so everything else about them is the product's:
- a hold read without its lock: two releases, or a release and a confirm, both apply;
- the clock read before the wait for the hold's lock: a confirm lands after expires_at;
- a new hold's clock read before the wait for its item's lock: its ttl_s is cut by the wait;
- an expirer that locks nothing: two servers' expirers both expire one hold;
- an expirer whose statements each commit alone: killed mid-batch, it leaves held changed
  without its audit entry;
- a purchase that waits for the expirer: refused stock an overdue hold no longer holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from stockkeeper import failpoints
from stockkeeper.domain import Expiry, InsufficientStock, Item, OrderLine, Reason, Receipt, Write
from stockkeeper.holds import HoldClosed, HoldExpired, HoldReceipt, HoldState, HoldWrite
from stockkeeper.service import Inventory
from stockkeeper.store.expiry import expire_batch
from stockkeeper.store.hold_writes import apply_hold_write
from stockkeeper.store.postgres import PostgresStore, _PgStatements, _PgTx
from stockkeeper.store.sql_tx import HoldRow
from stockkeeper.store.writes import apply_write
from tests.holds import held
from tests.store.test_hold_writes import USER, make_overdue, recorded_state
from tests.store.test_writes import assert_audit_replays, audit_of

BLOCKED_S = 0.3  # how long a waiter must stay blocked to count as waiting for the lock
# How long a request that waits for no lock may take on a loaded machine (CI) before it counts
# as waiting: it must end while the other side still holds the lock.
FINISH_S_MAX = 5.0


# --- the naive steps --------------------------------------------------------------------------


class _HoldReadWithoutLock(_PgTx):
    async def read_hold(self, hold_id: str, *, lock: bool) -> HoldRow | None:
        return await super().read_hold(hold_id, lock=False)


class _ClockBeforeLock(_PgTx):
    """Decides expiry by the time it asked for the hold, not the time it got it."""

    _asked_at: datetime | None = None

    async def read_hold(self, hold_id: str, *, lock: bool) -> HoldRow | None:
        self._asked_at = await super().now()
        return await super().read_hold(hold_id, lock=lock)

    async def now(self) -> datetime:
        return self._asked_at if self._asked_at is not None else await super().now()


class _HoldClockBeforeItemLock(_PgTx):
    """Starts a new hold's ttl_s when it asked for the item's row, not when it got it."""

    _asked_at: datetime | None = None

    async def set_aside(self, sku: str, quantity: int) -> Item | None:
        self._asked_at = await super().now()
        return await super().set_aside(sku, quantity)

    async def now(self) -> datetime:
        return self._asked_at if self._asked_at is not None else await super().now()


class _ExpirerWithoutLocks(_PgTx):
    hold_lock_clause = skip_locked_clause = ""


class _WaitsForTheExpirer(_PgTx):
    async def any_due(self, skus: list[str], now: datetime) -> bool:
        return False


Tx = type[_PgTx]


class NaiveHolds(PostgresStore):
    """The product's store with one transaction step replaced by `tx`; `autocommit` runs the
    expirer's statements outside a transaction."""

    tx: Tx = _PgTx
    autocommit = False

    def _naive(self, conn: asyncpg.Connection) -> _PgTx:
        return self.tx(_PgStatements(conn))

    async def write_hold(self, op: HoldWrite) -> HoldReceipt:
        return await self._in_tx(lambda conn: apply_hold_write(self._naive(conn), op))

    async def write(self, write: Write) -> Receipt:
        return await self._in_tx(lambda conn: apply_write(self._naive(conn), write))

    async def expire_holds(self, limit: int) -> list[Expiry]:
        run = self._run if self.autocommit else self._in_tx
        return await run(lambda conn: expire_batch(self._naive(conn), limit))


async def open_inventory(url: str, tx: Tx | None = None, autocommit: bool = False) -> Inventory:
    if tx is None:
        return await Inventory.open(url)
    store = await NaiveHolds.connect(url)
    assert isinstance(store, NaiveHolds)
    store.tx, store.autocommit = tx, autocommit
    await store.migrate()
    return Inventory(store)


@pytest.fixture
async def inventories(postgres_url: str) -> AsyncIterator[Callable[..., Awaitable[Inventory]]]:
    """Inventories on one PostgreSQL database, each with its own connections: servers."""
    opened: list[Inventory] = []

    async def make(tx: Tx | None = None, autocommit: bool = False) -> Inventory:
        opened.append(await open_inventory(postgres_url, tx, autocommit))
        return opened[-1]

    yield make
    for inventory in opened:
        await inventory.close()


async def stock_and_hold(inventory: Inventory, *quantities: int) -> list[str]:
    """A: 10 on hand, and one hold of each quantity on it."""
    await inventory.set_stock("A", 10, user="admin")
    holds = []
    for quantity in quantities:
        holds.append((await inventory.hold([OrderLine("A", quantity)], 60, user=USER)).hold.id)
    return holds


async def still_blocked(task: asyncio.Task[Any]) -> bool:
    await asyncio.sleep(BLOCKED_S)
    return not task.done()


async def waits_for_a_row_lock(database_url: str) -> None:
    """Until a session of this database waits for a lock (only the test's own run here)."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline_s = asyncio.get_running_loop().time() + FINISH_S_MAX
        while not await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ):
            assert asyncio.get_running_loop().time() < deadline_s, "nobody waited for a lock"
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def finishes_while_held(task: asyncio.Task[Any]) -> bool:
    """Whether `task` ends while the other side still holds its lock: then it did not wait for
    it, however slow the machine (a fixed short wait made this flaky under CI's load)."""
    done, _ = await asyncio.wait({task}, timeout=FINISH_S_MAX)
    return bool(done)


# --- two ends of one hold --------------------------------------------------------------------

END = {
    "release": lambda inv, hold_id: inv.release(hold_id, user=USER),
    "confirm": lambda inv, hold_id: inv.confirm(hold_id, user=USER),
}


@pytest.mark.parametrize("naive", [False, True], ids=["locked", "naive-unlocked"])
@pytest.mark.parametrize("second", END)
async def test_a_hold_ends_once_when_a_release_races_another_end(
    inventories: Callable[..., Awaitable[Inventory]], naive: bool, second: str
) -> None:
    """A release holds the hold's lock at a failpoint; a second release, or a confirm, of the
    same hold on another server must wait, then find it closed. Without the lock both apply
    and `held` drifts from the holds (here: the other hold's 3 units are no longer held)."""
    first_server = await inventories(_HoldReadWithoutLock if naive else None)
    second_server = await inventories(_HoldReadWithoutLock if naive else None)
    target, _other = await stock_and_hold(first_server, 3, 3)
    async with held("store.hold.locked") as hold:
        releasing = asyncio.create_task(first_server.release(target, user=USER))
        await hold.reached()
        ending = asyncio.create_task(END[second](second_server, target))
        blocked = not await finishes_while_held(ending) if naive else await still_blocked(ending)
        hold.release()
        await releasing
        outcome = await asyncio.gather(ending, return_exceptions=True)
    drift = await first_server.held_drift()
    if naive:
        assert not blocked and not isinstance(outcome[0], Exception), outcome
        assert drift != [], "the naive design must let both ends apply"
        return
    assert blocked, "the second end must wait for the hold's lock"
    assert isinstance(outcome[0], HoldClosed) and outcome[0].state is HoldState.RELEASED
    assert drift == []
    assert await first_server.get_stock("A") == Item("A", 10, 4, 3)
    await assert_audit_replays(first_server, "A")


@pytest.mark.parametrize(
    ("naive", "key"),
    [(False, None), (False, "k"), (True, "k")],
    ids=["clock-after-lock", "clock-after-lock-keyed", "naive-clock-before"],
)
async def test_a_new_holds_ttl_runs_from_when_it_won_the_items_lock(
    inventories: Callable[..., Awaitable[Inventory]],
    postgres_url: str,
    naive: bool,
    key: str | None,
) -> None:
    """A release holds A's row at its last failpoint; a new hold of A on another server waits
    for the row. Its ttl_s must start once it has the row: a shopper's hold is never shorter
    than asked for because other checkouts queued on the item. Unkeyed, the product's hold is
    one statement; keyed, a transaction (the naive variant's seam)."""
    first_server = await inventories()
    second_server = await inventories(_HoldClockBeforeItemLock if naive else None)
    (target,) = await stock_and_hold(first_server, 3)
    async with held("store.hold.before_commit") as locked:
        releasing = asyncio.create_task(first_server.release(target, user=USER))
        await locked.reached()
        holding = asyncio.create_task(
            second_server.hold([OrderLine("A", 2)], 60, user=USER, idempotency_key=key)
        )
        await waits_for_a_row_lock(postgres_url)  # so its wait is at least the next BLOCKED_S
        blocked = await still_blocked(holding)
        row_free_at = datetime.now(UTC)
        locked.release()
        await releasing
        hold = (await holding).hold
    assert blocked, "the new hold must wait for A's row"
    started_late_s = (row_free_at - (hold.expires_at - timedelta(seconds=60))).total_seconds()
    if naive:
        assert started_late_s >= BLOCKED_S * 0.9, "the naive clock starts before the wait"
        return
    assert started_late_s <= 0.05, f"ttl_s started {started_late_s:.3f} s before the row was won"
    await assert_audit_replays(first_server, "A")


# --- confirm racing expiry --------------------------------------------------------------------


@pytest.mark.parametrize("naive", [False, True], ids=["clock-after-lock", "naive-clock-before"])
async def test_a_confirm_that_waited_past_expires_at_for_the_lock_is_hold_expired(
    inventories: Callable[..., Awaitable[Inventory]], naive: bool
) -> None:
    """A failing confirm (a line over its quantity) holds the lock while the hold's 1 s runs
    out; the confirm waiting behind it must decide by the clock once it has the lock."""
    server = await inventories(_ClockBeforeLock if naive else None)
    await server.set_stock("A", 10, user="admin")
    hold = (await server.hold([OrderLine("A", 2)], 1, user=USER)).hold
    async with held("store.hold.locked") as locked:
        failing = asyncio.create_task(
            server.confirm(hold.id, [{"sku": "A", "quantity": 3}], user=USER)
        )
        await locked.reached()
        confirming = asyncio.create_task(server.confirm(hold.id, user=USER))
        past_due = hold.expires_at + timedelta(milliseconds=50) - datetime.now(UTC)
        await asyncio.sleep(max(0.0, past_due.total_seconds()))
        locked.release()  # so the waiting confirm gets the lock only after expires_at
        outcomes = await asyncio.gather(failing, confirming, return_exceptions=True)
    if naive:
        assert isinstance(outcomes[1], HoldReceipt), "the naive design confirms after expiry"
        return
    assert isinstance(outcomes[1], HoldExpired), outcomes
    assert await server.get_stock("A") == Item("A", 10, 2, 2)
    assert await server.expire_holds() == 1
    await assert_audit_replays(server, "A")


@pytest.mark.parametrize("naive", [False, True], ids=["skip-locked", "naive-unlocked"])
async def test_two_servers_expirers_record_one_expiry_of_a_hold(
    inventories: Callable[..., Awaitable[Inventory]], postgres_url: str, naive: bool
) -> None:
    """One server's expirer stops mid-batch; another's runs meanwhile. It must skip the hold
    the first has locked (at once, without waiting), not expire it a second time."""
    tx = _ExpirerWithoutLocks if naive else None
    first, second = await inventories(tx), await inventories(tx)
    overdue, _active = await stock_and_hold(first, 3, 5)
    await make_overdue(postgres_url, overdue)
    async with held("store.expire.before_audit") as stopped:
        expiring = asyncio.create_task(first.expire_holds())
        await stopped.reached()
        other = asyncio.create_task(second.expire_holds())
        if naive:  # it read the hold as due, unlocked, and waits for the rows the first holds
            await waits_for_a_row_lock(postgres_url)
        skipped_at_once = not naive and await finishes_while_held(other) and other.result() == 0
        stopped.release()
        outcomes = await asyncio.gather(expiring, other)
    entries = [e for e in await audit_of(first, "A") if e.reason is Reason.EXPIRE]
    if naive:
        assert len(entries) == 2, "the naive design expires one hold twice"
        assert await first.held_drift() != []
        return
    assert skipped_at_once and outcomes == [1, 0]
    assert len(entries) == 1
    assert await first.get_stock("A") == Item("A", 10, 4, 5)
    await assert_audit_replays(first, "A")
    assert await first.held_drift() == []


@pytest.mark.parametrize("naive", [False, True], ids=["one-transaction", "naive-autocommit"])
async def test_an_expirer_killed_mid_batch_leaves_every_hold_as_it_was(
    inventories: Callable[..., Awaitable[Inventory]], postgres_url: str, naive: bool
) -> None:
    server = await inventories(_PgTx if naive else None, autocommit=naive)
    hold_ids = await stock_and_hold(server, 2, 3)
    for hold_id in hold_ids:
        await make_overdue(postgres_url, hold_id)
    hits = 0

    async def killed_at_the_second() -> None:
        nonlocal hits
        hits += 1
        if hits == 2:
            raise failpoints.FailpointError("killed mid-batch")

    with (
        failpoints.armed("store.expire.before_audit", killed_at_the_second),
        pytest.raises(failpoints.FailpointError),
    ):
        await server.expire_holds()
    if naive:
        with pytest.raises(AssertionError):
            await assert_audit_replays(server, "A")
        return
    assert [await recorded_state(postgres_url, h) for h in hold_ids] == ["active", "active"]
    assert await server.get_stock("A") == Item("A", 10, 3, 5)
    assert await server.expire_holds() == 2
    assert await server.get_stock("A") == Item("A", 10, 5, 0)
    await assert_audit_replays(server, "A")
    assert await server.held_drift() == []


# --- a purchase that needs an overdue hold's stock -------------------------------------------


@pytest.mark.parametrize("naive", [False, True], ids=["expires-in-request", "naive-waits"])
@pytest.mark.parametrize("key", [None, "k-1"], ids=["one-statement", "keyed"])
async def test_a_purchase_needing_an_overdue_holds_stock_is_sold_it(
    inventories: Callable[..., Awaitable[Inventory]],
    postgres_url: str,
    naive: bool,
    key: str | None,
) -> None:
    server = await inventories(_WaitsForTheExpirer if naive else None)
    (hold_id,) = await stock_and_hold(server, 8)
    await make_overdue(postgres_url, hold_id)
    buying = server.decrement_stock("A", 5, user=USER, idempotency_key=key)
    if naive:
        with pytest.raises(InsufficientStock):
            await buying
        return
    change = (await buying).change
    assert (change.on_hand, change.held) == (5, 0)
    assert await recorded_state(postgres_url, hold_id) == "expired"
    assert [e.reason for e in await audit_of(server, "A")] == [
        Reason.SET,
        Reason.HOLD,
        Reason.EXPIRE,
        Reason.PURCHASE,
    ]
    await assert_audit_replays(server, "A")
