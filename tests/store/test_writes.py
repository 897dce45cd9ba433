"""The shared write algorithm, on both backends, through the library API (`Inventory`).

Checks the contract's invariants: versions grow by exactly 1 per change, one audit entry per
changed line in the same transaction, no oversell under concurrency, all-or-nothing orders,
idempotent replays, append-only audit, hashed tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, closing
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from stockkeeper import failpoints, metrics
from stockkeeper.domain import (
    AuditEntry,
    Change,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidRequest,
    Item,
    Principal,
    Reason,
    Receipt,
    Role,
    Shortage,
    StockkeeperError,
    TokenNameTaken,
    Unauthenticated,
    Unavailable,
    UnknownSku,
)
from stockkeeper.failpoints import FailpointError
from stockkeeper.retry import RetryPolicy, retrying
from stockkeeper.service import Inventory
from tests.conftest import direct

USER = "clerk-1"
OTHER_USER = "clerk-2"
STOCK = {"A": 10, "B": 10}
RAW_ERRORS = (asyncpg.PostgresError, sqlite3.DatabaseError)

Write = Callable[[Inventory, str | None], Awaitable[Receipt]]


# --- helpers --------------------------------------------------------------------------------


@pytest.fixture
async def stocked(inventory: Inventory) -> Inventory:
    """A=10 and B=10, each at version 1 with its one `set` audit entry."""
    for sku, on_hand in STOCK.items():
        assert (await inventory.set_stock(sku, on_hand, user="admin")).created
    return inventory


async def audit_of(inventory: Inventory, sku: str) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    after = 0
    while True:
        page = await inventory.audit(sku, after_version=after, limit=7)
        entries.extend(page.entries)
        if page.next_after_version is None:
            return entries
        after = page.next_after_version


async def state(inventory: Inventory, skus: tuple[str, ...] = tuple(STOCK)) -> dict[str, Any]:
    """Everything a failed write must leave alone: each item and its whole audit log."""
    found: dict[str, Any] = {}
    for sku in skus:
        try:
            found[sku] = (await inventory.get_stock(sku), await audit_of(inventory, sku))
        except UnknownSku:
            found[sku] = None
    return found


async def assert_audit_replays(inventory: Inventory, sku: str) -> list[AuditEntry]:
    """The audit log of `sku` is gap-free 1..n and its deltas reproduce on_hand and held at
    each version."""
    entries = await audit_of(inventory, sku)
    assert [e.version for e in entries] == list(range(1, len(entries) + 1))
    on_hand = held = 0
    for e in entries:
        on_hand += e.delta
        held += e.held_delta
        assert e.sku == sku
        assert e.on_hand == on_hand >= 0, f"on_hand's replay diverges at version {e.version}"
        assert e.held == held, f"held's replay diverges at version {e.version}"
        assert 0 <= held <= on_hand
        assert e.at.utcoffset() == timedelta(0)
    assert await inventory.get_stock(sku) == Item(sku, on_hand, len(entries), held)
    assert [e.id for e in entries] == sorted(e.id for e in entries)
    return entries


async def raw(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run SQL on a connection of our own, around the service (as an operator could)."""
    if database_url.startswith("postgresql://"):
        conn = await asyncpg.connect(direct(database_url))
        try:
            return [tuple(row.values()) for row in await conn.fetch(sql)]
        finally:
            await conn.close()
    with closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as conn:
        conn.isolation_level = None
        return conn.execute(sql).fetchall()


def purchase(quantity: int = 2, **kwargs: Any) -> Write:
    return lambda inv, key: inv.decrement_stock(
        "A", quantity, user=USER, idempotency_key=key, **kwargs
    )


def restock(quantity: int = 5, **kwargs: Any) -> Write:
    return lambda inv, key: inv.increment_stock(
        "A", quantity, user=USER, idempotency_key=key, **kwargs
    )


