"""The steps of one write transaction, in SQL both backends speak.

Statements are written once with PostgreSQL's `$n` placeholders; SQLite reads them as its
numbered `?n`, a list parameter as a JSON array and a timestamp as fixed-width text (so text
order is time order). Only what the dialects cannot share — row locks, a list's membership
test, the clock, and appending the audit rows — is left to each backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from stockkeeper.domain import Change, Item, Write
from stockkeeper.holds import HoldLine, HoldState


class Row(Protocol):
    """A result row read by column name (asyncpg's Record, sqlite3's Row)."""

    def __getitem__(self, key: str, /) -> Any: ...


class Statements(Protocol):
    """Runs one statement inside the open transaction."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def first(self, sql: str, *args: Any) -> Row | None: ...


def _item(sku: str, row: Row | None) -> Item | None:
    return None if row is None else Item(sku, row["on_hand"], row["version"], row["held"])


def as_datetime(value: datetime | str) -> datetime:
    """A timestamp column as either driver returns it (SQLite: the text it was stored as)."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


class Applied(NamedTuple):
    """One line of a change as applied: the item after it, and what it added to each count."""

    item: Item
    delta: int
    held_delta: int = 0


class HoldRow(NamedTuple):
    id: str
    user: str
    on_behalf_of: str | None
    state: HoldState  # as recorded
    expires_at: datetime
    lines: tuple[HoldLine, ...]


_HOLD_COLUMNS = (
    "h.id, h.user_name, h.on_behalf_of, h.state, h.expires_at, "
    "l.line, l.sku, l.quantity, l.confirmed"
)


def _holds(rows: list[Row]) -> list[HoldRow]:
    """Rows of holds joined to their lines, ordered by hold then line, as one HoldRow each."""
    found: dict[str, HoldRow] = {}
    for row in rows:
        line = HoldLine(row["sku"], row["quantity"], row["confirmed"])
        hold = found.get(row["id"])
        if hold is None:
            found[row["id"]] = HoldRow(
                row["id"],
                row["user_name"],
                row["on_behalf_of"],
                HoldState(row["state"]),
                as_datetime(row["expires_at"]),
                (line,),
            )
        else:
            found[row["id"]] = hold._replace(lines=(*hold.lines, line))
    return list(found.values())


# Every SKU whose `held` differs from the sum of its active holds' lines, in one snapshot.
HELD_DRIFT = """
SELECT i.sku, i.held, coalesce(sum(l.quantity), 0) AS from_holds
FROM items AS i
LEFT JOIN hold_lines AS l
    ON l.sku = i.sku AND l.hold_id IN (SELECT id FROM holds WHERE state = 'active')
