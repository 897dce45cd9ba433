"""PostgreSQL store (asyncpg): the source of truth of the distributed setup.

asyncpg over psycopg 3: measured here 15-25% faster per query, which the read path pays
10,000 times a second. The pool's default reset on release (RESET ALL and friends, 150-200 µs
a checkout) is replaced by a rollback only when a connection comes back mid-transaction: no
code here leaves other session state behind.

TLS: the URL goes to asyncpg as it is, and asyncpg reads libpq's `sslmode`, `sslrootcert`,
`sslcert` and `sslkey` from it as libpq does: `require` refuses a server without TLS (it never
falls back to plain text), `verify-ca` checks the certificate, `verify-full` the host name too.

Behind a transaction pooler (PgBouncer's `pool_mode = transaction`, or `session`), the URL says
`?pooler=transaction`. Consecutive transactions of one client connection may then run in
different server sessions, so nothing here may rest on a session: no startup parameters
(PgBouncer refuses them), no prepared statement kept between transactions, no session-level
SET, lock, LISTEN, cursor or temporary table. Locks are transaction-scoped
(`pg_advisory_xact_lock`), the change feed and the read mode lease poll with single statements,
and each write sets `synchronous_commit` and `lock_timeout` for its own transaction (in both
modes, in messages it sends anyway). What the pooler costs is asyncpg's statement cache: each
statement is prepared (unnamed) and run in two round trips instead of one.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from stockkeeper import failpoints, metrics, tls
from stockkeeper.domain import (
    ON_HAND_MAX,
    AuditPage,
    Busy,
    Change,
    Expiry,
    FeedEntry,
    Item,
    LineChange,
    Principal,
    Reason,
    Receipt,
    TokenInfo,
    Unavailable,
    Write,
)
from stockkeeper.holds import Hold, HoldAction, HoldLine, HoldReceipt, HoldState, HoldWrite
from stockkeeper.retry import retrying
from stockkeeper.store import display_url, read_mode_sql
from stockkeeper.store.expiry import expire_batch
from stockkeeper.store.hold_writes import apply_hold_write, read_hold, refuse_hold_line
from stockkeeper.store.protocol import HeldDrift, LocalView, ReadModeView, StoreOptions
from stockkeeper.store.rows import AUDIT_COLUMNS, PURGED_NODE_KEY, audit_entry
from stockkeeper.store.sql_tx import HELD_DRIFT, Applied, Row, SqlTx
from stockkeeper.store.token_sql import (
    BUMP_TOKEN_GENERATION,
    LIVE_TOKENS,
    POSTGRES_HAS_SCHEMA,
    TOKEN_GENERATION,
    generation,
    refuse_taken_name,
    row_principal,
    token_info,
)
from stockkeeper.store.writes import ExpireFirst, apply_write, refuse

T = TypeVar("T")

# What a server needs of the schema to run on it: bumped only by a change older servers cannot
# run with (they refuse a newer version).
SCHEMA_VERSION = 1
# Bumped with every change to _SCHEMA: a start finding its own revision runs no DDL. (2: the
# audit xid, token ids and revocation and the read mode tables, added at version 1. 3: holds:
# items.held, the audit's held columns and reasons, the holds and hold_lines tables.)
SCHEMA_REVISION = 3
_MIGRATION_LOCK_ID = 0x5_70C_4EE9  # pg_advisory_xact_lock key: one migrator at a time
_PURGE_LOCK_ID = 0x5_70C_4EEA  # pg_try_advisory_xact_lock key: one idempotency key purger
_STATEMENT_CACHE_SIZE = 100  # asyncpg's default, on a direct connection

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stockkeeper_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    sku text PRIMARY KEY,
    on_hand bigint NOT NULL CONSTRAINT on_hand_never_negative CHECK (on_hand >= 0),
    version bigint NOT NULL CHECK (version >= 1)
);
CREATE TABLE IF NOT EXISTS audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku text NOT NULL REFERENCES items (sku),
    version bigint NOT NULL,
    delta bigint NOT NULL,
    on_hand bigint NOT NULL CHECK (on_hand >= 0),
    user_name text NOT NULL,
    on_behalf_of text,
    reason text NOT NULL,
    idempotency_key text,
    at timestamptz NOT NULL,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    UNIQUE (sku, version)
);
-- The change feed reads by transaction id (commit order is not id order), and replays by time.
ALTER TABLE audit ADD COLUMN IF NOT EXISTS xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS audit_by_xid ON audit (xid);
CREATE INDEX IF NOT EXISTS audit_by_at ON audit (at);
CREATE OR REPLACE FUNCTION stockkeeper_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % rejected', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE OR REPLACE TRIGGER audit_append_only_rows BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION stockkeeper_audit_append_only();
CREATE OR REPLACE TRIGGER audit_append_only_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION stockkeeper_audit_append_only();
CREATE TABLE IF NOT EXISTS idempotency_keys (
    user_name text NOT NULL,
    key text NOT NULL,
    request_hash bytea NOT NULL,
    response bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_name, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys (created_at);
CREATE TABLE IF NOT EXISTS tokens (
    hash bytea PRIMARY KEY,
    name text NOT NULL,
    role text NOT NULL CHECK (role IN ('reader', 'clerk', 'admin')),
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Added after the first release: one path for new and upgraded databases alike.
ALTER TABLE tokens ADD COLUMN IF NOT EXISTS id bigint GENERATED ALWAYS AS IDENTITY UNIQUE;
ALTER TABLE tokens ADD COLUMN IF NOT EXISTS revoked_at timestamptz;
CREATE TABLE IF NOT EXISTS read_mode (
    id int PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL,
    mode text NOT NULL CHECK (mode IN ('redis', 'database')),
    active boolean NOT NULL
);
CREATE TABLE IF NOT EXISTS read_mode_votes (
    worker text PRIMARY KEY,
    until_ms bigint NOT NULL
);
-- Holds (revision 3). The DEFAULTs are constants: no table is rewritten. An old server's
-- purchase of held stock fails this CHECK rather than oversell; the reasons' CHECK is added
-- NOT VALID (rows before it were checked by the narrower one), so no scan runs under its lock.
ALTER TABLE items ADD COLUMN IF NOT EXISTS held bigint NOT NULL DEFAULT 0;
ALTER TABLE items DROP CONSTRAINT IF EXISTS held_within_on_hand;
ALTER TABLE items ADD CONSTRAINT held_within_on_hand CHECK (held >= 0 AND held <= on_hand);
ALTER TABLE audit ADD COLUMN IF NOT EXISTS held_delta bigint NOT NULL DEFAULT 0;
ALTER TABLE audit ADD COLUMN IF NOT EXISTS held bigint NOT NULL DEFAULT 0;
ALTER TABLE audit ADD COLUMN IF NOT EXISTS hold_id text;
ALTER TABLE audit DROP CONSTRAINT IF EXISTS audit_reason_check;
ALTER TABLE audit ADD CONSTRAINT audit_reason_check CHECK (reason IN (
    'purchase', 'restock', 'order', 'set', 'hold', 'confirm', 'release', 'expire'
)) NOT VALID;
CREATE TABLE IF NOT EXISTS holds (
    id text PRIMARY KEY,
    user_name text NOT NULL,
    on_behalf_of text,
    state text NOT NULL CHECK (state IN ('active', 'confirmed', 'released', 'expired')),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    closed_at timestamptz,
    CHECK ((state = 'active') = (closed_at IS NULL))
);
-- Overdue holds are few (the expirer keeps up), and every stock-taking request looks for them.
CREATE INDEX IF NOT EXISTS holds_due ON holds (expires_at) WHERE state = 'active';
CREATE TABLE IF NOT EXISTS hold_lines (
    hold_id text NOT NULL REFERENCES holds (id),
    line int NOT NULL,
    sku text NOT NULL REFERENCES items (sku),
    quantity bigint NOT NULL CHECK (quantity >= 1),
    confirmed bigint CHECK (confirmed >= 0 AND confirmed <= quantity),
    PRIMARY KEY (hold_id, line),
    UNIQUE (hold_id, sku)
);
CREATE INDEX IF NOT EXISTS hold_lines_by_sku ON hold_lines (sku);
"""
_NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
_TOKEN_COLUMNS = "id, name, role, created_at, revoked_at"
# Claims this interval's purge for the cluster: no row comes back if it is not yet due.
_CLAIM_PURGE = """
INSERT INTO stockkeeper_meta (key, value) VALUES ('last_purge_at', extract(epoch FROM now())::text)
ON CONFLICT (key) DO UPDATE SET value = excluded.value
WHERE CAST(stockkeeper_meta.value AS float8) <= extract(epoch FROM now())::float8 - $1::float8
RETURNING value
"""
POOLER_MODE = "transaction"  # the one value of the URL's `pooler` parameter


