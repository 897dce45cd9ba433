"""The one interface every store implements, and the transaction seam the write logic uses.

The write algorithm (store/writes.py) is written once against `Tx`; each backend only says how
to run each step in its SQL dialect. So the guarantees — conditional decrements, canonical lock
order, audit in the same transaction, idempotency — cannot drift apart between backends.
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


class Tx(Protocol):
    """The steps of one write transaction. Every method runs inside the open transaction."""

    async def claim_key(
        self, user: str, key: str, request_hash: bytes
    ) -> tuple[bytes, bytes] | None:
        """Reserve an idempotency key, waiting out a concurrent holder of it.

        Returns None when the key is now ours, else the (request_hash, response) stored by the
        earlier committed request with that key.
        """
        ...

    async def save_response(self, user: str, key: str, response: bytes) -> None: ...

    async def create_item(self, sku: str, on_hand: int) -> bool:
        """Insert the item at version 1 unless it exists; True if this call created it."""
        ...

    async def lock_item(self, sku: str) -> int:
        """Lock an existing item's row for the rest of the transaction; returns its on_hand."""
        ...

    async def lock_items(self, skus: list[str]) -> dict[str, int]:
        """Lock the rows of `skus` in the given (canonical) order; on_hand of those found."""
        ...

    async def set_on_hand(self, sku: str, on_hand: int) -> Item: ...

    async def take(self, sku: str, quantity: int) -> Item | None:
        """Decrement only if on_hand >= quantity, as one statement; None if it did not."""
        ...

    async def add(self, sku: str, quantity: int, ceiling: int) -> Item | None:
        """Increment unless on_hand would pass `ceiling`; None if it did not."""
        ...

    async def on_hand(self, sku: str) -> int | None: ...

    async def insert_audit(self, write: Write, rows: list[tuple[Item, int]]) -> list[int]:
        """Append one audit entry per (item after the change, delta); returns their ids."""
        ...


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
