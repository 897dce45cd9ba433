"""Stores: where items, the audit log, idempotency keys and tokens are kept."""

from __future__ import annotations

from stockkeeper.retry import RetryPolicy
from stockkeeper.store.protocol import Store, Tx

DEFAULT_DATABASE_URL = "sqlite:///stockkeeper.db"

__all__ = ["DEFAULT_DATABASE_URL", "Store", "Tx", "open_store"]


async def open_store(
    url: str = DEFAULT_DATABASE_URL, *, pool_size: int = 10, retry: RetryPolicy | None = None
) -> Store:
    """Connect to the database a URL names: `postgresql://…`, or `sqlite:///path` (relative)
    and `sqlite:////path` (absolute)."""
    if url.startswith(("postgresql://", "postgres://")):
        from stockkeeper.store.postgres import PostgresStore

        return await PostgresStore.connect(url, pool_size=pool_size, retry=retry)
    if url.startswith("sqlite:///"):
        from stockkeeper.store.sqlite import SqliteStore

        return await SqliteStore.connect(url.removeprefix("sqlite:///"), retry=retry)
    raise ValueError(f"unsupported database URL {url!r}: use postgresql://… or sqlite:///path")