def order(*lines: tuple[str, int], **kwargs: Any) -> Write:
    body = [{"sku": sku, "quantity": q} for sku, q in lines]
    return lambda inv, key: inv.place_order(body, user=USER, idempotency_key=key, **kwargs)


def set_to(on_hand: int, sku: str = "A") -> Write:
    return lambda inv, key: inv.set_stock(sku, on_hand, user=USER)


# --- versions and audit entries -------------------------------------------------------------


async def test_set_creates_at_version_1_then_every_change_adds_exactly_1(
    inventory: Inventory,
) -> None:
    created = await inventory.set_stock("A-1", 5, user="admin")
    assert created.created and created.change == Change("A-1", 5, 5, 1, created.change.audit_id)
    steps = [
        (inventory.decrement_stock("A-1", 2, user=USER), -2, 3),
        (inventory.increment_stock("A-1", 10, user=USER), 10, 13),
        (inventory.place_order([{"sku": "A-1", "quantity": 3}], user=USER), -3, 10),
        (inventory.set_stock("A-1", 4, user="admin"), -6, 4),
        (inventory.set_stock("A-1", 4, user="admin"), 0, 4),
        (inventory.set_stock("A-1", 0, user="admin"), -4, 0),
    ]
    for version, (write, delta, on_hand) in enumerate(steps, start=2):
        receipt = await write
        assert not receipt.created and not receipt.replayed
        assert (receipt.change.delta, receipt.change.on_hand) == (delta, on_hand)
        assert receipt.change.version == version
        assert await inventory.get_stock("A-1") == Item("A-1", on_hand, version)
    entries = await assert_audit_replays(inventory, "A-1")
    assert [e.reason for e in entries] == [
        Reason.SET,
        Reason.PURCHASE,
        Reason.RESTOCK,
        Reason.ORDER,
        Reason.SET,
        Reason.SET,
        Reason.SET,
    ]


@dataclass(frozen=True)
class Case:
    write: Write
    reason: Reason
    changes: tuple[tuple[str, int, int], ...]  # (sku, delta, on_hand) per line, request order
    on_behalf_of: str | None = None
    key: str | None = None


AUDITED = {
    "purchase": Case(
        purchase(3, on_behalf_of="shopper-7"), Reason.PURCHASE, (("A", -3, 7),), "shopper-7", "k-1"
    ),
    "purchase-plain": Case(purchase(10), Reason.PURCHASE, (("A", -10, 0),)),
    "restock": Case(
        restock(5, on_behalf_of="supplier"), Reason.RESTOCK, (("A", 5, 15),), "supplier", "k 2"
    ),
    "order": Case(
        order(("B", 4), ("A", 1), on_behalf_of="shopper-9"),
        Reason.ORDER,
        (("B", -4, 6), ("A", -1, 9)),
        "shopper-9",
        "k-3",
    ),
    "order-one-line": Case(order(("A", 10)), Reason.ORDER, (("A", -10, 0),), None, "k-4"),
    "set-down": Case(set_to(4), Reason.SET, (("A", -6, 4),)),
    "set-up": Case(set_to(25), Reason.SET, (("A", 15, 25),)),
}


@pytest.mark.parametrize("case", AUDITED.values(), ids=AUDITED.keys())
async def test_each_write_appends_one_audit_entry_per_line(stocked: Inventory, case: Case) -> None:
    before = {sku: len(await audit_of(stocked, sku)) for sku in STOCK}
    receipt = await case.write(stocked, case.key)
    assert not receipt.replayed
    assert [(c.sku, c.delta, c.on_hand, c.version) for c in receipt.changes] == [
        (sku, delta, on_hand, 2) for sku, delta, on_hand in case.changes
    ]
    for change in receipt.changes:
        entries = await assert_audit_replays(stocked, change.sku)
        assert len(entries) == before[change.sku] + 1, "exactly one entry per changed line"
        assert entries[-1] == AuditEntry(
            id=change.audit_id,
            sku=change.sku,
            version=change.version,
            delta=change.delta,
            on_hand=change.on_hand,
            user=USER,
            on_behalf_of=case.on_behalf_of,
            reason=case.reason,
            idempotency_key=case.key,
            at=entries[-1].at,
        )
        assert entries[-1].at >= entries[0].at
    untouched = set(STOCK) - {c.sku for c in receipt.changes}
    for sku in untouched:
        assert len(await audit_of(stocked, sku)) == before[sku]


