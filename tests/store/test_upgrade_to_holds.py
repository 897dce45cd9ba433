"""A database made before holds (PostgreSQL schema revision 2; SQLite's audit with four
reasons) is upgraded in place on start: items gain `held` (0), the audit its held columns and
the new reasons, and every item and audit entry is kept as it was, ids and order included."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import asyncpg
import pytest

from stockkeeper.domain import Item
from stockkeeper.service import Inventory
from stockkeeper.store.postgres import SCHEMA_REVISION
from tests.conftest import direct
from tests.store.test_held import hold_around_the_service
from tests.store.test_writes import assert_audit_replays

# What a PostgreSQL schema of revision 2 lacked, taken away again.
_BACK_TO_REVISION_2 = """
DROP TABLE hold_lines;
DROP TABLE holds;
ALTER TABLE items DROP CONSTRAINT held_within_on_hand;
ALTER TABLE items DROP COLUMN held;
ALTER TABLE audit DROP CONSTRAINT audit_reason_check;
ALTER TABLE audit DROP COLUMN held_delta, DROP COLUMN held, DROP COLUMN hold_id;
ALTER TABLE audit ADD CONSTRAINT audit_reason_check
    CHECK (reason IN ('purchase', 'restock', 'order', 'set'));
UPDATE stockkeeper_meta SET value = '2' WHERE key = 'schema_revision';
"""

# SQLite's items and audit before holds, as an older stockkeeper made them.
_SQLITE_BEFORE_HOLDS = """
CREATE TABLE items (
    sku TEXT PRIMARY KEY,
    on_hand INTEGER NOT NULL CONSTRAINT on_hand_never_negative CHECK (on_hand >= 0),
    version INTEGER NOT NULL CHECK (version >= 1)
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sku TEXT NOT NULL REFERENCES items (sku),
    version INTEGER NOT NULL,
    delta INTEGER NOT NULL,
    on_hand INTEGER NOT NULL CHECK (on_hand >= 0),
    user_name TEXT NOT NULL,
    on_behalf_of TEXT,
    reason TEXT NOT NULL CHECK (reason IN ('purchase', 'restock', 'order', 'set')),
    idempotency_key TEXT,
    at TEXT NOT NULL,
    UNIQUE (sku, version)
);
INSERT INTO items VALUES ('A', 7, 2), ('B', 1, 1);
INSERT INTO audit (id, sku, version, delta, on_hand, user_name, on_behalf_of, reason,
                   idempotency_key, at) VALUES
    (5, 'A', 1, 10, 10, 'admin', NULL, 'set', NULL, '2026-11-01T10:00:00.000001+00:00'),
    (6, 'B', 1, 1, 1, 'admin', NULL, 'set', NULL, '2026-11-01T10:00:01.000002+00:00'),
    (9, 'A', 2, -3, 7, 'clerk', 'shopper-1', 'purchase', 'k-1',
     '2026-11-01T10:00:02.000003+00:00');
"""


async def entries(inventory: Inventory, sku: str) -> list[tuple[object, ...]]:
    page = await inventory.audit(sku)
    return [(e.id, e.version, e.delta, e.on_hand, e.reason, e.user, e.at) for e in page.entries]


async def upgraded_and_held(inventory: Inventory, database_url: str) -> None:
    """After the upgrade: nothing held, the old log replays, and holds can be recorded."""
    assert await inventory.get_stock("A") == Item("A", 7, 2, held=0)
    held = await hold_around_the_service(database_url, Item("A", 7, 2), 2)
    assert await inventory.get_stock("A") == held
    change = (await inventory.decrement_stock("A", 5, user="clerk")).change
    assert (change.on_hand, change.held, change.version) == (2, 2, 4)
    await assert_audit_replays(inventory, "A")


async def test_a_postgresql_schema_of_revision_2_is_upgraded_keeping_every_row(
    postgres_url: str,
) -> None:
    async with await Inventory.open(postgres_url) as inventory:
        await inventory.set_stock("A", 10, user="admin")
        await inventory.decrement_stock("A", 3, user="clerk", idempotency_key="k-1")
        before = await entries(inventory, "A")
    conn = await asyncpg.connect(direct(postgres_url))
    try:
        await conn.execute(_BACK_TO_REVISION_2)
    finally:
        await conn.close()
    async with await Inventory.open(postgres_url) as inventory:  # migrates on open
        assert await entries(inventory, "A") == before
        await upgraded_and_held(inventory, postgres_url)
    conn = await asyncpg.connect(direct(postgres_url))
    try:
        revision = await conn.fetchval(
            "SELECT value FROM stockkeeper_meta WHERE key = 'schema_revision'"
        )
    finally:
        await conn.close()
    assert revision == str(SCHEMA_REVISION)


async def test_an_sqlite_database_from_before_holds_is_rebuilt_keeping_every_row(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(_SQLITE_BEFORE_HOLDS)
    url = f"sqlite:///{path}"
    async with await Inventory.open(url) as inventory:
        assert [entry[:3] for entry in await entries(inventory, "A")] == [(5, 1, 10), (9, 2, -3)]
        await upgraded_and_held(inventory, url)
        newest = (await inventory.audit("A")).entries[-1]
        assert newest.id > 9  # AUTOINCREMENT goes on past the copied ids
    refused = pytest.raises(sqlite3.DatabaseError, match="append-only")  # the triggers are back
    with closing(sqlite3.connect(path)) as conn, refused:
        conn.execute("UPDATE audit SET delta = 0 WHERE id = 5")
    async with await Inventory.open(url) as inventory:  # a second start changes nothing
        assert [entry[0] for entry in await entries(inventory, "A")][:2] == [5, 9]