def _pooler_mode(url: str) -> tuple[str, bool]:
    """The URL for asyncpg, without `pooler` (it would go on as a startup parameter), and
    whether a transaction pooler stands between us and PostgreSQL."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    modes = {value for key, value in pairs if key == "pooler"}
    if not modes:
        return url, False
    if modes != {POOLER_MODE}:
        raise ValueError(f"unsupported pooler={','.join(sorted(modes))}: use pooler={POOLER_MODE}")
    kept = [(key, value) for key, value in pairs if key != "pooler"]
    if any(key == "search_path" for key, _ in kept):
        # PgBouncer refuses it, or drops it when told to ignore it: the wrong schema, silently.
        raise ValueError(
            "search_path cannot pass a transaction pooler: set it for the role "
            "(ALTER ROLE … SET search_path) or the database instead"
        )
    return urlunsplit(parts._replace(query=urlencode(kept, safe="/,"))), True


def _lock_timeout(options: StoreOptions) -> str:
    return f"{options.lock_wait_ms_max}ms"


def _refusal_hint(error: BaseException, pooled: bool) -> str:
    """What to do about a pooler refusing a startup parameter."""
    if "unsupported startup parameter" not in str(error):
        return ""
    if pooled:
        return " (a transaction pooler passes no session settings: take it out of the URL)"
    return f" (behind PgBouncer or another pooler? add ?pooler={POOLER_MODE} to the URL)"


async def _schema_state(conn: asyncpg.Connection) -> tuple[int, int]:
    """(version, revision) of the schema; 0 for what is not there yet (no schema at all, or
    one older than revisions)."""
    # Asked, not caught: an error would abort the migration's transaction that asks too.
    if not await conn.fetchval("SELECT to_regclass('stockkeeper_meta') IS NOT NULL"):
        return 0, 0
    rows = await conn.fetch(
        "SELECT key, value FROM stockkeeper_meta WHERE key IN ('schema_version', 'schema_revision')"
    )
    found = {row["key"]: int(row["value"]) for row in rows}
    return found.get("schema_version", 0), found.get("schema_revision", 0)


def _check_version(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema is version {version}, newer than this stockkeeper "
            f"({SCHEMA_VERSION}): upgrade stockkeeper"
        )


_TRANSIENT = {
    asyncpg.exceptions.DeadlockDetectedError: "deadlock",
    asyncpg.exceptions.SerializationError: "serialization",
}
_UNREACHABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    # Seen when the server ended the session while the client still thought it idle.
    asyncpg.exceptions.InternalClientError,
)


def _quiet_pool_floor(record: logging.LogRecord) -> bool:
    """Drop asyncpg's "Failed to restore the pool connection floor" warning (a traceback at
    1, 2, 4, 8 ... s while the database is down) when the fault is a known outage: the loops
    that use the database (change feed, read mode lease, token snapshot) log its start and end
    once each (stockkeeper.outage_log). Anything unexpected still passes, with its traceback."""
    if not record.getMessage().startswith("Failed to restore the pool connection floor"):
        return True
    error = record.exc_info[1] if record.exc_info else None
    return error is None or not isinstance(error, _UNREACHABLE)


logging.getLogger("asyncpg.pool").addFilter(_quiet_pool_floor)


class _ConnectionLost(Exception):
    """The connection broke before COMMIT was sent, so the server rolled the work back: safe to
    run again (on another connection)."""


def _refused_before_sending(error: BaseException) -> bool:
    """asyncpg refused to begin the operation: the server ended the session (its FATAL came
    while the connection sat idle in the pool) and the protocol is still consuming that error.
    It checks its state before writing a byte, so nothing reached the server: safe to run
    again, even a statement that commits by itself."""
    return isinstance(
        error, asyncpg.exceptions.InternalClientError
    ) and "cannot switch to state" in str(error)


def _transient(error: BaseException) -> str | None:
    if isinstance(error, _ConnectionLost):
        return "connection_lost"
    return _TRANSIENT.get(type(error))


async def rollback_if_open(conn: asyncpg.Connection) -> None:
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class _PgStatements:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self.conn.fetch(sql, *args))

    async def first(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = await self.conn.fetchrow(sql, *args)
        return row


class _PgTx(SqlTx):
    @staticmethod
    def in_list(param: str) -> str:
        return f"= ANY({param}::text[])"

    async def now(self) -> datetime:
        row = await self.db.first("SELECT clock_timestamp() AS now")
        assert row is not None
        now: datetime = row["now"]
        return now

    async def insert_audit(
        self,
        write: Write,
        rows: list[Applied],
        hold_id: str | None = None,
        at: datetime | None = None,
    ) -> list[int]:
        # clock_timestamp(), not now(): now() is when the transaction began, which may be long
        # before it won the row lock; this is as close to the commit as SQL can see.
        records = await self.db.fetch(
            "INSERT INTO audit (sku, version, delta, on_hand, held_delta, held, user_name, "
            "on_behalf_of, reason, idempotency_key, hold_id, at) "
            "SELECT sku, version, delta, on_hand, held_delta, held, $7, $8, $9, $10, $11, "
            "coalesce($12::timestamptz, clock_timestamp()) FROM unnest($1::text[], $2::bigint[], "
            "$3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[]) "
            "WITH ORDINALITY AS line (sku, version, delta, on_hand, held_delta, held, n) "
            "ORDER BY n RETURNING id, sku, version",
            [row.item.sku for row in rows],
            [row.item.version for row in rows],
            [row.delta for row in rows],
            [row.item.on_hand for row in rows],
            [row.held_delta for row in rows],
            [row.item.held for row in rows],
            write.user,
            write.on_behalf_of,
            write.reason.value,
            write.idempotency_key,
            hold_id,
            at,
        )
        # RETURNING promises no order; (sku, version) is unique, so map by it.
        ids = {(record["sku"], record["version"]): record["id"] for record in records}
        return [ids[row.item.sku, row.item.version] for row in rows]


# Whether an active hold on SKU $1 is past its expires_at (then a refusal runs again, first
# expiring it): the statement's own clock, read after its UPDATE won or gave up the row.
_OVERDUE_ON_SKU = """EXISTS (
    SELECT 1 FROM holds AS h JOIN hold_lines AS l ON l.hold_id = h.id
    WHERE h.state = 'active' AND h.expires_at <= clock_timestamp() AND l.sku = $1
)"""

# A one-line hold without an idempotency key, in one statement and one round trip, as a
# purchase (_ADJUST): the conditional write on `available`, the hold, its line and its audit
# entry commit together, and a refusal changes nothing. `now` is read after the UPDATE won the
# row, so ttl_s never includes a wait for it; `seen` and `due` as in _ADJUST.
_HOLD_ONE_LINE = f"""
    WITH changed AS (
        UPDATE items SET held = held + $2, version = version + 1
        WHERE sku = $1 AND on_hand - held >= $2
        AND set_config('synchronous_commit', 'on', true) IS NOT NULL
        AND set_config('lock_timeout', $7, true) IS NOT NULL
        RETURNING sku, on_hand, version, held, clock_timestamp() AS now
    ), hold AS (
        INSERT INTO holds (id, user_name, on_behalf_of, state, created_at, expires_at)
        SELECT $3, $4, $5, 'active', now, now + make_interval(secs => $6) FROM changed
        RETURNING expires_at
    ), line AS (
        INSERT INTO hold_lines (hold_id, line, sku, quantity) SELECT $3, 1, sku, $2 FROM changed
    ), audited AS (
        INSERT INTO audit (sku, version, delta, on_hand, held_delta, held, user_name,
            on_behalf_of, reason, hold_id, at)
        SELECT sku, version, 0, on_hand, $2, held, $4, $5, 'hold', $3, now FROM changed
        RETURNING id
    )
    SELECT c.on_hand, c.version, c.held, h.expires_at, a.id AS audit_id,
        i.on_hand - i.held AS seen, c.sku IS NULL AND {_OVERDUE_ON_SKU} AS due
    FROM (SELECT 1) AS one
    LEFT JOIN changed AS c ON true
    LEFT JOIN hold AS h ON true
    LEFT JOIN audited AS a ON true
    LEFT JOIN items AS i ON i.sku = $1