async def test_a_long_history_replays_exactly(stocked: Inventory) -> None:
    for i in range(1, 16):
        await stocked.increment_stock("A", i, user=USER)
        await stocked.decrement_stock("A", i // 2 + 1, user=USER)
        if i % 5 == 0:
            await order(("A", 1), ("B", 1))(stocked, None)
    entries = await assert_audit_replays(stocked, "A")
    assert len(entries) == 1 + 30 + 3
    await assert_audit_replays(stocked, "B")


# --- failures change nothing ----------------------------------------------------------------


def short(*shortages: tuple[str, int, int], is_order: bool = True) -> InsufficientStock:
    return InsufficientStock([Shortage(*s) for s in shortages], is_order=is_order)


def purchase_of(sku: str) -> Write:
    return lambda inv, key: inv.decrement_stock(sku, 1, user=USER, idempotency_key=key)


def restock_of(sku: str) -> Write:
    return lambda inv, key: inv.increment_stock(sku, 1, user=USER, idempotency_key=key)


# write → the error it must raise (compared by type and details)
FAILING = {
    "purchase-short": (purchase(11), short(("A", 11, 10), is_order=False)),
    "purchase-unknown": (purchase_of("NOPE"), UnknownSku("NOPE")),
    "restock-unknown": (restock_of("NOPE"), UnknownSku("NOPE")),
    "order-unknown-line": (order(("A", 1), ("NOPE", 1)), UnknownSku("NOPE")),
    "order-one-line-unknown": (order(("NOPE", 1)), UnknownSku("NOPE")),
    "order-one-short-line": (order(("A", 1), ("B", 11)), short(("B", 11, 10))),
    "order-every-line-short": (order(("B", 12), ("A", 11)), short(("B", 12, 10), ("A", 11, 10))),
    "order-single-line-short": (order(("A", 11)), short(("A", 11, 10))),
}


@pytest.mark.parametrize(("write", "expected"), FAILING.values(), ids=FAILING.keys())
async def test_a_failed_write_changes_nothing_and_keeps_its_key_free(
    stocked: Inventory, write: Write, expected: StockkeeperError
) -> None:
    before = await state(stocked, (*STOCK, "NOPE"))
    with pytest.raises(type(expected)) as raised:
        await write(stocked, "key-1")
    assert raised.value.details() == expected.details()
    assert await state(stocked, (*STOCK, "NOPE")) == before
    # The key was not consumed: another request may use it and is applied, not refused.
    receipt = await purchase(1)(stocked, "key-1")
    assert not receipt.replayed and receipt.change.on_hand == 9


async def test_a_short_purchase_succeeds_once_restocked_with_the_same_key(
    stocked: Inventory,
) -> None:
    with pytest.raises(InsufficientStock):
        await purchase(12)(stocked, "retry-me")
    await stocked.increment_stock("A", 2, user=USER)
    receipt = await purchase(12)(stocked, "retry-me")
    assert not receipt.replayed and receipt.change.on_hand == 0


ATOMIC_WRITES = {
    "purchase": purchase(2),
    "restock": restock(3),
    "order": order(("A", 1), ("B", 2)),
    "order-one-line": order(("B", 2)),
    "set": set_to(99),
    "set-new-item": set_to(5, sku="NEW"),
}


@pytest.mark.parametrize(
    "point", sorted(p for p in failpoints.POINTS if p.startswith("store.write."))
)
@pytest.mark.parametrize("write", ATOMIC_WRITES.values(), ids=ATOMIC_WRITES.keys())
async def test_a_crash_inside_the_transaction_leaves_no_trace(
    stocked: Inventory, database_url: str, write: Write, point: str
) -> None:
    before = await state(stocked, (*STOCK, "NEW"))
    with failpoints.armed(point, "error"), pytest.raises(FailpointError):
        await write(stocked, "crash-key")
    assert await state(stocked, (*STOCK, "NEW")) == before
    assert await raw(database_url, "SELECT * FROM idempotency_keys") == []
    # Neither was the idempotency key kept: the same request now applies, as new.
    receipt = await write(stocked, "crash-key")
    assert not receipt.replayed
    for change in receipt.changes:
        await assert_audit_replays(stocked, change.sku)


# --- idempotency ----------------------------------------------------------------------------

REPLAYABLE = {
    "purchase": purchase(2, on_behalf_of="shopper-1"),
    "restock": restock(7),
    "order": order(("B", 3), ("A", 2)),
}


@pytest.mark.parametrize("write", REPLAYABLE.values(), ids=REPLAYABLE.keys())
async def test_a_replay_returns_the_original_answer_and_writes_nothing(
    stocked: Inventory, write: Write
) -> None:
    first = await write(stocked, "idem-1")
    await stocked.increment_stock("A", 1, user=USER)  # later changes do not alter the answer
    after_first = await state(stocked)
    for _ in range(3):
        again = await write(stocked, "idem-1")
        assert again.replayed and again.changes == first.changes
    assert await state(stocked) == after_first


MISUSES = {
    "other-quantity": purchase(3),
    "other-on-behalf-of": purchase(2, on_behalf_of="shopper-2"),
    "other-kind": restock(2),
    "as-an-order": order(("A", 2)),
    "other-order": order(("A", 2), ("B", 1)),
}


@pytest.mark.parametrize("misuse", MISUSES.values(), ids=MISUSES.keys())
async def test_the_same_key_with_another_request_is_refused(
    stocked: Inventory, misuse: Write
) -> None:
    await purchase(2)(stocked, "idem-2")
    before = await state(stocked)
    with pytest.raises(IdempotencyKeyReused) as raised:
        await misuse(stocked, "idem-2")
    assert raised.value.code == "idempotency_key_reused"
    assert await state(stocked) == before


async def test_keys_belong_to_their_user(stocked: Inventory) -> None:
    mine = await stocked.decrement_stock("A", 2, user=USER, idempotency_key="shared")
    theirs = await stocked.decrement_stock("A", 3, user=OTHER_USER, idempotency_key="shared")
    assert not mine.replayed and not theirs.replayed
    assert theirs.change.version == mine.change.version + 1
    assert (await stocked.get_stock("A")).on_hand == 5
    entries = await audit_of(stocked, "A")
    assert [(e.user, e.idempotency_key) for e in entries[1:]] == [
        (USER, "shared"),
        (OTHER_USER, "shared"),
    ]


@pytest.mark.parametrize("copies", [2, 8])
async def test_concurrent_identical_requests_apply_once(stocked: Inventory, copies: int) -> None:
    # Hold the winner's transaction open a moment, so the copies really overlap with it.
    with failpoints.armed("store.write.before_commit", "sleep(50)"):
        receipts = await asyncio.gather(
            *(
                stocked.decrement_stock("A", 3, user=USER, idempotency_key="twin")
                for _ in range(copies)
            )
        )
    assert sorted(r.replayed for r in receipts) == [False] + [True] * (copies - 1)
    assert {r.changes for r in receipts} == {receipts[0].changes}
    assert await stocked.get_stock("A") == Item("A", 7, 2)
    entries = await assert_audit_replays(stocked, "A")
    assert [e.reason for e in entries] == [Reason.SET, Reason.PURCHASE]


# --- concurrency ----------------------------------------------------------------------------


@pytest.mark.parametrize("instances", [1, 2])
async def test_concurrent_purchases_never_oversell(
    inventory: Inventory, database_url: str, instances: int
) -> None:
    """200 buyers for 50 items, through one Inventory or two (as two processes would)."""
    await inventory.set_stock("HOT", 50, user="admin")
    async with AsyncExitStack() as stack:
        shops = [inventory] + [
            await stack.enter_async_context(await Inventory.open(database_url))
            for _ in range(instances - 1)
        ]
        results = await asyncio.gather(
            *(shops[i % instances].decrement_stock("HOT", 1, user=USER) for i in range(200)),
            return_exceptions=True,
        )
    sold = [r for r in results if isinstance(r, Receipt)]
    refused = [r for r in results if isinstance(r, InsufficientStock)]
    assert len(sold) == 50 and len(refused) == 150, [
        r for r in results if isinstance(r, Exception) and not isinstance(r, InsufficientStock)
    ]
    assert sorted(r.change.on_hand for r in sold) == list(range(50))
    assert sorted(r.change.version for r in sold) == list(range(2, 52))
    assert all(e.available == 0 and e.requested == 1 for e in refused)
    assert await inventory.get_stock("HOT") == Item("HOT", 0, 51)
    entries = await assert_audit_replays(inventory, "HOT")
    assert [e.reason for e in entries].count(Reason.PURCHASE) == 50


async def test_concurrent_orders_over_shared_skus_neither_deadlock_nor_oversell(
    stocked: Inventory,
) -> None:
    shapes = [[("A", 1), ("B", 1)], [("B", 1), ("A", 1)], [("A", 2)], [("B", 2)]]
    results = await asyncio.gather(
        *(order(*shapes[i % len(shapes)])(stocked, None) for i in range(40)),
        return_exceptions=True,
    )
    assert all(isinstance(r, Receipt | InsufficientStock) for r in results), results
    for sku in STOCK:
        entries = await assert_audit_replays(stocked, sku)
        taken = -sum(e.delta for e in entries if e.reason is Reason.ORDER)
        assert taken <= STOCK[sku] and entries[-1].on_hand == STOCK[sku] - taken


# --- the database itself guards the invariants ----------------------------------------------


REWRITE_FIRST_ENTRY = (
    "INSERT INTO audit (sku, version, delta, on_hand, user_name, reason, at) "
    "SELECT sku, version, 0, on_hand, 'mallory', reason, at FROM audit WHERE version = 1 "
)
BOTH = ("sqlite", "postgres")
# id → (statement, the backends it is SQL of)
TAMPERING = {
    "update": ("UPDATE audit SET delta = 0", BOTH),
    "update-one": ("UPDATE audit SET user_name = 'mallory' WHERE version = 2", BOTH),
    "delete": ("DELETE FROM audit", BOTH),
    "delete-one": ("DELETE FROM audit WHERE version = 1", BOTH),
    "truncate": ("TRUNCATE audit", ("postgres",)),
    "upsert": (
        REWRITE_FIRST_ENTRY + "ON CONFLICT (sku, version) DO UPDATE SET user_name = 'mallory'",
        BOTH,
    ),
    # REPLACE deletes the row it conflicts with; SQLite fires no DELETE trigger for that
    # unless recursive_triggers is on, which a raw connection does not turn on.
    "insert-or-replace": ("INSERT OR REPLACE" + REWRITE_FIRST_ENTRY[6:], ("sqlite",)),
    "replace": ("REPLACE" + REWRITE_FIRST_ENTRY[6:], ("sqlite",)),
}


@pytest.mark.parametrize(("sql", "backends"), TAMPERING.values(), ids=TAMPERING.keys())
async def test_the_audit_log_is_append_only(
    stocked: Inventory, database_url: str, sql: str, backends: tuple[str, ...]
) -> None:
    if not database_url.startswith(backends):
        pytest.skip("not SQL of this backend")
    await purchase(1)(stocked, None)
    before = await state(stocked)
    with pytest.raises(RAW_ERRORS, match="append-only"):
        await raw(database_url, sql)
    assert await state(stocked) == before


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE items SET on_hand = -1 WHERE sku = 'A'",
        "UPDATE items SET on_hand = on_hand - 11",
        "INSERT INTO items (sku, on_hand, version) VALUES ('NEG', -5, 1)",
    ],
)
async def test_the_database_refuses_negative_stock(
    stocked: Inventory, database_url: str, sql: str
) -> None:
    before = await state(stocked)
    # Either CHECK refuses it: on_hand below 0 is also below held (0).
    with pytest.raises(RAW_ERRORS, match=r"on_hand_never_negative|held_within_on_hand|CHECK"):
        await raw(database_url, sql)
    assert await state(stocked) == before


