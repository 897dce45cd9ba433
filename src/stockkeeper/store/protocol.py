"""The one interface every store implements, and the limits it is opened with.

Inside a store, the write algorithm (store/writes.py) runs against the steps of `SqlTx`
(store/sql_tx.py), so the guarantees — conditional decrements, canonical lock order, audit in
the same transaction, idempotency — cannot drift apart between backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from stockkeeper.domain import (
    AuditPage,
    Expiry,
    FeedEntry,
    Item,
    Principal,
    Receipt,
    TokenInfo,
    Write,
)
from stockkeeper.holds import Hold, HoldReceipt, HoldWrite
from stockkeeper.retry import RetryPolicy


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Limits of one store: connections, how long to wait for one or for a lock, retries."""

    pool_size: int = 10
    lock_wait_ms_max: int = 5_000
    # Waiting for a free connection (or SQLite's writer) longer means overload: answer Busy
    # well within a client's timeout rather than queue without end.
    pool_wait_ms_max: int = 3_000
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True, slots=True)
class ReadModeView:
    """The cluster's read mode as one statement saw it (docs/cache.md, "One read source").

    `epoch` grows with every switch; `mode` is "redis" or "database"; `active` means every
    lease of an earlier epoch has lapsed (so no wait is needed); `voted` means some worker
    cannot reach Redis and wants database reads."""

    epoch: int
    mode: str
    active: bool
    voted: bool


@dataclass(frozen=True, slots=True)
class HeldDrift:
    sku: str
    held: int  # the item's counter
    from_holds: int  # what its active holds' lines add up to


class ChangeFeed(Protocol):
    """Every committed change, delivered at least once and, per SKU, in version order.

    The first `poll()` positions the feed at the present and returns nothing; each later one
    returns what committed since the previous poll, however late a transaction commits.
    """

    async def poll(self) -> list[FeedEntry]: ...

    async def recent(self, seconds: float) -> list[FeedEntry]:
        """The newest state of every SKU changed in the last `seconds`."""
        ...


class LocalView(Protocol):
    """Synchronous reads on a connection of this process, for a near cache that must prove
    itself current on every read without a thread hop (SQLite only)."""

    def data_version(self) -> int:
        """Changes whenever another connection (any process) has committed since the last
        call."""
        ...

    def last_id(self) -> int: ...

    def changes_after(self, after_id: int, limit: int) -> list[tuple[int, FeedEntry]]:
        """(audit id, change) of the entries after `after_id`, in commit order."""
        ...

    def get_item(self, sku: str) -> Item | None: ...


class Store(Protocol):
    """A source of truth for items, their audit log, idempotency keys and tokens."""

    async def migrate(self) -> None:
        """Create or upgrade the schema; safe to call from many processes at once."""
        ...

    async def get_item(self, sku: str) -> Item | None: ...

    def change_feed(self) -> ChangeFeed:
        """A new tail of the audit log (each tailer keeps its own position)."""
        ...

    def local_view(self) -> LocalView | None:
        """A same-process synchronous view, where the backend can offer one cheaply."""
        ...

    async def write(self, write: Write) -> Receipt:
        """Apply a write with its audit entries in one transaction, retrying transient faults."""
        ...

    async def write_hold(self, op: HoldWrite) -> HoldReceipt:
        """Create, confirm, extend or release a hold, with its item changes and their audit
        entries, in one transaction."""
        ...

    async def get_hold(self, hold_id: str) -> Hold | None:
        """The hold in its state by the database's clock now (its `changes` empty)."""
        ...

    async def expire_holds(self, limit: int) -> list[Expiry]:
        """Record up to `limit` overdue holds as expired, in one transaction, skipping any
        another transaction has locked."""
        ...

    async def held_drift(self) -> list[HeldDrift]:
        """Every SKU whose `held` is not the sum of its active holds' lines (none, ever)."""
        ...

    async def audit_page(self, sku: str, after_version: int, limit: int) -> AuditPage: ...

    async def token_key(self) -> bytes:
        """The deployment's secret key for hashing tokens (made by migrate)."""
        ...

    async def has_schema(self) -> bool:
        """Whether stockkeeper's schema (its stockkeeper_meta table) exists here; makes nothing."""
        ...

    async def add_token(self, token_hash: bytes, principal: Principal) -> None:
        """Store a token and move the token change counter, in one transaction; TokenNameTaken
        (nothing stored) if a live token already has the principal's name."""
        ...

    async def add_first_admin(self, token_hash: bytes, name: str) -> bool:
        """Store an admin token only if no token exists yet; True if it did."""
        ...

    async def token_generation(self) -> int:
        """The token change counter: it moves with every token create and revoke, so one cheap
        query tells whether a snapshot of live tokens is still current."""
        ...

    async def live_tokens(self) -> tuple[int, dict[bytes, Principal]]:
        """Every unrevoked token's hash and principal, with a counter value no newer than them
        (a change committed meanwhile moves the counter past it, so is never missed)."""
        ...

    async def list_tokens(self) -> list[TokenInfo]:
        """Every token, revoked ones too, by id."""
        ...

    async def revoke_token(self, token_id: int) -> TokenInfo | None:
        """Mark a live token revoked (its row stays) and move the counter, in one transaction;
        None if no live token has that id."""
        ...

    async def purge_idempotency_keys(self, older_than_s: int, every_s: int) -> int | None:
        """Delete keys older than `older_than_s`, unless another process is purging or the
        cluster purged within `every_s`: the number deleted, or None when skipped."""
        ...

    async def read_mode(self) -> ReadModeView:
        """The current epoch: a read, never a write, so renewing a lease costs no commit."""
        ...

    async def vote_database_reads(self, worker: str, ttl_ms: int) -> None:
        """This worker cannot reach Redis: keep the cluster on database reads for `ttl_ms`."""
        ...

    async def switch_read_mode(self, epoch: int, mode: str) -> bool:
        """Begin epoch `epoch + 1` in `mode` if `epoch` is still current (and, to "redis", no
        vote is live); True if this call switched."""
        ...

    async def activate_read_mode(self, epoch: int) -> None:
        """Record that every lease older than `epoch` has lapsed."""
        ...

    async def cache_node_purged(self, node: str) -> bool:
        """Whether a promoted Redis Cluster primary (`run_id:replication id`) was purged of
        this deployment's keys: the ledger that lets one server fence it for all."""
        ...

    async def record_cache_node_purged(self, node: str) -> None: ...

    async def ping(self) -> None:
        """Raise Unavailable unless the database answers."""
        ...

    async def close(self) -> None: ...