"""


async def _hold_in_one_statement(
    conn: asyncpg.Connection, op: HoldWrite, lock_timeout: str
) -> HoldReceipt:
    assert op.lines is not None, "a new hold has lines"
    (line,) = op.lines
    row = await conn.fetchrow(
        _HOLD_ONE_LINE,
        line.sku,
        line.quantity,
        op.hold_id,
        op.user,
        op.on_behalf_of,
        float(op.ttl_s),
        lock_timeout,
    )
    assert row is not None, "the statement returns exactly one row"
    if row["version"] is None:
        available = await _refused_available(conn, line.sku, row["seen"], line.quantity)
        refuse_hold_line(line.sku, line.quantity, available, row["due"])
    change = Change(
        line.sku, 0, row["on_hand"], row["version"], row["audit_id"], line.quantity, row["held"]
    )
    lines = (HoldLine(line.sku, line.quantity),)
    return HoldReceipt(Hold(op.hold_id, HoldState.ACTIVE, row["expires_at"], lines, (change,)))


async def _refused_available(
    conn: asyncpg.Connection, sku: str, seen: int | None, wanted: int
) -> int | None:
    """What a refused one-statement write says is available: `seen`, in its snapshot, unless
    that was enough, yet refused: a concurrent change won the row first, and the UPDATE
    re-checked its newer version. Then what is there now."""
    if seen is None or seen < wanted:
        return seen
    value: int | None = await conn.fetchval("SELECT on_hand - held FROM items WHERE sku = $1", sku)
    return value


def _tx(conn: asyncpg.Connection) -> _PgTx:
    return _PgTx(_PgStatements(conn))


class _PgFeed:
    """The audit log's tail by transaction snapshot, so a late commit is never skipped.

    Each poll is one statement: the rows visible in its own snapshot whose transaction is at or
    above the previous snapshot's xmax, or was in progress then (its xip), plus the snapshot
    itself. Every other transaction below the previous xmax had already committed (and was
    read) or aborted. Identity ids are handed out before commit, so `id > last` would skip a
    transaction that took id 41 and committed after the one that took 42.
    """

    _POLL = """
        SELECT pg_snapshot_xmax(s.snap)::text AS xmax,
               ARRAY(SELECT x::text FROM pg_snapshot_xip(s.snap) AS x) AS xip,
               a.sku, a.version, a.on_hand, a.held, extract(epoch FROM a.at)::float8 AS at_s
        FROM (SELECT pg_current_snapshot() AS snap) AS s
        LEFT JOIN LATERAL (
            SELECT id, sku, version, on_hand, held, at FROM audit
            WHERE xid >= $1::text::xid8 AND xid < pg_snapshot_xmax(s.snap)
            UNION ALL
            SELECT id, sku, version, on_hand, held, at FROM audit
            WHERE xid = ANY($2::text[]::xid8[]) AND xid < $1::text::xid8
            ORDER BY id
        ) AS a ON true
    """
    # Both halves are bounded index ranges. As `xid >= $1 OR xid = ANY($2)` the planner chose a
    # scan of the whole table wherever `audit` had no statistics yet (autovacuum off): 227 ms
    # at 351k rows, 100 times a second per server. No row visible in the snapshot has an xid at
    # or above its xmax, and every xid of the previous xip lies below the previous xmax, so the
    # bounds change no answer.

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._xmax: str | None = None
        self._xip: list[str] = []

    async def poll(self) -> list[FeedEntry]:
        # Positioning uses the same statement with an xmax no transaction can reach.
        after = self._xmax if self._xmax is not None else str(2**63 - 1)
        rows = await self._store._run(lambda conn: conn.fetch(self._POLL, after, self._xip))
        self._xmax, self._xip = rows[0]["xmax"], list(rows[0]["xip"])
        if rows[0]["sku"] is None:
            return []
        return [_feed_entry(r) for r in rows]

    async def recent(self, seconds: float) -> list[FeedEntry]:
        rows = await self._store._run(
            lambda conn: conn.fetch(
                "SELECT DISTINCT ON (sku) sku, version, on_hand, held, "
                "extract(epoch FROM at)::float8 AS at_s FROM audit "
                "WHERE at > clock_timestamp() - make_interval(secs => $1) "
                "ORDER BY sku, version DESC",
                seconds,
            )
        )
        return [_feed_entry(r) for r in rows]


def _feed_entry(row: asyncpg.Record) -> FeedEntry:
    return FeedEntry(row["sku"], row["version"], row["on_hand"], row["at_s"], row["held"])


# A purchase or restock without an idempotency key, in one statement and one round trip: the
# conditional change and its audit entry commit together (a statement is its own transaction),
# and a refusal changes nothing, so it needs no transaction at all. `seen` is on_hand in the
# statement's snapshot, for the refusal's message; `due`, on a refusal, says an overdue hold
# still holds some of the SKU's stock (then the write runs again, expiring it first).
_ADJUST = f"""
    WITH changed AS (
        UPDATE items SET on_hand = on_hand + $2, version = version + 1
        WHERE sku = $1 AND on_hand - held + $2 >= 0 AND on_hand + $2 <= $3
        -- Local to the statement's own transaction, so they hold at its COMMIT, and evaluated
        -- before it can wait for the row lock (its table locks, taken earlier, wait for DDL).
        AND set_config('synchronous_commit', 'on', true) IS NOT NULL
        AND set_config('lock_timeout', $7, true) IS NOT NULL
        RETURNING sku, on_hand, version, held
    ), audited AS (
        INSERT INTO audit (sku, version, delta, on_hand, held, user_name, on_behalf_of, reason, at)
        SELECT sku, version, $2, on_hand, held, $4, $5, $6, clock_timestamp() FROM changed
        RETURNING id
    )
    SELECT c.on_hand, c.version, c.held, a.id AS audit_id, i.on_hand - i.held AS seen,
        c.sku IS NULL AND {_OVERDUE_ON_SKU} AS due
    FROM (SELECT 1) AS one
    LEFT JOIN changed AS c ON true
    LEFT JOIN audited AS a ON true
    LEFT JOIN items AS i ON i.sku = $1