# --- retries --------------------------------------------------------------------------------


class Transient(Exception):
    pass


@dataclass
class FlakyOp:
    failures: int
    error: Exception
    calls: int = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def only_transient(error: BaseException) -> str | None:
    return "busy" if isinstance(error, Transient) else None


NO_WAIT = RetryPolicy(attempts_max=4, backoff_ms_base=0.0, backoff_ms_max=0.0)


@pytest.mark.parametrize("failures", [0, 1, 3])
async def test_retrying_recovers_from_transient_faults_within_its_attempts(
    failures: int,
) -> None:
    op = FlakyOp(failures, Transient("deadlock"))
    assert await retrying(op, only_transient, NO_WAIT) == "done"
    assert op.calls == failures + 1


async def test_retrying_gives_up_after_attempts_max_as_unavailable() -> None:
    fault = Transient("deadlock")
    op = FlakyOp(100, fault)
    with pytest.raises(Unavailable, match="4 attempts") as raised:
        await retrying(op, only_transient, NO_WAIT)
    assert op.calls == NO_WAIT.attempts_max
    assert raised.value.__cause__ is fault and raised.value.code == "unavailable"


def busy_retries() -> float:
    return metrics.TRANSACTION_RETRIES.labels(reason="busy")._value.get()


@pytest.mark.parametrize("failures", [1, 100])
async def test_the_retry_metric_counts_only_attempts_run_again(failures: int) -> None:
    before = busy_retries()
    with contextlib.suppress(Unavailable):
        await retrying(FlakyOp(failures, Transient("busy")), only_transient, NO_WAIT)
    assert busy_retries() - before == min(failures, NO_WAIT.attempts_max - 1)


