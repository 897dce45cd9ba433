"""Token SQL both backends share.

`token_generation` in stockkeeper_meta moves in the same transaction as every token create and
revoke, so a server learns with one cheap query whether its token snapshot is still current.
The row appears with the first token, so databases made before it need no upgrade step.
"""

from __future__ import annotations

from datetime import datetime

from stockkeeper.domain import Principal, Role, TokenInfo, TokenNameTaken
from stockkeeper.store.sql_tx import Row

TOKEN_GENERATION = "SELECT value FROM stockkeeper_meta WHERE key = 'token_generation'"
BUMP_TOKEN_GENERATION = (
    "INSERT INTO stockkeeper_meta (key, value) VALUES ('token_generation', '1') "
    "ON CONFLICT (key) DO UPDATE "
    "SET value = CAST(CAST(stockkeeper_meta.value AS bigint) + 1 AS text)"
)
LIVE_TOKENS = "SELECT hash, name, role FROM tokens WHERE revoked_at IS NULL"
# Whether stockkeeper's schema exists, without making it (tokens commands refuse to create it).
SQLITE_HAS_SCHEMA = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stockkeeper_meta'"
POSTGRES_HAS_SCHEMA = "SELECT to_regclass('stockkeeper_meta') IS NOT NULL"


def refuse_taken_name(name: str, live_id: int | None) -> None:
    """Raise TokenNameTaken if a live token (id `live_id`) already has `name`: the audit `user`
    must name one token. Called in the inserting transaction, after the check's query."""
    if live_id is not None:
        raise TokenNameTaken(name, live_id)


def generation(value: str | None) -> int:
    """The counter's value; 0 before any token was made."""
    return 0 if value is None else int(value)


def row_principal(row: Row) -> Principal:
    return Principal(row["name"], Role.parse(row["role"]))


def token_info(row: Row, created_at: datetime, revoked_at: datetime | None) -> TokenInfo:
    return TokenInfo(row["id"], row["name"], Role.parse(row["role"]), created_at, revoked_at)
