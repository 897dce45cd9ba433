"""Stores: where items, the audit log, idempotency keys and tokens are kept."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from stockkeeper.store.protocol import Store, StoreOptions

DEFAULT_DATABASE_URL = "sqlite:///stockkeeper.db"

__all__ = ["DEFAULT_DATABASE_URL", "Store", "StoreOptions", "display_url", "open_store"]


def display_url(url: str) -> str:
    """The database URL without its password (in the authority or a `password=` parameter),
    fit to print; a URL without one comes back unchanged."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(key, value) for key, value in pairs if key != "password"]
    if parts.password is None and len(kept) == len(pairs):
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}@{host}" if user else host
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(kept, safe="/,")))


async def open_store(
    url: str = DEFAULT_DATABASE_URL, options: StoreOptions | None = None, *, create: bool = True
) -> Store:
    """Connect to the database a URL names: `postgresql://…`, or `sqlite:///path` (relative)
    and `sqlite:////path` (absolute). With `create=False` a missing SQLite file is NoDatabase,
    not a new file."""
    options = options or StoreOptions()
    if url.startswith(("postgresql://", "postgres://")):
        from stockkeeper.store.postgres import PostgresStore

        return await PostgresStore.connect(url, options)
    if url.startswith("sqlite:///"):
        from stockkeeper.store.sqlite import SqliteStore

        return await SqliteStore.connect(url.removeprefix("sqlite:///"), options, create=create)
    raise ValueError(f"unsupported database URL {url!r}: use postgresql://… or sqlite:///path")