@pytest.mark.parametrize(
    "error", [ValueError("bad"), UnknownSku("A"), FailpointError("crash"), Unavailable("down")]
)
async def test_retrying_does_not_retry_other_faults(error: Exception) -> None:
    op = FlakyOp(100, error)
    with pytest.raises(type(error)) as raised:
        await retrying(op, only_transient, NO_WAIT)
    assert raised.value is error and op.calls == 1


def test_backoff_is_jittered_below_a_growing_capped_ceiling() -> None:
    policy = RetryPolicy(attempts_max=10, backoff_ms_base=2.0, backoff_ms_max=200.0)
    for attempt in range(10):
        ceiling_s = min(200.0, 2.0 * 2**attempt) / 1000
        samples = [policy.backoff_s(attempt) for _ in range(50)]
        assert all(0 <= s <= ceiling_s for s in samples)
        assert len(set(samples)) > 1


# --- tokens ---------------------------------------------------------------------------------


async def test_a_created_token_authenticates_as_its_principal(
    inventory: Inventory, database_url: str
) -> None:
    tokens = {role: await inventory.create_token(f"{role.name.lower()}-1", role) for role in Role}
    assert len(set(tokens.values())) == len(Role)
    for role, token in tokens.items():
        assert token.startswith("sk_")
        assert await inventory.authenticate(token) == Principal(f"{role.name.lower()}-1", role)
    # Another Inventory on the same database (another process, say) knows the tokens too.
    async with await Inventory.open(database_url) as other:
        assert await other.authenticate(tokens[Role.CLERK]) == Principal("clerk-1", Role.CLERK)


