"""Holds on every backend (SQLite, PostgreSQL, and through PgBouncer): create, read, confirm
whole or in part, extend, release and expire, each an audited change that replays; and every
error of shared/API.md's holds section, each changing nothing.

A hold is made overdue by moving its expires_at into the past in SQL (as time would), so no
test sleeps through a TTL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from stockkeeper import metrics
from stockkeeper.domain import (
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidRequest,
    Item,
    OrderLine,
    Reason,
    UnknownSku,
)
from stockkeeper.holds import HoldClosed, HoldExpired, HoldReceipt, HoldState, UnknownHold
from stockkeeper.service import Inventory
from tests.store.test_writes import assert_audit_replays, audit_of, raw

USER = "clerk"


async def make_overdue(database_url: str, hold_id: str) -> None:
    """Move the hold's expires_at a second into the past, as its TTL running out would."""
    if database_url.startswith("postgresql"):
        past = "clock_timestamp() - interval '1 second'"
    else:
        past = "strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now', '-1 second')"
    await raw(database_url, f"UPDATE holds SET expires_at = {past} WHERE id = '{hold_id}'")


async def recorded_state(database_url: str, hold_id: str) -> str:
    ((state,),) = await raw(database_url, f"SELECT state FROM holds WHERE id = '{hold_id}'")
    return str(state)


@pytest.fixture
async def stocked(inventory: Inventory) -> Inventory:
    """A=10 and B=5, each at version 1."""
    await inventory.set_stock("A", 10, user="admin")
    await inventory.set_stock("B", 5, user="admin")
    return inventory


async def hold_ab(inventory: Inventory, a: int = 3, b: int = 2, **kwargs: Any) -> HoldReceipt:
    return await inventory.hold(
        [OrderLine("A", a), OrderLine("B", b)], 60, user=USER, on_behalf_of="shopper-1", **kwargs
    )


async def snapshot(inventory: Inventory, database_url: str) -> tuple[Any, ...]:
    """Everything a refused request must leave as it was."""
    items = [await inventory.store.get_item(sku) for sku in ("A", "B")]
    audit = [len(await audit_of(inventory, sku)) for sku in ("A", "B")]
    holds = await raw(database_url, "SELECT id, state, expires_at FROM holds ORDER BY id")
    lines = await raw(database_url, "SELECT hold_id, sku, confirmed FROM hold_lines ORDER BY 1, 2")
    return items, audit, holds, lines


async def assert_consistent(inventory: Inventory) -> None:
    for sku in ("A", "B"):
        await assert_audit_replays(inventory, sku)
    assert await inventory.held_drift() == []


# --- the life of a hold ---------------------------------------------------------------------


async def test_a_hold_sets_every_line_aside_and_a_confirm_sells_it(stocked: Inventory) -> None:
    created = await hold_ab(stocked)
    hold = created.hold
    assert hold.state is HoldState.ACTIVE and not created.replayed
    assert [(ln.sku, ln.quantity, ln.confirmed) for ln in hold.lines] == [
        ("A", 3, None),
        ("B", 2, None),
    ]
    assert [(c.sku, c.delta, c.held_delta, c.on_hand, c.held) for c in hold.changes] == [
        ("A", 0, 3, 10, 3),
        ("B", 0, 2, 5, 2),
    ]
    assert await stocked.get_stock("A") == Item("A", 10, 2, 3)
    assert (await stocked.get_hold(hold.id)).state is HoldState.ACTIVE

    confirmed = (await stocked.confirm(hold.id, user=USER)).hold
    assert confirmed.state is HoldState.CONFIRMED
    assert [(ln.sku, ln.confirmed) for ln in confirmed.lines] == [("A", 3), ("B", 2)]
    assert [(c.delta, c.held_delta, c.on_hand, c.held) for c in confirmed.changes] == [
        (-3, -3, 7, 0),
        (-2, -2, 3, 0),
    ]
    assert (await stocked.get_hold(hold.id)).state is HoldState.CONFIRMED
    entries = await audit_of(stocked, "A")
    assert [(e.reason, e.hold_id, e.on_behalf_of) for e in entries[1:]] == [
        (Reason.HOLD, hold.id, "shopper-1"),
        (Reason.CONFIRM, hold.id, "shopper-1"),
    ]
    await assert_consistent(stocked)


