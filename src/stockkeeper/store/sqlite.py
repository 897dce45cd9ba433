"""Embedded SQLite store: the default, so `stockkeeper serve` runs with nothing installed.

sqlite3 blocks, so each connection lives on its own thread. One connection writes (every write
transaction is BEGIN IMMEDIATE, which also serialises writers across `--workers` processes),
one reads, so a read never sees the writer's uncommitted rows. WAL lets them run side by side;
synchronous=FULL because an acknowledged purchase must survive a power cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from stockkeeper import metrics
from stockkeeper.domain import (
    AuditPage,
    Busy,
    Expiry,
    FeedEntry,
    Item,
    NoDatabase,
    Principal,
    Receipt,
    TokenInfo,
    Unavailable,
    Write,
)
from stockkeeper.holds import Hold, HoldReceipt, HoldWrite
from stockkeeper.retry import retrying
from stockkeeper.store import read_mode_sql
from stockkeeper.store.expiry import expire_batch
from stockkeeper.store.hold_writes import apply_hold_write, read_hold
from stockkeeper.store.protocol import HeldDrift, ReadModeView, StoreOptions
from stockkeeper.store.rows import AUDIT_COLUMNS, PURGED_NODE_KEY, audit_entry
from stockkeeper.store.sql_tx import HELD_DRIFT, Applied, Row, SqlTx
from stockkeeper.store.token_sql import (
    BUMP_TOKEN_GENERATION,
    LIVE_TOKENS,
    SQLITE_HAS_SCHEMA,
    TOKEN_GENERATION,
    generation,
    refuse_taken_name,
    row_principal,
    token_info,
)
from stockkeeper.store.writes import ExpireFirst, apply_write

T = TypeVar("T")

SCHEMA_VERSION = 1
_DOLLAR_PARAM = re.compile(r"\$(\d+)")
_NOW_MS = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"

# One definition for a new database and for the rebuild that upgrades an old one: SQLite cannot
# alter a CHECK, and holds added reasons to the audit's.
_AUDIT_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sku TEXT NOT NULL REFERENCES items (sku),
    version INTEGER NOT NULL,
    delta INTEGER NOT NULL,
    on_hand INTEGER NOT NULL CHECK (on_hand >= 0),
    held_delta INTEGER NOT NULL DEFAULT 0,
    held INTEGER NOT NULL DEFAULT 0,
    hold_id TEXT,
    user_name TEXT NOT NULL,
    on_behalf_of TEXT,
    reason TEXT NOT NULL CHECK (reason IN (
        'purchase', 'restock', 'order', 'set', 'hold', 'confirm', 'release', 'expire'
    )),
    idempotency_key TEXT,
    at TEXT NOT NULL,
    UNIQUE (sku, version)
);"""
_AUDIT_BEFORE_HOLDS = (
    "id, sku, version, delta, on_hand, user_name, on_behalf_of, reason, idempotency_key, at"
)

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS stockkeeper_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    sku TEXT PRIMARY KEY,
    on_hand INTEGER NOT NULL CONSTRAINT on_hand_never_negative CHECK (on_hand >= 0),
    version INTEGER NOT NULL CHECK (version >= 1),
    held INTEGER NOT NULL DEFAULT 0 CONSTRAINT held_within_on_hand
        CHECK (held >= 0 AND held <= on_hand)
);
"""
    + _AUDIT_TABLE.format(name="audit")
    + """