@pytest.mark.parametrize("token", ["", "sk_", "sk_unknown", "Bearer sk_x", "x" * 300])
async def test_an_unknown_token_is_unauthenticated(inventory: Inventory, token: str) -> None:
    await inventory.create_token("someone", Role.ADMIN)
    for _ in range(2):  # the second time, the snapshot was just refreshed: still refused
        with pytest.raises(Unauthenticated) as raised:
            await inventory.authenticate(token)
        assert raised.value.code == "unauthenticated"


async def test_a_token_of_another_database_is_unknown(inventory: Inventory, tmp_path: Path) -> None:
    async with await Inventory.open(f"sqlite:///{tmp_path / 'other.db'}") as other:
        foreign = await other.create_token("alice", Role.ADMIN)
    with pytest.raises(Unauthenticated):
        await inventory.authenticate(foreign)


async def test_the_first_admin_token_is_made_once_on_an_empty_database(
    inventory: Inventory,
) -> None:
    first = await inventory.create_first_admin_token()
    assert first is not None and first.startswith("sk_")
    assert await inventory.authenticate(first) == Principal("admin", Role.ADMIN)
    assert await inventory.create_first_admin_token() is None
    assert await inventory.authenticate(first) == Principal("admin", Role.ADMIN)


async def test_no_first_admin_token_once_any_token_exists(inventory: Inventory) -> None:
    await inventory.create_token("reader-1", Role.READER)
    assert await inventory.create_first_admin_token() is None