"""


async def _adjust_in_one_statement(
    conn: asyncpg.Connection, write: Write, line: LineChange, lock_timeout: str
) -> Receipt:
    row = await conn.fetchrow(
        _ADJUST,
        line.sku,
        line.delta,
        ON_HAND_MAX,
        write.user,
        write.on_behalf_of,
        write.reason.value,
        lock_timeout,
    )
    assert row is not None, "the statement returns exactly one row"
    if row["version"] is not None:
        change = Change(
            line.sku, line.delta, row["on_hand"], row["version"], row["audit_id"], held=row["held"]
        )
        return Receipt((change,))
    if row["due"]:
        raise ExpireFirst()
    seen = row["seen"]
    # A restock is refused only over the cap: what is available does not change why.
    available = (
        seen if line.delta > 0 else await _refused_available(conn, line.sku, seen, -line.delta)
    )
    refuse(line, available, is_order=False)


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool, options: StoreOptions) -> None:
        self._pool = pool
        self._options = options
        self._token_key: bytes | None = None
        self._lock_timeout = _lock_timeout(options)
        # One message, one round trip, as BEGIN alone. SET LOCAL lasts until COMMIT, so it
        # holds there also when a transaction pooler gave this transaction a new session.
        self._begin = (
            "BEGIN; SET LOCAL synchronous_commit = on; "
            f"SET LOCAL lock_timeout = '{self._lock_timeout}'"
        )

    @classmethod
    async def connect(cls, url: str, options: StoreOptions | None = None) -> PostgresStore:
        options = options or StoreOptions()
        driver_url, pooled = _pooler_mode(url)
        # An acknowledged purchase must survive a crash, whatever the database's default. Each
        # write sets both itself (_begin, _ADJUST), all that a pooler lets through; straight at
        # PostgreSQL they are startup parameters too, bounding every statement's lock waits.
        session = {"synchronous_commit": "on", "lock_timeout": _lock_timeout(options)}
        try:
            pool = await asyncpg.create_pool(
                driver_url,
                min_size=1,
                max_size=options.pool_size,
                reset=rollback_if_open,
                server_settings={} if pooled else session,
                # A prepared statement lives in one server session. Uncached, asyncpg prepares
                # each statement unnamed and ends the prepare with Flush, not Sync, so the pooler
                # keeps it on one server session until it has run.
                statement_cache_size=0 if pooled else _STATEMENT_CACHE_SIZE,
                command_timeout=30,
                timeout=5,
            )
        except _UNREACHABLE as error:
            if hint := _refusal_hint(error, pooled):
                raise Unavailable(
                    f"database at {display_url(url)} refused the connection: {error}{hint}"
                ) from error
            reason = tls.describe(error) or error
            raise Unavailable(f"database unreachable at {display_url(url)}: {reason}") from error
        except asyncpg.PostgresError as error:
            raise Unavailable(
                f"database at {display_url(url)} refused the connection: {error}"
            ) from error
        return cls(pool, options)

    async def _run(
        self, op: Callable[[asyncpg.Connection], Awaitable[T]], *, commits: bool = False
    ) -> T:
        """Run `op` on a pooled connection; again, on a fresh one, if the connection breaks,
        unless `op` is a statement that commits by itself: then the outcome is unknown."""

        async def attempt() -> T:
            conn = await self._acquire()
            try:
                return await op(conn)
            except _UNREACHABLE as error:
                if commits and not _refused_before_sending(error):
                    raise Unavailable(
                        f"connection lost during the write, outcome unknown: {error}"
                    ) from error
                raise _ConnectionLost(str(error)) from error
            except asyncpg.exceptions.LockNotAvailableError as error:
                # Not retried: a row held this long means overload; waiting more adds to it.
                raise Unavailable(
                    f"waited over {self._options.lock_wait_ms_max} ms for a lock"
                ) from error
            finally:
                await self._pool.release(conn)

        return await retrying(attempt, _transient, self._options.retry)

    async def _acquire(self) -> asyncpg.Connection:
        wait_ms = self._options.pool_wait_ms_max
        try:
            return await self._pool.acquire(timeout=wait_ms / 1000)
        except TimeoutError as error:
            if (
                self._pool.get_idle_size() == 0
                and self._pool.get_size() >= self._pool.get_max_size()
            ):
                metrics.BUSY_REFUSALS.inc()
                raise Busy(f"busy: no database connection free within {wait_ms} ms") from error
            raise Unavailable(f"database unreachable: no connection within {wait_ms} ms") from error
        except _UNREACHABLE as error:
            raise Unavailable(f"database unreachable: {error}") from error

    async def _in_tx(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async def run(conn: asyncpg.Connection) -> T:
            await conn.execute(self._begin)
            try:
                result = await op(conn)
            except BaseException:
                if not conn.is_closed():
                    await conn.execute("ROLLBACK")
                raise
            try:
                await conn.execute("COMMIT")
            except _UNREACHABLE as error:
                # Not retried: the COMMIT may have landed. A retry with the same Idempotency-Key
                # settles it either way.
                raise Unavailable(
                    f"connection lost during COMMIT, outcome unknown: {error}"
                ) from error
            return result

        return await self._run(run)

    async def migrate(self) -> None:
        """Create or upgrade the schema, unless it is at this revision already. The DDL takes
        locks even when it changes nothing (ALTER TABLE … IF NOT EXISTS takes ACCESS EXCLUSIVE
        on audit): run on every start, it stalled the cluster's writes and deadlocked with
        them when a server restarted under load. Now it runs once per upgrade."""
        version, revision = await self._run(_schema_state)
        if revision >= SCHEMA_REVISION:  # never re-run older DDL over a newer revision's
            _check_version(version)
            return

        async def run(conn: asyncpg.Connection) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_ID)
            # Servers started together all saw the old revision; the first to get the lock
            # upgrades, and the others must not take the DDL's locks again after it.
            if (await _schema_state(conn))[1] >= SCHEMA_REVISION:
                return
            await failpoints.hit("store.migrate.before_ddl")
            await conn.execute(_SCHEMA)
            await conn.execute(
                "INSERT INTO stockkeeper_meta (key, value) VALUES "
                "('schema_version', $1), ('token_key', $2) "
                "ON CONFLICT (key) DO NOTHING",
                str(SCHEMA_VERSION),
                secrets.token_hex(32),
            )
            await conn.execute(read_mode_sql.INITIAL_ROW)
            _check_version((await _schema_state(conn))[0])
            await conn.execute(
                "INSERT INTO stockkeeper_meta (key, value) VALUES ('schema_revision', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value "
                "WHERE CAST(stockkeeper_meta.value AS int) < CAST(excluded.value AS int)",
                str(SCHEMA_REVISION),
            )

        await self._in_tx(run)

    async def get_item(self, sku: str) -> Item | None:
        row = await self._run(
            lambda conn: conn.fetchrow(
                "SELECT on_hand, version, held FROM items WHERE sku = $1", sku
            )
        )
        return None if row is None else Item(sku, row["on_hand"], row["version"], row["held"])

    def change_feed(self) -> _PgFeed:
        return _PgFeed(self)

    def local_view(self) -> LocalView | None:
        return None  # another server's commit is invisible to this process without a query

    async def write(self, write: Write) -> Receipt:
        if write.idempotency_key is None and write.reason in (Reason.PURCHASE, Reason.RESTOCK):
            (line,) = write.lines
            await failpoints.hit("store.write.before_change")
            try:
                return await self._run(
                    lambda conn: _adjust_in_one_statement(conn, write, line, self._lock_timeout),
                    commits=True,
                )
            except ExpireFirst:
                return await self._in_tx(
                    lambda conn: apply_write(_tx(conn), write, expire_first=True)
                )
        return await self._with_expiry(
            lambda conn, first: apply_write(_tx(conn), write, expire_first=first)
        )

    async def write_hold(self, op: HoldWrite) -> HoldReceipt:
        one_line = op.lines is not None and len(op.lines) == 1
        if op.action is HoldAction.CREATE and op.idempotency_key is None and one_line:
            await failpoints.hit("store.write.before_change")
            try:
                return await self._run(
                    lambda conn: _hold_in_one_statement(conn, op, self._lock_timeout),
                    commits=True,
                )
            except ExpireFirst:
                return await self._in_tx(
                    lambda conn: apply_hold_write(_tx(conn), op, expire_first=True)
                )
        return await self._with_expiry(
            lambda conn, first: apply_hold_write(_tx(conn), op, expire_first=first)
        )

    async def _with_expiry(self, op: Callable[[asyncpg.Connection, bool], Awaitable[T]]) -> T:
        """Run `op` in a transaction; again, expiring overdue holds first, if it asks to."""
        try:
            return await self._in_tx(lambda conn: op(conn, False))
        except ExpireFirst:
            return await self._in_tx(lambda conn: op(conn, True))

    async def get_hold(self, hold_id: str) -> Hold | None:
        return await self._run(lambda conn: read_hold(_tx(conn), hold_id))

    async def expire_holds(self, limit: int) -> list[Expiry]:
        return await self._in_tx(lambda conn: expire_batch(_tx(conn), limit))

    async def held_drift(self) -> list[HeldDrift]:
        rows = await self._run(lambda conn: conn.fetch(HELD_DRIFT))
        return [HeldDrift(row["sku"], row["held"], row["from_holds"]) for row in rows]

    async def audit_page(self, sku: str, after_version: int, limit: int) -> AuditPage:
        rows = await self._run(
            lambda conn: conn.fetch(
                f"SELECT {AUDIT_COLUMNS} FROM audit WHERE sku = $1 AND version > $2 "
                "ORDER BY version LIMIT $3",
                sku,
                after_version,
                limit + 1,
            )
        )
        return AuditPage.from_fetched([audit_entry(row, row["at"]) for row in rows], limit)

    async def token_key(self) -> bytes:
        if self._token_key is None:
            value = await self._run(
                lambda conn: conn.fetchval(
                    "SELECT value FROM stockkeeper_meta WHERE key = 'token_key'"
                )
            )
            assert value is not None, "migrate() creates the token key"
            self._token_key = bytes.fromhex(value)
        return self._token_key

    async def has_schema(self) -> bool:
        return bool(await self._run(lambda conn: conn.fetchval(POSTGRES_HAS_SCHEMA)))

    async def add_token(self, token_hash: bytes, principal: Principal) -> None:
        async def run(conn: asyncpg.Connection) -> None:
            # The lock add_first_admin takes: no other token insert between check and insert,
            # so no two live tokens share a name, also when two hosts create one at once.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_ID)
            live_id = await conn.fetchval(
                "SELECT id FROM tokens WHERE name = $1 AND revoked_at IS NULL ORDER BY id LIMIT 1",
                principal.name,
            )
            refuse_taken_name(principal.name, live_id)
            await conn.execute(
                "INSERT INTO tokens (hash, name, role) VALUES ($1, $2, $3)",
                token_hash,
                principal.name,
                principal.role.name.lower(),
            )
            await conn.execute(BUMP_TOKEN_GENERATION)

        await self._in_tx(run)

    async def add_first_admin(self, token_hash: bytes, name: str) -> bool:
        async def run(conn: asyncpg.Connection) -> bool:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_ID)
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tokens)"):
                return False
            await conn.execute(
                "INSERT INTO tokens (hash, name, role) VALUES ($1, $2, 'admin')", token_hash, name
            )
            await conn.execute(BUMP_TOKEN_GENERATION)
            return True

        return await self._in_tx(run)

    async def token_generation(self) -> int:
        return generation(await self._run(lambda conn: conn.fetchval(TOKEN_GENERATION)))

    async def live_tokens(self) -> tuple[int, dict[bytes, Principal]]:
        async def run(conn: asyncpg.Connection) -> tuple[int, dict[bytes, Principal]]:
            # The counter first: a change committing after this read moves it past the value
            # returned, so the next check reloads.
            value = await conn.fetchval(TOKEN_GENERATION)
            rows = await conn.fetch(LIVE_TOKENS)
            return generation(value), {bytes(row["hash"]): row_principal(row) for row in rows}

        return await self._run(run)

    async def list_tokens(self) -> list[TokenInfo]:
        rows = await self._run(
            lambda conn: conn.fetch(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY id")
        )
        return [token_info(row, row["created_at"], row["revoked_at"]) for row in rows]

    async def revoke_token(self, token_id: int) -> TokenInfo | None:
        async def run(conn: asyncpg.Connection) -> TokenInfo | None:
            row = await conn.fetchrow(
                "UPDATE tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL "
                f"RETURNING {_TOKEN_COLUMNS}",
                token_id,
            )
            if row is None:
                return None
            await conn.execute(BUMP_TOKEN_GENERATION)
            return token_info(row, row["created_at"], row["revoked_at"])

        return await self._in_tx(run)

    async def purge_idempotency_keys(self, older_than_s: int, every_s: int) -> int | None:
        async def run(conn: asyncpg.Connection) -> int | None:
            # Skip rather than wait: whoever holds the lock is doing this very purge.
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _PURGE_LOCK_ID):
                return None
            if await conn.fetchval(_CLAIM_PURGE, float(every_s)) is None:
                return None
            status = await conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
                float(older_than_s),
            )
            return int(status.rsplit(" ", 1)[-1])

        return await self._in_tx(run)

    async def read_mode(self) -> ReadModeView:
        sql = read_mode_sql.READ.format(now_ms=_NOW_MS)
        return read_mode_sql.view(await self._run(lambda conn: conn.fetchrow(sql)))

    async def vote_database_reads(self, worker: str, ttl_ms: int) -> None:
        sql = read_mode_sql.VOTE.format(now_ms=_NOW_MS)
        await self._run(lambda conn: conn.execute(sql, worker, ttl_ms))

    async def switch_read_mode(self, epoch: int, mode: str) -> bool:
        async def run(conn: asyncpg.Connection) -> bool:
            switched = await conn.fetchval(read_mode_sql.SWITCH.format(now_ms=_NOW_MS), epoch, mode)
            await conn.execute(read_mode_sql.FORGET_VOTES.format(now_ms=_NOW_MS))
            return switched is not None

        return await self._in_tx(run)

    async def activate_read_mode(self, epoch: int) -> None:
        await self._run(lambda conn: conn.execute(read_mode_sql.ACTIVATE, epoch))

    async def cache_node_purged(self, node: str) -> bool:
        sql = "SELECT 1 FROM stockkeeper_meta WHERE key = $1"
        return await self._run(lambda conn: conn.fetchval(sql, PURGED_NODE_KEY + node)) is not None

    async def record_cache_node_purged(self, node: str) -> None:
        sql = (
            "INSERT INTO stockkeeper_meta (key, value) VALUES ($1, now()::text) "
            "ON CONFLICT (key) DO NOTHING"
        )
        await self._run(lambda conn: conn.execute(sql, PURGED_NODE_KEY + node))

    async def ping(self) -> None:
        await self._run(lambda conn: conn.fetchval("SELECT 1"))

    async def close(self) -> None:
        await self._pool.close()
