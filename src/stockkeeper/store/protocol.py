"""The one interface every store implements, and the limits it is opened with.

Inside a store, the write algorithm (store/writes.py) runs against the steps of `SqlTx`
(store/sql_tx.py), so the guarantees — conditional decrements, canonical lock order, audit in
the same transaction, idempotency — cannot drift apart between backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from stockkeeper.domain import AuditPage, Item, Principal, Receipt, Write
from stockkeeper.retry import RetryPolicy


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Limits of one store: connections, how long a write may wait for a lock, retries."""

    pool_size: int = 10
    lock_wait_ms_max: int = 5_000
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class Store(Protocol):
    """A source of truth for items, their audit log, idempotency keys and tokens."""

    async def migrate(self) -> None:
        """Create or upgrade the schema; safe to call from many processes at once."""
        ...

    async def get_item(self, sku: str) -> Item | None: ...

    async def write(self, write: Write) -> Receipt:
        """Apply a write with its audit entries in one transaction, retrying transient faults."""
        ...

    async def audit_page(self, sku: str, after_version: int, limit: int) -> AuditPage: ...

    async def token_key(self) -> bytes:
        """The deployment's secret key for hashing tokens (made by migrate)."""
        ...

    async def find_principal(self, token_hash: bytes) -> Principal | None: ...

    async def add_token(self, token_hash: bytes, principal: Principal) -> None: ...

    async def add_first_admin(self, token_hash: bytes, name: str) -> bool:
        """Store an admin token only if no token exists yet; True if it did."""
        ...

    async def purge_idempotency_keys(self, older_than_s: int) -> int: ...

    async def ping(self) -> None:
        """Raise Unavailable unless the database answers."""
        ...

    async def close(self) -> None: ...
