"""The cluster read mode's SQL, shared by both backends (docs/cache.md, "One read source").

One row holds the epoch and its mode; votes are rows with an expiry, written only by workers
that cannot reach Redis. Times are milliseconds on the database's clock, so no two hosts'
clocks are ever compared. `{now_ms}` is the backend's expression for that clock.
"""

from __future__ import annotations

from stockkeeper.store.protocol import ReadModeView
from stockkeeper.store.sql_tx import Row

VOTE_KEEP_MS = 60_000  # expired votes are deleted this long after they lapse

INITIAL_ROW = (
    "INSERT INTO read_mode (id, epoch, mode, active) VALUES (1, 1, 'redis', true) "
    "ON CONFLICT (id) DO NOTHING"
)
_LIVE_VOTE = "SELECT 1 FROM read_mode_votes WHERE until_ms > {now_ms}"
READ = (
    "SELECT epoch, mode, active, EXISTS (" + _LIVE_VOTE + ") AS voted FROM read_mode WHERE id = 1"
)
VOTE = (
    "INSERT INTO read_mode_votes (worker, until_ms) VALUES ($1, {now_ms} + $2) "
    "ON CONFLICT (worker) DO UPDATE SET until_ms = excluded.until_ms"
)
# A vote committing concurrently with a switch to redis is not seen by it: its worker then sees
# redis mode, trips again and switches back. Safety never rests on votes, only on epochs.
SWITCH = (
    "UPDATE read_mode SET epoch = epoch + 1, mode = $2, active = false "
    "WHERE id = 1 AND epoch = $1 AND mode <> $2 "
    "AND ($2 = 'database' OR NOT EXISTS (" + _LIVE_VOTE + ")) RETURNING epoch"
)
FORGET_VOTES = f"DELETE FROM read_mode_votes WHERE until_ms < {{now_ms}} - {VOTE_KEEP_MS}"
ACTIVATE = "UPDATE read_mode SET active = true WHERE id = 1 AND epoch = $1 AND NOT active"


def view(row: Row | None) -> ReadModeView:
    assert row is not None, "migrate() creates the read mode row"
    return ReadModeView(
        int(row["epoch"]), str(row["mode"]), bool(row["active"]), bool(row["voted"])
    )