GROUP BY i.sku, i.held
HAVING i.held <> coalesce(sum(l.quantity), 0)
ORDER BY i.sku
"""


class SqlTx(ABC):
    """The steps store/writes.py and store/hold_writes.py compose; every method runs inside
    the open transaction."""

    # Row locks: PostgreSQL locks the row it reads; SQLite's BEGIN IMMEDIATE already holds the
    # whole database's write lock, so a plain read is enough there.
    lock_clause = " FOR UPDATE"
    hold_lock_clause = " FOR UPDATE OF h"
    skip_locked_clause = " FOR UPDATE OF h SKIP LOCKED"

    @staticmethod
    @abstractmethod
    def in_list(param: str) -> str:
        """SQL testing membership in the list parameter `param` (`$1`, say)."""

    @abstractmethod
    async def now(self) -> datetime:
        """The database's clock, read now (not when the transaction began): what every
        hold's expiry is decided by."""

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

    async def lock_items(self, skus: list[str]) -> dict[str, int]:
        """Lock the rows of `skus` in sorted (canonical) order, in one statement (ORDER BY
        sits below the row-locking step); `available` of those found."""
        rows = await self.db.fetch(
            f"SELECT sku, on_hand - held AS available FROM items WHERE sku {self.in_list('$1')} "
            f"ORDER BY sku{self.lock_clause}",
            skus,
        )
        return {row["sku"]: row["available"] for row in rows}

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

    async def set_aside(self, sku: str, quantity: int) -> Item | None:
        """Hold `quantity` only if available >= quantity, as one statement; None if not."""
        row = await self.db.first(
            "UPDATE items SET held = held + $2, version = version + 1 "
            "WHERE sku = $1 AND on_hand - held >= $2 RETURNING on_hand, version, held",
            sku,
            quantity,
        )
        return _item(sku, row)

    async def settle(self, sku: str, sold: int, unheld: int) -> Item:
        """A held line ends: `sold` leaves on_hand, `unheld` leaves held. The row is locked,
        and the table's CHECKs refuse anything held never covered."""
        row = await self.db.first(
            "UPDATE items SET on_hand = on_hand - $2, held = held - $3, version = version + 1 "
            "WHERE sku = $1 RETURNING on_hand, version, held",
            sku,
            sold,
            unheld,
        )
        item = _item(sku, row)
        assert item is not None, "a held line's item exists"
        return item

    async def available(self, sku: str) -> int | None:
        row = await self.db.first(
            "SELECT on_hand - held AS available FROM items WHERE sku = $1", sku
        )
        return None if row is None else int(row["available"])

    # --- holds ------------------------------------------------------------------------------

    async def read_hold(self, hold_id: str, *, lock: bool) -> HoldRow | None:
        """The hold and its lines in one statement (one snapshot); locked, if asked, for the
        rest of the transaction."""
        rows = await self.db.fetch(
            f"SELECT {_HOLD_COLUMNS} FROM holds AS h JOIN hold_lines AS l ON l.hold_id = h.id "
            f"WHERE h.id = $1 ORDER BY l.line{self.hold_lock_clause if lock else ''}",
            hold_id,
        )
        holds = _holds(rows)
        return holds[0] if holds else None

    async def any_due(self, skus: list[str], now: datetime) -> bool:
        """Whether an active hold on any of `skus` is past its expires_at (no lock taken)."""
        row = await self.db.first(
            "SELECT 1 AS due FROM holds AS h JOIN hold_lines AS l ON l.hold_id = h.id "
            f"WHERE h.state = 'active' AND h.expires_at <= $2 AND l.sku {self.in_list('$1')} "
            "LIMIT 1",
            skus,
            now,
        )
        return row is not None

    async def lock_due(self, now: datetime, skus: list[str] | None, limit: int) -> list[HoldRow]:
        """Lock up to `limit` active holds past their expires_at, with their lines: those
        holding any of `skus`, waiting for each (a request's own expiry, in id order: the
        lock order), or, with `skus` None, the longest overdue of all, skipping any another
        transaction has locked (the expirer)."""
        if skus is None:
            where, order, lock, args = "", "h.expires_at, h.id", self.skip_locked_clause, []
        else:
            where = (
                "AND EXISTS (SELECT 1 FROM hold_lines AS s WHERE s.hold_id = h.id "
                f"AND s.sku {self.in_list('$3')}) "
            )
            order, lock, args = "h.id", self.hold_lock_clause, [skus]
        ids = await self.db.fetch(
            "SELECT h.id FROM holds AS h WHERE h.state = 'active' AND h.expires_at <= $1 "
            f"{where}ORDER BY {order} LIMIT $2{lock}",
            now,
            limit,
            *args,
        )
        if not ids:
            return []
        rows = await self.db.fetch(
            f"SELECT {_HOLD_COLUMNS} FROM holds AS h JOIN hold_lines AS l ON l.hold_id = h.id "
            f"WHERE h.id {self.in_list('$1')} ORDER BY h.id, l.line",
            [row["id"] for row in ids],
        )
        return _holds(rows)

    async def insert_hold(self, hold: HoldRow, now: datetime) -> None:
        await self.db.fetch(
            "INSERT INTO holds (id, user_name, on_behalf_of, state, created_at, expires_at) "
            "VALUES ($1, $2, $3, 'active', $4, $5)",
            hold.id,
            hold.user,
            hold.on_behalf_of,
            now,
            hold.expires_at,
        )
        for n, line in enumerate(hold.lines, 1):
            await self.db.fetch(
                "INSERT INTO hold_lines (hold_id, line, sku, quantity) VALUES ($1, $2, $3, $4)",
                hold.id,
                n,
                line.sku,
                line.quantity,
            )

    async def close_hold(
        self, hold_id: str, state: HoldState, now: datetime, confirmed: dict[str, int]
    ) -> None:
        """Record the hold's end (and, for a confirm, what each line sold)."""
        await self.db.fetch(
            "UPDATE holds SET state = $2, closed_at = $3 WHERE id = $1 AND state = 'active'",
            hold_id,
            state.value,
            now,
        )
        for sku, quantity in confirmed.items():
            await self.db.fetch(
                "UPDATE hold_lines SET confirmed = $3 WHERE hold_id = $1 AND sku = $2",
                hold_id,
                sku,
                quantity,
            )

    async def set_expires_at(self, hold_id: str, expires_at: datetime) -> None:
        await self.db.fetch("UPDATE holds SET expires_at = $2 WHERE id = $1", hold_id, expires_at)

    async def audited(
        self,
        write: Write,
        rows: list[Applied],
        hold_id: str | None = None,
        at: datetime | None = None,
    ) -> tuple[Change, ...]:
        """Append the audit entries of applied lines: the changes they make. `at` stamps them
        with the moment a decision was made at (a hold's end, by the clock read once every
        lock was held, so no earlier version of these SKUs can be stamped later); by default,
        the clock as they are written."""
        audit_ids = await self.insert_audit(write, rows, hold_id, at)
        assert len(audit_ids) == len(rows), "one audit entry per applied line"
        return tuple(
            Change(
                row.item.sku,
                row.delta,
                row.item.on_hand,
                row.item.version,
                audit_id,
                row.held_delta,
                row.item.held,
            )
            for row, audit_id in zip(rows, audit_ids, strict=True)
        )

    @abstractmethod
    async def insert_audit(
        self,
        write: Write,
        rows: list[Applied],
        hold_id: str | None = None,
        at: datetime | None = None,
    ) -> list[int]:
        """Append one audit entry per applied line; returns their ids."""
