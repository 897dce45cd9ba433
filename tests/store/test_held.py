"""Held stock (the groundwork of holds, docs/holds.md): `items.held` is set aside, so purchases,
orders and sets take only from `available` = on_hand - held, on both backends, on every write
path (PostgreSQL's one-statement purchase, and the transaction a keyed write or an order takes).

Until holds write it, each test sets `held` around the service as a hold will: one change of
its own, with its audit entry (reason `hold`), so the audit still replays to every version.
"""

from __future__ import annotations

import pytest

from stockkeeper.domain import InsufficientStock, Item, OrderLine
from stockkeeper.service import Inventory
from tests.store.test_writes import RAW_ERRORS, assert_audit_replays, raw

HELD = 3


async def hold_around_the_service(database_url: str, item: Item, quantity: int) -> Item:
    """Set `quantity` more of `item` aside as a hold will, in SQL: one new version, audited."""
    held = item.held + quantity
    version = item.version + 1
    postgres = database_url.startswith("postgresql")
    now = "now()" if postgres else "strftime('%Y-%m-%dT%H:%M:%f+00:00')"
    await raw(
        database_url,
        f"UPDATE items SET held = {held}, version = {version} WHERE sku = '{item.sku}'",
    )
    await raw(
        database_url,
        "INSERT INTO audit (sku, version, delta, on_hand, held_delta, held, hold_id, user_name, "
        f"reason, at) VALUES ('{item.sku}', {version}, 0, {item.on_hand}, {quantity}, {held}, "
        f"'h-test', 'clerk', 'hold', {now})",
    )
    return Item(item.sku, item.on_hand, version, held)


@pytest.fixture
async def partly_held(inventory: Inventory, database_url: str) -> Inventory:
    """A: on_hand 10 of which 3 held (version 2); B: 10, none held (version 1)."""
    for sku in ("A", "B"):
        await inventory.set_stock(sku, 10, user="admin")
    await hold_around_the_service(database_url, Item("A", 10, 1), HELD)
    return inventory


@pytest.mark.parametrize("key", [None, "k-1"], ids=["one-statement", "in-a-transaction"])
async def test_a_purchase_takes_only_what_is_available(
    partly_held: Inventory, key: str | None
) -> None:
    with pytest.raises(InsufficientStock) as refused:
        await partly_held.decrement_stock("A", 8, user="clerk", idempotency_key=key)
    assert (refused.value.requested, refused.value.available) == (8, 7)
    assert await partly_held.get_stock("A") == Item("A", 10, 2, HELD)
    change = (await partly_held.decrement_stock("A", 7, user="clerk", idempotency_key=key)).change
    assert (change.on_hand, change.held, change.held_delta, change.version) == (3, HELD, 0, 3)
    assert await partly_held.get_stock("A") == Item("A", 3, 3, HELD)
    with pytest.raises(InsufficientStock):
        await partly_held.decrement_stock("A", 1, user="clerk")
    entries = await assert_audit_replays(partly_held, "A")
    assert (entries[-1].held, entries[-1].held_delta) == (HELD, 0)


async def test_an_order_short_of_available_names_what_is_available(
    partly_held: Inventory,
) -> None:
    with pytest.raises(InsufficientStock) as refused:
        await partly_held.place_order([OrderLine("B", 10), OrderLine("A", 8)], user="clerk")
    assert [(s.sku, s.requested, s.available) for s in refused.value.shortages] == [("A", 8, 7)]
    assert await partly_held.get_stock("B") == Item("B", 10, 1)
    receipt = await partly_held.place_order([OrderLine("B", 10), OrderLine("A", 7)], user="clerk")
    assert [(c.sku, c.on_hand, c.held) for c in receipt.changes] == [("B", 0, 0), ("A", 3, HELD)]


async def test_a_set_below_what_is_held_is_refused_and_changes_nothing(
    partly_held: Inventory,
) -> None:
    with pytest.raises(InsufficientStock) as refused:
        await partly_held.set_stock("A", HELD - 1, user="admin")
    # Said as a take: the set would remove 8 units, of which 7 are available.
    assert (refused.value.requested, refused.value.available) == (8, 7)
    assert await partly_held.get_stock("A") == Item("A", 10, 2, HELD)
    change = (await partly_held.set_stock("A", HELD, user="admin")).change
    assert (change.on_hand, change.held, change.delta) == (HELD, HELD, -7)


async def test_a_restock_keeps_what_is_held(partly_held: Inventory) -> None:
    change = (await partly_held.increment_stock("A", 5, user="admin")).change
    assert (change.on_hand, change.held) == (15, HELD)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE items SET held = on_hand + 1 WHERE sku = 'A'",
        "UPDATE items SET held = -1 WHERE sku = 'A'",
        "UPDATE items SET on_hand = 2 WHERE sku = 'A'",
    ],
)
async def test_the_database_refuses_held_outside_zero_to_on_hand(
    partly_held: Inventory, database_url: str, sql: str
) -> None:
    with pytest.raises(RAW_ERRORS, match=r"held_within_on_hand|CHECK"):
        await raw(database_url, sql)
    assert await partly_held.get_stock("A") == Item("A", 10, 2, HELD)


async def test_the_change_feed_carries_held(partly_held: Inventory) -> None:
    feed = partly_held.store.change_feed()
    await feed.poll()  # positioned
    await partly_held.decrement_stock("A", 1, user="clerk")
    (entry,) = await feed.poll()
    assert entry.item == Item("A", 9, 3, HELD)
    assert [e.item for e in await feed.recent(60) if e.sku == "A"] == [Item("A", 9, 3, HELD)]