async def test_a_partial_confirm_sells_what_it_names_and_releases_the_rest(
    stocked: Inventory,
) -> None:
    hold = (await hold_ab(stocked)).hold
    confirmed = (await stocked.confirm(hold.id, [{"sku": "A", "quantity": 1}], user=USER)).hold
    assert [(ln.sku, ln.quantity, ln.confirmed) for ln in confirmed.lines] == [
        ("A", 3, 1),
        ("B", 2, 0),
    ]
    assert [(c.delta, c.held_delta) for c in confirmed.changes] == [(-1, -3), (0, -2)]
    assert await stocked.get_stock("A") == Item("A", 9, 3, 0)
    assert await stocked.get_stock("B") == Item("B", 5, 3, 0)
    await assert_consistent(stocked)


async def test_a_release_gives_the_stock_back(stocked: Inventory) -> None:
    hold = (await hold_ab(stocked)).hold
    released = (await stocked.release(hold.id, user=USER)).hold
    assert released.state is HoldState.RELEASED
    assert [(c.delta, c.held_delta, c.held) for c in released.changes] == [(0, -3, 0), (0, -2, 0)]
    assert await stocked.get_stock("A") == Item("A", 10, 3, 0)
    await assert_consistent(stocked)


async def test_an_extend_moves_expires_at_by_the_database_clock_and_changes_no_stock(
    stocked: Inventory,
) -> None:
    hold = (await hold_ab(stocked)).hold
    extended = (await stocked.extend(hold.id, 3600, user=USER)).hold
    assert extended.state is HoldState.ACTIVE and extended.changes == ()
    assert 3500 < (extended.expires_at - hold.expires_at).total_seconds() < 3600
    assert (await stocked.get_hold(hold.id)).expires_at == extended.expires_at
    assert await stocked.get_stock("A") == Item("A", 10, 2, 3)
    await assert_consistent(stocked)


async def test_an_overdue_hold_reads_expired_before_any_expirer_and_once_recorded(
    stocked: Inventory, database_url: str
) -> None:
    hold = (await hold_ab(stocked)).hold
    await make_overdue(database_url, hold.id)
    assert (await stocked.get_hold(hold.id)).state is HoldState.EXPIRED
    assert await recorded_state(database_url, hold.id) == "active"
    expired_before = metrics.HOLDS.labels(event="expired")._value.get()
    assert await stocked.expire_holds() == 1
    assert await stocked.expire_holds() == 0, "an expiry is recorded once"
    assert metrics.HOLDS.labels(event="expired")._value.get() == expired_before + 1
    assert await recorded_state(database_url, hold.id) == "expired"
    assert await stocked.get_stock("A") == Item("A", 10, 3, 0)
    entries = await audit_of(stocked, "B")
    assert (entries[-1].reason, entries[-1].held_delta, entries[-1].user) == (
        Reason.EXPIRE,
        -2,
        USER,
    )
    await assert_consistent(stocked)


# --- a request that needs an overdue hold's stock expires it first ---------------------------

TakeAll = Callable[[Inventory], Awaitable[object]]
TAKERS: dict[str, TakeAll] = {
    "purchase": lambda inv: inv.decrement_stock("A", 10, user=USER),
    "keyed-purchase": lambda inv: inv.decrement_stock("A", 10, user=USER, idempotency_key="k"),
    "order": lambda inv: inv.place_order([OrderLine("B", 1), OrderLine("A", 10)], user=USER),
    "hold": lambda inv: inv.hold([OrderLine("A", 10)], 60, user=USER),
    "keyed-hold": lambda inv: inv.hold([OrderLine("A", 10)], 60, user=USER, idempotency_key="h"),
}