async def test_concurrent_first_starts_make_one_admin_token(inventory: Inventory) -> None:
    made = await asyncio.gather(*(inventory.create_first_admin_token() for _ in range(5)))
    assert len([t for t in made if t is not None]) == 1


async def test_tokens_are_stored_hashed(inventory: Inventory, database_url: str) -> None:
    first = await inventory.create_first_admin_token()
    assert first is not None
    tokens = [first, await inventory.create_token("alice", Role.CLERK)]
    rows = await raw(database_url, "SELECT * FROM tokens")
    assert len(rows) == len(tokens)
    values = [bytes(v) if isinstance(v, memoryview) else v for row in rows for v in row]
    for token in tokens:
        secret = token.removeprefix("sk_")
        assert secret not in repr(values)
        assert not any(secret.encode() in v for v in values if isinstance(v, bytes))
        assert not any(secret in v for v in values if isinstance(v, str))


async def test_concurrent_creates_of_one_name_from_two_processes_make_one_live_token(
    inventory: Inventory, database_url: str
) -> None:
    """The store checks the name in the inserting transaction: two servers (here two
    Inventories, each its own pool) racing to make "till" leave one live token of that name."""
    async with await Inventory.open(database_url) as other:
        outcomes = await asyncio.gather(
            *((inventory if n % 2 else other).create_token("till", Role.CLERK) for n in range(8)),
            return_exceptions=True,
        )
    made = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if isinstance(o, TokenNameTaken)]
    assert (len(made), len(refused)) == (1, 7), outcomes
    (live,) = [t for t in await inventory.list_tokens() if t.name == "till"]
    assert {error.token_id for error in refused} == {live.id}
    assert refused[0].code == "invalid_request" and refused[0].errors[0].field == "name"
    assert await inventory.authenticate(made[0]) == Principal("till", Role.CLERK)


@pytest.mark.parametrize("name", ["", "é", "x" * 256, None])
async def test_a_token_needs_a_printable_name(inventory: Inventory, name: Any) -> None:
    with pytest.raises(InvalidRequest) as raised:
        await inventory.create_token(name, Role.READER)
    assert raised.value.errors[0].field == "name"
