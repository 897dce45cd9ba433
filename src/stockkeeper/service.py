"""The library API: what HTTP, the CLI and embedding applications all call.

Every input is validated here (so a library caller gets the same errors as an HTTP client),
then handed to the store as one `Write`. Reads go through `read()` and nowhere else: the cache
wraps that one path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson

from stockkeeper import auth, failpoints, metrics
from stockkeeper.domain import (
    AUDIT_PAGE_LIMIT_MAX,
    ON_HAND_MAX,
    AuditPage,
    Checks,
    FieldError,
    InvalidRequest,
    Item,
    LineChange,
    OrderLine,
    Principal,
    Reason,
    Receipt,
    Role,
    StockkeeperError,
    Unauthenticated,
    UnknownSku,
    Write,
    check_order_lines,
)
from stockkeeper.store import DEFAULT_DATABASE_URL, Store, StoreOptions, open_store

VERSION_MAX = 2**63 - 1
FIRST_ADMIN_NAME = "admin"


@dataclass(frozen=True, slots=True)
class ItemRead:
    item: Item
    cache_hit: bool


class Inventory:
    """Stock of every SKU, changed only through audited, conditional, idempotent writes.

    Writes take an optional `checks` already holding errors the caller found (an HTTP body's
    unknown fields, say), so one InvalidRequest reports every error at once.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._tokens = auth.TokenCache()

    @classmethod
    async def open(
        cls,
        database_url: str = DEFAULT_DATABASE_URL,
        options: StoreOptions | None = None,
        *,
        migrate: bool = True,
    ) -> Inventory:
        store = await open_store(database_url, options)
        if migrate:
            try:
                await store.migrate()
            except BaseException:
                await store.close()
                raise
        return cls(store)

    async def close(self) -> None:
        await self.store.close()

    async def __aenter__(self) -> Inventory:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- reads ------------------------------------------------------------------------------

    async def read(self, sku: str, *, min_version: int | None = None) -> ItemRead:
        """The one read path: the answer's version is at least `min_version`, or an error."""
        checks = Checks()
        checks.sku("sku", sku)
        if min_version is not None:
            checks.integer("min_version", min_version, 1, VERSION_MAX)
        checks.raise_if_any()
        item = await self.store.get_item(sku)
        # Where a cache fill will race newer writes: tests hold a read here.
        await failpoints.hit("service.read.after_fetch")
        metrics.CACHE_MISSES.inc()
        if item is None:
            raise UnknownSku(sku)
        if min_version is not None and item.version < min_version:
            # The database is the newest truth: a version it has not reached never committed.
            raise InvalidRequest(
                [FieldError("min_version", f"ahead of the newest committed version {item.version}")]
            )
        return ItemRead(item, cache_hit=False)

    async def get_stock(self, sku: str, *, min_version: int | None = None) -> Item:
        return (await self.read(sku, min_version=min_version)).item

    async def audit(self, sku: str, *, after_version: int = 0, limit: int = 100) -> AuditPage:
        checks = Checks()
        checks.sku("sku", sku)
        checks.integer("after_version", after_version, 0, VERSION_MAX)
        checks.integer("limit", limit, 1, AUDIT_PAGE_LIMIT_MAX)
        checks.raise_if_any()
        page = await self.store.audit_page(sku, after_version, limit)
        if not page.entries and await self.store.get_item(sku) is None:
            raise UnknownSku(sku)
        return page

    # --- writes -----------------------------------------------------------------------------

    async def decrement_stock(
        self,
        sku: str,
        quantity: int,
        *,
        user: str,
        on_behalf_of: str | None = None,
        idempotency_key: str | None = None,
        checks: Checks | None = None,
    ) -> Receipt:
        """Take `quantity` of `sku` if that many are on hand, else raise InsufficientStock."""
        return await self._adjust(
            Reason.PURCHASE, sku, quantity, user, on_behalf_of, idempotency_key, checks
        )

    async def increment_stock(
        self,
        sku: str,
        quantity: int,
        *,
        user: str,
        on_behalf_of: str | None = None,
        idempotency_key: str | None = None,
        checks: Checks | None = None,
    ) -> Receipt:
        return await self._adjust(
            Reason.RESTOCK, sku, quantity, user, on_behalf_of, idempotency_key, checks
        )

    async def set_stock(
        self, sku: str, on_hand: int, *, user: str, checks: Checks | None = None
    ) -> Receipt:
        """Set on_hand outright, creating the item at version 1 if it is new."""
        checks = checks if checks is not None else Checks()
        checks.sku("sku", sku)
        checks.integer("on_hand", on_hand, 0, ON_HAND_MAX)
        self._check_user(checks, user)
        checks.raise_if_any()
        return await self._commit(Reason.SET, (LineChange(sku, set_to=on_hand),), user, None, None)

    async def place_order(
        self,
        lines: Sequence[OrderLine | dict[str, Any]],
        *,
        user: str,
        on_behalf_of: str | None = None,
        idempotency_key: str | None = None,
        checks: Checks | None = None,
    ) -> Receipt:
        """Take every line, or none: a short line fails the whole order with all shortages."""
        checks = checks if checks is not None else Checks()
        parsed = check_order_lines(checks, lines)
        on_behalf_of = checks.optional_text("on_behalf_of", on_behalf_of)
        idempotency_key = checks.optional_text("Idempotency-Key", idempotency_key)
        self._check_user(checks, user)
        checks.raise_if_any()
        changes = tuple(LineChange(line.sku, delta=-line.quantity) for line in parsed)
        return await self._commit(Reason.ORDER, changes, user, on_behalf_of, idempotency_key)

    async def _adjust(
        self,
        reason: Reason,
        sku: str,
        quantity: int,
        user: str,
        on_behalf_of: str | None,
        idempotency_key: str | None,
        checks: Checks | None,
    ) -> Receipt:
        checks = checks if checks is not None else Checks()
        checks.sku("sku", sku)
        checks.quantity("quantity", quantity)
        on_behalf_of = checks.optional_text("on_behalf_of", on_behalf_of)
        idempotency_key = checks.optional_text("Idempotency-Key", idempotency_key)
        self._check_user(checks, user)
        checks.raise_if_any()
        delta = -quantity if reason is Reason.PURCHASE else quantity
        lines = (LineChange(sku, delta=delta),)
        return await self._commit(reason, lines, user, on_behalf_of, idempotency_key)

    @staticmethod
    def _check_user(checks: Checks, user: object) -> None:
        if user is None:
            checks.fail("user", "required: the name of who makes the change")
        else:
            checks.optional_text("user", user)

    async def _commit(
        self,
        reason: Reason,
        lines: tuple[LineChange, ...],
        user: str,
        on_behalf_of: str | None,
        idempotency_key: str | None,
    ) -> Receipt:
        # The hash covers everything a replay must match: same key + other request = misuse.
        fingerprint = orjson.dumps(
            [reason.value, [[ln.sku, ln.delta, ln.set_to] for ln in lines], on_behalf_of]
        )
        write = Write(
            reason=reason,
            lines=lines,
            user=user,
            on_behalf_of=on_behalf_of,
            idempotency_key=idempotency_key,
            request_hash=hashlib.blake2b(fingerprint, digest_size=32).digest(),
        )
        try:
            receipt = await self.store.write(write)
        except StockkeeperError as error:
            metrics.STOCK_CHANGES.labels(outcome=error.code).inc()
            raise
        metrics.STOCK_CHANGES.labels(outcome="replayed" if receipt.replayed else "applied").inc()
        return receipt

    # --- principals -------------------------------------------------------------------------

    async def authenticate(self, token: str) -> Principal:
        found, principal = self._tokens.get(token)
        if not found:
            principal = await self.store.find_principal(
                auth.token_hash(token, await self.store.token_key())
            )
            self._tokens.put(token, principal)
        if principal is None:
            raise Unauthenticated("unknown bearer token")
        return principal

    async def create_token(self, name: str, role: Role) -> str:
        """Make a token for `name` with `role`; only its hash is stored, so show it once."""
        checks = Checks()
        if checks.optional_text("name", name) is None:
            checks.fail("name", "a token needs a name: it becomes the audit user")
        checks.raise_if_any()
        token = auth.new_token()
        await self.store.add_token(
            auth.token_hash(token, await self.store.token_key()), Principal(name, role)
        )
        return token

    async def create_first_admin_token(self) -> str | None:
        """On an empty database, make the first admin token and return it; else None."""
        token = auth.new_token()
        key = await self.store.token_key()
        created = await self.store.add_first_admin(auth.token_hash(token, key), FIRST_ADMIN_NAME)
        return token if created else None

    async def purge_idempotency_keys(self, older_than_s: int) -> int:
        return await self.store.purge_idempotency_keys(older_than_s)

    async def ping(self) -> None:
        await self.store.ping()