@pytest.mark.parametrize("take", TAKERS.values(), ids=TAKERS.keys())
async def test_a_request_needing_an_overdue_holds_stock_expires_it_in_its_transaction(
    stocked: Inventory, database_url: str, take: TakeAll
) -> None:
    hold = (await hold_ab(stocked)).hold
    with pytest.raises(InsufficientStock):
        await take(stocked)
    await make_overdue(database_url, hold.id)
    await take(stocked)
    assert await recorded_state(database_url, hold.id) == "expired"
    reasons = [e.reason for e in await audit_of(stocked, "A")]
    assert reasons[:3] == [Reason.SET, Reason.HOLD, Reason.EXPIRE]
    # Its other line (B) was given back too, in the same transaction.
    assert (await stocked.store.get_item("B")).held == 0  # type: ignore[union-attr]
    await assert_consistent(stocked)


async def test_a_request_short_even_after_expiry_changes_nothing(
    stocked: Inventory, database_url: str
) -> None:
    hold = (await hold_ab(stocked)).hold
    await make_overdue(database_url, hold.id)
    before = await snapshot(stocked, database_url)
    with pytest.raises(InsufficientStock) as refused:
        await stocked.decrement_stock("A", 11, user=USER)
    assert refused.value.available == 10
    assert await snapshot(stocked, database_url) == before


# --- every error, and nothing changed ---------------------------------------------------------

Act = Callable[[Inventory, str], Awaitable[HoldReceipt]]
ACTIONS: dict[str, Act] = {
    "confirm": lambda inv, hold_id: inv.confirm(hold_id, user=USER),
    "extend": lambda inv, hold_id: inv.extend(hold_id, 60, user=USER),
    "release": lambda inv, hold_id: inv.release(hold_id, user=USER),
}


@pytest.mark.parametrize("hold_id", ["h0000", "not a hold!", "x" * 65])
async def test_an_unknown_hold_is_unknown_hold_for_every_action(
    stocked: Inventory, database_url: str, hold_id: str
) -> None:
    before = await snapshot(stocked, database_url)
    with pytest.raises(UnknownHold):
        await stocked.get_hold(hold_id)
    for act in ACTIONS.values():
        with pytest.raises(UnknownHold):
            await act(stocked, hold_id)
    assert await snapshot(stocked, database_url) == before


@pytest.mark.parametrize(
    ("action", "error"),
    [("confirm", HoldExpired), ("extend", HoldExpired), ("release", HoldClosed)],
)
async def test_an_overdue_hold_refuses_confirm_and_extend_as_expired_and_release_as_closed(
    stocked: Inventory, database_url: str, action: str, error: type[Exception]
) -> None:
    hold = (await hold_ab(stocked)).hold
    await make_overdue(database_url, hold.id)
    before = await snapshot(stocked, database_url)
    with pytest.raises(error) as refused:
        await ACTIONS[action](stocked, hold.id)
    if isinstance(refused.value, HoldClosed):
        assert refused.value.state is HoldState.EXPIRED
    assert await snapshot(stocked, database_url) == before


@pytest.mark.parametrize("ending", ["confirm", "release", "expire"])
@pytest.mark.parametrize("action", ACTIONS)
async def test_a_closed_hold_refuses_every_action_naming_its_state(
    stocked: Inventory, database_url: str, ending: str, action: str
) -> None:
    hold = (await hold_ab(stocked)).hold
    if ending == "expire":
        await make_overdue(database_url, hold.id)
        assert await stocked.expire_holds() == 1
    else:
        await ACTIONS[ending](stocked, hold.id)
    state = {"confirm": "confirmed", "release": "released", "expire": "expired"}[ending]
    before = await snapshot(stocked, database_url)
    expected = HoldExpired if state == "expired" and action != "release" else HoldClosed
    with pytest.raises(expected) as refused:
        await ACTIONS[action](stocked, hold.id)
    if isinstance(refused.value, HoldClosed):
        assert refused.value.state.value == state
    assert await snapshot(stocked, database_url) == before