CREATE INDEX IF NOT EXISTS audit_by_at ON audit (at);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE rejected'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: DELETE rejected'); END;
-- REPLACE deletes the clashing row without firing the DELETE trigger: refuse the clash first.
CREATE TRIGGER IF NOT EXISTS audit_no_replace BEFORE INSERT ON audit
    WHEN EXISTS (
        SELECT 1 FROM audit WHERE id = NEW.id OR (sku = NEW.sku AND version = NEW.version)
    )
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: REPLACE rejected'); END;
CREATE TABLE IF NOT EXISTS idempotency_keys (
    user_name TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    response BLOB,
    created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
    PRIMARY KEY (user_name, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys (created_at);
CREATE TABLE IF NOT EXISTS tokens (
    hash BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('reader', 'clerk', 'admin')),
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS read_mode (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('redis', 'database')),
    active INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS read_mode_votes (worker TEXT PRIMARY KEY, until_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS holds (
    id TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    on_behalf_of TEXT,
    state TEXT NOT NULL CHECK (state IN ('active', 'confirmed', 'released', 'expired')),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    closed_at TEXT,
    CHECK ((state = 'active') = (closed_at IS NULL))
);
CREATE INDEX IF NOT EXISTS holds_due ON holds (expires_at) WHERE state = 'active';
CREATE TABLE IF NOT EXISTS hold_lines (
    hold_id TEXT NOT NULL REFERENCES holds (id),
    line INTEGER NOT NULL,
    sku TEXT NOT NULL REFERENCES items (sku),
    quantity INTEGER NOT NULL CHECK (quantity >= 1),
    confirmed INTEGER CHECK (confirmed >= 0 AND confirmed <= quantity),
    PRIMARY KEY (hold_id, line),
    UNIQUE (hold_id, sku)
);
CREATE INDEX IF NOT EXISTS hold_lines_by_sku ON hold_lines (sku);
"""
)
# Tokens are never deleted, so their rowids (the ids `token list` shows) never change, even
# under VACUUM.
_TOKEN_COLUMNS = "rowid AS id, name, role, created_at, revoked_at"
# Claims this interval's purge for the cluster: no row comes back if it is not yet due.
_CLAIM_PURGE = (
    "INSERT INTO stockkeeper_meta (key, value) VALUES ('last_purge_at', ?1) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value "
    "WHERE CAST(stockkeeper_meta.value AS REAL) <= ?2 RETURNING value"
)


def _transient(error: BaseException) -> str | None:
    if isinstance(error, sqlite3.OperationalError) and error.sqlite_errorcode in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    ):
        return "busy"
    return None


class _Connection:
    """One sqlite3 connection and the one thread allowed to use it."""

    def __init__(self, path: str, busy_timeout_ms: int) -> None:
        self._busy_timeout_ms = busy_timeout_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stockkeeper-sqlite")
        self._path = path
        self.conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(
                self._path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self._busy_timeout_ms / 1000,
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            return conn

        try:
            self.conn = await self.run(connect)
        except sqlite3.Error as error:
            raise Unavailable(f"cannot open database {self._path}: {error}") from error

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def execute(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        conn = self.conn
        assert conn is not None, "open() first"
        return await self.run(lambda: conn.execute(sql, params).fetchall())

    async def first(self, sql: str, *params: Any) -> sqlite3.Row | None:
        rows = await self.execute(sql, *params)
        return rows[0] if rows else None

    def rollback_if_open(self) -> None:
        """On this connection's thread only."""
        if self.conn is not None and self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    async def close(self) -> None:
        if self.conn is not None:
            await self.run(self.conn.close)
        self._executor.shutdown(wait=True)


class _SqliteStatements:
    """Runs the shared `$n` SQL as SQLite's numbered `?n` parameters, a list as a JSON array
    (for json_each) and a timestamp as fixed-width UTC text."""

    def __init__(self, db: _Connection) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._db.execute(_numbered(sql), *map(_parameter, args)))

    async def first(self, sql: str, *args: Any) -> Row | None:
        return await self._db.first(_numbered(sql), *map(_parameter, args))


def _parameter(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    if isinstance(value, list):
        return orjson.dumps(value).decode()
    return value


@functools.lru_cache(maxsize=64)
def _numbered(sql: str) -> str:
    return _DOLLAR_PARAM.sub(r"?\1", sql)


class _SqliteTx(SqlTx):
    lock_clause = hold_lock_clause = skip_locked_clause = ""

    @staticmethod
    def in_list(param: str) -> str:
        return f"IN (SELECT value FROM json_each({param}))"

    async def now(self) -> datetime:
        # One machine's clock: every process sharing the file reads the same one.
        return datetime.now(UTC)

    async def insert_audit(
        self,
        write: Write,
        rows: list[Applied],
        hold_id: str | None = None,
        at: datetime | None = None,
    ) -> list[int]:
        stamp = (at or datetime.now(UTC)).isoformat()
        ids = []
        for applied in rows:
            item = applied.item
            row = await self.db.first(
                "INSERT INTO audit (sku, version, delta, on_hand, held_delta, held, user_name, "
                "on_behalf_of, reason, idempotency_key, hold_id, at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
                item.sku,
                item.version,
                applied.delta,
                item.on_hand,
                applied.held_delta,
                item.held,
                write.user,
                write.on_behalf_of,
                write.reason.value,
                write.idempotency_key,
                hold_id,
                stamp,
            )
            assert row is not None
            ids.append(int(row["id"]))
        return ids


_FEED_COLUMNS = "id, sku, version, on_hand, held, at"
_FEED_BATCH_MAX = 10_000


def _feed_entry(row: sqlite3.Row) -> FeedEntry:
    at_s = datetime.fromisoformat(row["at"]).timestamp()
    return FeedEntry(row["sku"], row["version"], row["on_hand"], at_s, row["held"])


class _SqliteFeed:
    """The audit log's tail by rowid: writers hold the database lock from BEGIN IMMEDIATE to
    COMMIT, so ids are handed out in commit order and `id > last` skips nothing."""

    def __init__(self, reader: _Connection) -> None:
        self._reader = reader
        self._last_id: int | None = None

    async def poll(self) -> list[FeedEntry]:
        if self._last_id is None:
            row = await self._reader.first("SELECT coalesce(max(id), 0) AS id FROM audit")
            assert row is not None
            self._last_id = int(row["id"])
            return []
        rows = await self._reader.execute(
            f"SELECT {_FEED_COLUMNS} FROM audit WHERE id > ? ORDER BY id LIMIT ?",
            self._last_id,
            _FEED_BATCH_MAX,
        )
        if rows:
            self._last_id = int(rows[-1]["id"])
        return [_feed_entry(row) for row in rows]

    async def recent(self, seconds: float) -> list[FeedEntry]:
        since = datetime.fromtimestamp(time.time() - seconds, UTC).isoformat()
        rows = await self._reader.execute(
            f"SELECT {_FEED_COLUMNS} FROM audit AS a WHERE at > ? AND version = "
            "(SELECT max(version) FROM audit WHERE sku = a.sku)",
            since,
        )
        return [_feed_entry(row) for row in rows]


class _SqliteLocalView:
    """A connection used only from the event loop's thread: a point read or `PRAGMA
    data_version` costs a few microseconds, less than a hop to a store thread."""

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row

    def data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def last_id(self) -> int:
        return int(self._conn.execute("SELECT coalesce(max(id), 0) FROM audit").fetchone()[0])

    def changes_after(self, after_id: int, limit: int) -> list[tuple[int, FeedEntry]]:
        rows = self._conn.execute(
            f"SELECT {_FEED_COLUMNS} FROM audit WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [(int(row["id"]), _feed_entry(row)) for row in rows]

    def get_item(self, sku: str) -> Item | None:
        row = self._conn.execute("SELECT on_hand, version, held FROM items WHERE sku = ?", (sku,))
        found = row.fetchone()
        if found is None:
            return None
        return Item(sku, found["on_hand"], found["version"], found["held"])

    def close(self) -> None:
        self._conn.close()


class SqliteStore:
    def __init__(self, path: str, options: StoreOptions) -> None:
        self._path = path
        self._retry = options.retry
        self._writer = _Connection(path, options.lock_wait_ms_max)
        self._reader = _Connection(path, options.lock_wait_ms_max)
        self._write_lock = asyncio.Lock()
        self._pool_wait_ms_max = options.pool_wait_ms_max
        self._token_key: bytes | None = None
        self._local_view: _SqliteLocalView | None = None

    @classmethod
    async def connect(
        cls, path: str, options: StoreOptions | None = None, *, create: bool = True
    ) -> SqliteStore:
        """Open the file at `path`, made if missing unless `create` is False (NoDatabase)."""
        if not create and path != ":memory:" and not _is_file(path):
            raise NoDatabase(path)
        if path != ":memory:" and not Path(path).parent.is_dir():
            raise Unavailable(f"cannot open database {path}: no such directory")
        store = cls(path, options or StoreOptions())
        await store._writer.open()
        await store._reader.open()
        return store

    @contextlib.asynccontextmanager
    async def _writer_free(self) -> AsyncIterator[None]:
        """This process's one writer connection, waited for at most pool_wait_ms_max."""
        wait_ms = self._pool_wait_ms_max
        try:
            async with asyncio.timeout(wait_ms / 1000):
                await self._write_lock.acquire()
        except TimeoutError as error:
            metrics.BUSY_REFUSALS.inc()
            raise Busy(f"busy: the database writer was not free within {wait_ms} ms") from error
        try:
            yield
        finally:
            self._write_lock.release()

    async def _in_tx(self, op: Callable[[], Any]) -> Any:
        async def attempt() -> Any:
            async with self._writer_free():
                try:
                    await self._writer.execute("BEGIN IMMEDIATE")
                    result = await op()
                    await self._writer.execute("COMMIT")
                except BaseException:
                    # Cancelled too: the writer's thread may have begun a transaction (or failed
                    # to commit one) that this coroutine never saw end. Left open, it would hold
                    # the database's write lock for every process until this one exits.
                    await asyncio.shield(self._writer.run(self._writer.rollback_if_open))
                    raise
                return result

        return await retrying(attempt, _transient, self._retry)

    async def migrate(self) -> None:
        async def run() -> None:
            await self._upgrade_to_holds()
            await self._writer.run(lambda: _run_script(self._writer, _SCHEMA))
            await self._writer.execute(
                "INSERT INTO stockkeeper_meta (key, value) VALUES "
                "('schema_version', ?), ('token_key', ?) ON CONFLICT (key) DO NOTHING",
                str(SCHEMA_VERSION),
                secrets.token_hex(32),
            )
            await self._writer.execute(read_mode_sql.INITIAL_ROW)
            tokens = await self._writer.execute("PRAGMA table_info(tokens)")
            if "revoked_at" not in {column["name"] for column in tokens}:
                # Added after the first release; SQLite has no ADD COLUMN IF NOT EXISTS.
                await self._writer.execute("ALTER TABLE tokens ADD COLUMN revoked_at REAL")

        await self._in_tx(run)

    async def _upgrade_to_holds(self) -> None:
        """A database from before holds: `items` gains `held`, and `audit` is rebuilt with the
        held columns and the new reasons (its triggers go with the old table, and _SCHEMA
        makes them again). Inside migrate's transaction: all of it, or none."""
        columns = await self._writer.execute("PRAGMA table_info(audit)")
        names = {column["name"] for column in columns}
        if not names or "held" in names:
            return  # a new database, or one upgraded already
        await self._writer.execute(
            "ALTER TABLE items ADD COLUMN held INTEGER NOT NULL DEFAULT 0 "
            "CONSTRAINT held_within_on_hand CHECK (held >= 0 AND held <= on_hand)"
        )
        await self._writer.execute(_AUDIT_TABLE.format(name="audit_with_holds"))
        await self._writer.execute(
            f"INSERT INTO audit_with_holds ({_AUDIT_BEFORE_HOLDS}) "
            f"SELECT {_AUDIT_BEFORE_HOLDS} FROM audit ORDER BY id"
        )
        await self._writer.execute("DROP TABLE audit")
        await self._writer.execute("ALTER TABLE audit_with_holds RENAME TO audit")

    async def get_item(self, sku: str) -> Item | None:
        row = await self._reader.first(
            "SELECT on_hand, version, held FROM items WHERE sku = ?", sku
        )
        return None if row is None else Item(sku, row["on_hand"], row["version"], row["held"])

    def change_feed(self) -> _SqliteFeed:
        return _SqliteFeed(self._reader)

    def local_view(self) -> _SqliteLocalView:
        if self._local_view is None:
            self._local_view = _SqliteLocalView(self._path)
        return self._local_view

    async def write(self, write: Write) -> Receipt:
        result: Receipt = await self._with_expiry(
            lambda tx, first: apply_write(tx, write, expire_first=first)
        )
        return result

    async def write_hold(self, op: HoldWrite) -> HoldReceipt:
        result: HoldReceipt = await self._with_expiry(
            lambda tx, first: apply_hold_write(tx, op, expire_first=first)
        )
        return result

    async def _with_expiry(self, op: Callable[[_SqliteTx, bool], Awaitable[T]]) -> T:
        """Run `op` in a transaction; again, expiring overdue holds first, if it asks to."""
        try:
            return await self._in_tx(lambda: op(self._write_tx(), False))
        except ExpireFirst:
            return await self._in_tx(lambda: op(self._write_tx(), True))

    def _write_tx(self) -> _SqliteTx:
        return _SqliteTx(_SqliteStatements(self._writer))

    async def get_hold(self, hold_id: str) -> Hold | None:
        return await read_hold(_SqliteTx(_SqliteStatements(self._reader)), hold_id)

    async def expire_holds(self, limit: int) -> list[Expiry]:
        expired: list[Expiry] = await self._in_tx(lambda: expire_batch(self._write_tx(), limit))
        return expired

    async def held_drift(self) -> list[HeldDrift]:
        rows = await self._reader.execute(HELD_DRIFT)
        return [HeldDrift(row["sku"], row["held"], row["from_holds"]) for row in rows]

    async def audit_page(self, sku: str, after_version: int, limit: int) -> AuditPage:
        rows = await self._reader.execute(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE sku = ? AND version > ? "
            "ORDER BY version LIMIT ?",
            sku,
            after_version,
            limit + 1,
        )
        return AuditPage.from_fetched(
            [audit_entry(row, datetime.fromisoformat(row["at"])) for row in rows], limit
        )

    async def token_key(self) -> bytes:
        if self._token_key is None:
            row = await self._reader.first(
                "SELECT value FROM stockkeeper_meta WHERE key = 'token_key'"
            )
            assert row is not None, "migrate() creates the token key"
            self._token_key = bytes.fromhex(row["value"])
        return self._token_key

    async def has_schema(self) -> bool:
        return await self._reader.first(SQLITE_HAS_SCHEMA) is not None

    async def add_token(self, token_hash: bytes, principal: Principal) -> None:
        async def run() -> None:
            # BEGIN IMMEDIATE holds the write lock: no other writer between check and insert.
            live = await self._writer.first(
                "SELECT rowid AS id FROM tokens WHERE name = ? AND revoked_at IS NULL "
                "ORDER BY rowid LIMIT 1",
                principal.name,
            )
            refuse_taken_name(principal.name, None if live is None else live["id"])
            await self._writer.execute(
                "INSERT INTO tokens (hash, name, role, created_at) VALUES (?, ?, ?, ?)",
                token_hash,
                principal.name,
                principal.role.name.lower(),
                time.time(),
            )
            await self._writer.execute(BUMP_TOKEN_GENERATION)

        await self._in_tx(run)

    async def add_first_admin(self, token_hash: bytes, name: str) -> bool:
        async def run() -> bool:
            if await self._writer.first("SELECT 1 FROM tokens LIMIT 1"):
                return False
            await self._writer.execute(
                "INSERT INTO tokens (hash, name, role, created_at) VALUES (?, ?, 'admin', ?)",
                token_hash,
                name,
                time.time(),
            )
            await self._writer.execute(BUMP_TOKEN_GENERATION)
            return True

        created: bool = await self._in_tx(run)
        return created

    async def token_generation(self) -> int:
        row = await self._reader.first(TOKEN_GENERATION)
        return generation(None if row is None else row["value"])

    async def live_tokens(self) -> tuple[int, dict[bytes, Principal]]:
        # The counter first: a change committing after this read moves it past the value
        # returned, so the next check reloads.
        value = await self.token_generation()
        rows = await self._reader.execute(LIVE_TOKENS)
        return value, {bytes(row["hash"]): row_principal(row) for row in rows}

    async def list_tokens(self) -> list[TokenInfo]:
        rows = await self._reader.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY rowid")
        return [_token_info(row) for row in rows]

    async def revoke_token(self, token_id: int) -> TokenInfo | None:
        async def run() -> TokenInfo | None:
            row = await self._writer.first(
                "UPDATE tokens SET revoked_at = ? WHERE rowid = ? AND revoked_at IS NULL "
                f"RETURNING {_TOKEN_COLUMNS}",
                time.time(),
                token_id,
            )
            if row is None:
                return None
            await self._writer.execute(BUMP_TOKEN_GENERATION)
            return _token_info(row)

        revoked: TokenInfo | None = await self._in_tx(run)
        return revoked

    async def purge_idempotency_keys(self, older_than_s: int, every_s: int) -> int | None:
        async def run() -> int | None:
            # BEGIN IMMEDIATE serialises purgers across processes; the claim makes it one per
            # interval.
            now_s = time.time()
            if await self._writer.first(_CLAIM_PURGE, str(now_s), now_s - every_s) is None:
                return None
            conn = self._writer.conn
            assert conn is not None
            return await self._writer.run(
                lambda: (
                    conn.execute(
                        "DELETE FROM idempotency_keys WHERE created_at < ?",
                        (now_s - older_than_s,),
                    ).rowcount
                )
            )

        purged: int | None = await self._in_tx(run)
        return purged

    async def read_mode(self) -> ReadModeView:
        sql = _numbered(read_mode_sql.READ.format(now_ms=_NOW_MS))
        return read_mode_sql.view(await self._reader.first(sql))

    async def vote_database_reads(self, worker: str, ttl_ms: int) -> None:
        sql = _numbered(read_mode_sql.VOTE.format(now_ms=_NOW_MS))
        await self._in_tx(lambda: self._writer.execute(sql, worker, ttl_ms))

    async def switch_read_mode(self, epoch: int, mode: str) -> bool:
        async def run() -> bool:
            sql = _numbered(read_mode_sql.SWITCH.format(now_ms=_NOW_MS))
            switched = await self._writer.first(sql, epoch, mode)
            await self._writer.execute(read_mode_sql.FORGET_VOTES.format(now_ms=_NOW_MS))
            return switched is not None

        switched: bool = await self._in_tx(run)
        return switched

    async def activate_read_mode(self, epoch: int) -> None:
        sql = _numbered(read_mode_sql.ACTIVATE)
        await self._in_tx(lambda: self._writer.execute(sql, epoch))

    async def cache_node_purged(self, node: str) -> bool:
        sql = "SELECT 1 FROM stockkeeper_meta WHERE key = ?"
        return await self._reader.first(sql, PURGED_NODE_KEY + node) is not None

    async def record_cache_node_purged(self, node: str) -> None:
        sql = (
            "INSERT INTO stockkeeper_meta (key, value) VALUES (?1, datetime('now')) "
            "ON CONFLICT (key) DO NOTHING"
        )
        await self._in_tx(lambda: self._writer.execute(sql, PURGED_NODE_KEY + node))

    async def ping(self) -> None:
        try:
            await self._reader.execute("SELECT 1")
        except sqlite3.Error as error:
            raise Unavailable(f"database unreachable: {error}") from error

    async def close(self) -> None:
        if self._local_view is not None:
            self._local_view.close()
        await self._reader.close()
        await self._writer.close()


def _is_file(path: str) -> bool:
    return Path(path).is_file()


def _token_info(row: sqlite3.Row) -> TokenInfo:
    revoked_at = row["revoked_at"]
    return token_info(
        row,
        datetime.fromtimestamp(row["created_at"], UTC),
        None if revoked_at is None else datetime.fromtimestamp(revoked_at, UTC),
    )


def _run_script(db: _Connection, script: str) -> None:
    """executescript() would COMMIT our open transaction; run the statements one by one."""
    conn = db.conn
    assert conn is not None
    for statement in _split_statements(script):
        conn.execute(statement)


def _split_statements(script: str) -> list[str]:
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    assert not current.strip(), "the schema ends with a complete statement"
    return statements
