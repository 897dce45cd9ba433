"""Stores: where items, the audit log, idempotency keys and tokens are kept."""

from __future__ import annotations

from stockkeeper.store.protocol import Store, StoreOptions

DEFAULT_DATABASE_URL = "sqlite:///stockkeeper.db"

__all__ = ["DEFAULT_DATABASE_URL", "Store", "StoreOptions", "open_store"]


async def open_store(url: str = DEFAULT_DATABASE_URL, options: StoreOptions | None = None) -> Store:
    """Connect to the database a URL names: `postgresql://…`, or `sqlite:///path` (relative)
    and `sqlite:////path` (absolute)."""
    options = options or StoreOptions()
    if url.startswith(("postgresql://", "postgres://")):
        from stockkeeper.store.postgres import PostgresStore

        return await PostgresStore.connect(url, options)
    if url.startswith("sqlite:///"):
        from stockkeeper.store.sqlite import SqliteStore

        return await SqliteStore.connect(url.removeprefix("sqlite:///"), options)
    raise ValueError(f"unsupported database URL {url!r}: use postgresql://… or sqlite:///path")