@pytest.mark.parametrize(
    ("lines", "field"),
    [
        ([{"sku": "C", "quantity": 1}], "lines[0].sku"),
        ([{"sku": "A", "quantity": 4}], "lines[0].quantity"),
        ([{"sku": "A", "quantity": 0}], "lines[0].quantity"),
        ([{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 1}], "lines[1].sku"),
        ([], "lines"),
    ],
)
async def test_a_confirm_line_not_held_or_over_its_quantity_is_invalid(
    stocked: Inventory, database_url: str, lines: list[dict[str, Any]], field: str
) -> None:
    hold = (await hold_ab(stocked)).hold
    before = await snapshot(stocked, database_url)
    with pytest.raises(InvalidRequest) as refused:
        await stocked.confirm(hold.id, lines, user=USER)
    assert field in [e.field for e in refused.value.errors]
    assert await snapshot(stocked, database_url) == before


async def test_a_hold_short_on_any_line_holds_nothing_and_names_every_shortage(
    stocked: Inventory, database_url: str
) -> None:
    before = await snapshot(stocked, database_url)
    with pytest.raises(InsufficientStock) as refused:
        await stocked.hold([OrderLine("A", 11), OrderLine("B", 6)], 60, user=USER)
    assert [(s.sku, s.requested, s.available) for s in refused.value.shortages] == [
        ("A", 11, 10),
        ("B", 6, 5),
    ]
    with pytest.raises(InsufficientStock) as single:
        await stocked.hold([OrderLine("B", 6)], 60, user=USER)
    assert single.value.shortages[0].available == 5
    with pytest.raises(UnknownSku):
        await stocked.hold([OrderLine("A", 1), OrderLine("NOPE", 1)], 60, user=USER)
    with pytest.raises(UnknownSku):
        await stocked.hold([OrderLine("NOPE", 1)], 60, user=USER)
    assert await snapshot(stocked, database_url) == before


async def test_held_stock_is_not_available_to_a_second_hold(stocked: Inventory) -> None:
    await stocked.hold([OrderLine("B", 4)], 60, user=USER)
    with pytest.raises(InsufficientStock) as refused:
        await stocked.hold([OrderLine("B", 2)], 60, user=USER)
    assert refused.value.available == 1
    await stocked.hold([OrderLine("B", 1)], 60, user=USER)
    assert await stocked.get_stock("B") == Item("B", 5, 3, 5)
    await assert_consistent(stocked)


@pytest.mark.parametrize(
    ("ttl_s", "field"), [(0, "ttl_s"), (3601, "ttl_s"), (1.5, "ttl_s"), (True, "ttl_s")]
)
async def test_a_bad_ttl_is_invalid(stocked: Inventory, ttl_s: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await stocked.hold([OrderLine("A", 1)], ttl_s, user=USER)
    assert [e.field for e in refused.value.errors] == [field]
    hold = (await hold_ab(stocked)).hold
    with pytest.raises(InvalidRequest):
        await stocked.extend(hold.id, ttl_s, user=USER)


# --- idempotency ------------------------------------------------------------------------------


async def test_every_hold_request_replays_with_its_key_and_refuses_it_for_another_body(
    stocked: Inventory, database_url: str
) -> None:
    first = await hold_ab(stocked, idempotency_key="create-1")
    replay = await hold_ab(stocked, idempotency_key="create-1")
    assert replay.replayed and replay.hold == first.hold
    with pytest.raises(IdempotencyKeyReused):
        await hold_ab(stocked, a=1, idempotency_key="create-1")
    hold_id = first.hold.id
    for key, act in (
        ("extend-1", lambda key: stocked.extend(hold_id, 90, user=USER, idempotency_key=key)),
        ("confirm-1", lambda key: stocked.confirm(hold_id, user=USER, idempotency_key=key)),
    ):
        done = await act(key)
        again = await act(key)
        assert again.replayed and again.hold == done.hold
    second = (await hold_ab(stocked, a=1, b=1)).hold
    released = await stocked.release(second.id, user=USER, idempotency_key="release-1")
    before = await snapshot(stocked, database_url)
    again = await stocked.release(second.id, user=USER, idempotency_key="release-1")
    assert again.replayed and again.hold == released.hold
    with pytest.raises(IdempotencyKeyReused):
        await stocked.release(first.hold.id, user=USER, idempotency_key="release-1")
    with pytest.raises(IdempotencyKeyReused):
        await stocked.decrement_stock("A", 1, user=USER, idempotency_key="release-1")
    assert await snapshot(stocked, database_url) == before
    await assert_consistent(stocked)
