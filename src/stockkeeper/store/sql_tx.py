"""The steps of one write transaction, in SQL both backends speak.

Statements are written once with PostgreSQL's `$n` placeholders; SQLite reads them as its
numbered `?n`. Only what the dialects cannot share — locking several rows, and appending the
audit rows — is left to each backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

from stockkeeper.domain import Item, Write


class Row(Protocol):
    """A result row read by column name (asyncpg's Record, sqlite3's Row)."""

    def __getitem__(self, key: str, /) -> Any: ...


class Statements(Protocol):
    """Runs one statement inside the open transaction."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def first(self, sql: str, *args: Any) -> Row | None: ...


def _item(sku: str, row: Row | None) -> Item | None:
    return None if row is None else Item(sku, row["on_hand"], row["version"], row["held"])


class SqlTx(ABC):
    """The steps store/writes.py composes; every method runs inside the open transaction."""

    # Row locks: PostgreSQL locks the row it reads; SQLite's BEGIN IMMEDIATE already holds the
    # whole database's write lock, so a plain read is enough there.
    lock_clause = " FOR UPDATE"

    def __init__(self, db: Statements) -> None:
        self.db = db

    async def claim_key(
        self, user: str, key: str, request_hash: bytes
    ) -> tuple[bytes, bytes] | None:
        """Reserve an idempotency key: None when it is now ours, else the (request_hash,
        response) of the earlier committed request with that key.

        ON CONFLICT waits for a concurrent transaction holding the same key: if it commits, we
        replay its answer; if it rolls back, the key is ours.
        """
        claimed = await self.db.first(
            "INSERT INTO idempotency_keys (user_name, key, request_hash) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING RETURNING 1 AS claimed",
            user,
            key,
            request_hash,
        )
        if claimed is not None:
            return None
        row = await self.db.first(
            "SELECT request_hash, response FROM idempotency_keys WHERE user_name = $1 AND key = $2",
            user,
            key,
        )
        assert row is not None and row["response"] is not None, "a committed key has its answer"
        return bytes(row["request_hash"]), bytes(row["response"])

    async def save_response(self, user: str, key: str, response: bytes) -> None:
        await self.db.fetch(
            "UPDATE idempotency_keys SET response = $3 WHERE user_name = $1 AND key = $2",
            user,
            key,
            response,
        )

    async def create_item(self, sku: str, on_hand: int) -> bool:
        """Insert the item at version 1 unless it exists; True if this call created it."""
        created = await self.db.first(
            "INSERT INTO items (sku, on_hand, version) VALUES ($1, $2, 1) "
            "ON CONFLICT DO NOTHING RETURNING 1 AS created",
            sku,
            on_hand,
        )
        return created is not None

    async def lock_item(self, sku: str) -> Item:
        """Lock an existing item for the rest of the transaction."""
        row = await self.db.first(
            f"SELECT on_hand, version, held FROM items WHERE sku = $1{self.lock_clause}", sku
        )
        item = _item(sku, row)
        assert item is not None, "items are never deleted"
        return item

    @abstractmethod
    async def lock_items(self, skus: list[str]) -> dict[str, int]:
        """Lock the rows of `skus` in the given (canonical) order; `available` of those found."""

    async def set_on_hand(self, sku: str, on_hand: int) -> Item:
        row = await self.db.first(
            "UPDATE items SET on_hand = $2, version = version + 1 WHERE sku = $1 "
            "RETURNING on_hand, version, held",
            sku,
            on_hand,
        )
        item = _item(sku, row)
        assert item is not None, "set_on_hand follows lock_item"
        return item

    async def take(self, sku: str, quantity: int) -> Item | None:
        """Decrement only if available (on_hand - held) >= quantity, as one statement; None if
        it did not."""
        row = await self.db.first(
            "UPDATE items SET on_hand = on_hand - $2, version = version + 1 "
            "WHERE sku = $1 AND on_hand - held >= $2 RETURNING on_hand, version, held",
            sku,
            quantity,
        )
        return _item(sku, row)

    async def add(self, sku: str, quantity: int, ceiling: int) -> Item | None:
        """Increment unless on_hand would pass `ceiling`; None if it did not."""
        row = await self.db.first(
            "UPDATE items SET on_hand = on_hand + $2, version = version + 1 "
            "WHERE sku = $1 AND on_hand <= CAST($3 AS bigint) - CAST($2 AS bigint) "
            "RETURNING on_hand, version, held",
            sku,
            quantity,
            ceiling,
        )
        return _item(sku, row)

    async def available(self, sku: str) -> int | None:
        row = await self.db.first(
            "SELECT on_hand - held AS available FROM items WHERE sku = $1", sku
        )
        return None if row is None else int(row["available"])

    @abstractmethod
    async def insert_audit(self, write: Write, rows: list[tuple[Item, int]]) -> list[int]:
        """Append one audit entry per (item after the change, delta); returns their ids."""
