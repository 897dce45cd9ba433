"""The library API: what HTTP, the CLI and embedding applications all call.

Every input is validated here (so a library caller gets the same errors as an HTTP client),
then handed to the store as one `Write`. Reads go through `read()` and nowhere else: the cache
wraps that one path.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import orjson

from stockkeeper import auth, failpoints, metrics
from stockkeeper.cache import DEFAULT_CACHE_URL, ReadCache, RedisCacheOptions, open_cache
from stockkeeper.cache.base import DirectReads
from stockkeeper.domain import (
    AUDIT_PAGE_LIMIT_MAX,
    ON_HAND_MAX,
    AuditPage,
    Change,
    Checks,
    Expiry,
    FieldError,
    InvalidRequest,
    Item,
    ItemRead,
    LineChange,
    NoDatabase,
    OrderLine,
    Principal,
    Reason,
    Receipt,
    Role,
    StockkeeperError,
    TokenInfo,
    Unauthenticated,
    UnknownSku,
    Write,
    check_order_lines,
    format_timestamp,
)
from stockkeeper.hold_expirer import ExpirerOptions, HoldExpirer
from stockkeeper.holds import (
    TTL_S_DEFAULT,
    Hold,
    HoldAction,
    HoldReceipt,
    HoldWrite,
    UnknownHold,
    check_hold_id,
    check_hold_request,
    check_ttl,
)
from stockkeeper.live_tokens import LiveTokens
from stockkeeper.store import DEFAULT_DATABASE_URL, Store, StoreOptions, display_url, open_store
from stockkeeper.store.protocol import HeldDrift

VERSION_MAX = 2**63 - 1
READ_MANY_MAX = 100
FIRST_ADMIN_NAME = "admin"


_EVENTS = {
    HoldAction.CONFIRM: "confirmed",
    HoldAction.EXTEND: "extended",
    HoldAction.RELEASE: "released",
}


def _request_hash(kind: str, fingerprint: object, on_behalf_of: str | None) -> bytes:
    """What a replay must match: the same key with another request is misuse."""
    body = orjson.dumps([kind, fingerprint, on_behalf_of])
    return hashlib.blake2b(body, digest_size=32).digest()


class Inventory:
    """Stock of every SKU, changed only through audited, conditional, idempotent writes.

    Writes take an optional `checks` already holding errors the caller found (an HTTP body's
    unknown fields, say), so one InvalidRequest reports every error at once.
    """

    def __init__(
        self,
        store: Store,
        cache: ReadCache | None = None,
        expirer: ExpirerOptions | None = None,
    ) -> None:
        self.store = store
        self.cache: ReadCache = cache if cache is not None else DirectReads(store)
        self._tokens = LiveTokens(store)
        self.expirer = HoldExpirer(store, self._expired, expirer)

    @classmethod
    async def open(
        cls,
        database_url: str = DEFAULT_DATABASE_URL,
        options: StoreOptions | None = None,
        *,
        cache_url: str = DEFAULT_CACHE_URL,
        redis_options: RedisCacheOptions | None = None,
        migrate: bool = True,
        create: bool = True,
        cache: Callable[[Store], Awaitable[ReadCache]] | None = None,
        expirer: ExpirerOptions | None = None,
    ) -> Inventory:
        """Connect to the database (creating or upgrading its schema) and start the cache
        `cache_url` names: `memory://` (in-process) or `redis://…` (shared); or, given
        `cache`, the one it opens over the store (an embedder's own, a benchmark's baseline).
        With `create=False`, a database without stockkeeper's schema (or a missing SQLite file,
        left missing) is refused with NoDatabase; an existing one is still upgraded."""
        store = await open_store(database_url, options, create=create)
        try:
            if not create and not await store.has_schema():
                raise NoDatabase(display_url(database_url))
            if migrate:
                await store.migrate()
            if cache is None:
                opened = await open_cache(cache_url, store, redis_options)
            else:
                opened = await cache(store)
        except BaseException:
            await store.close()
            raise
        return cls(store, opened, expirer)

    async def start(self) -> None:
        """Begin what a long-running server needs: the token snapshot checked in the
        background, so a token revoked anywhere is refused here within a second, and the
        hold expirer, so an overdue hold's stock shows as available within a second."""
        self._tokens.start()
        self.expirer.start()

    async def close(self) -> None:
        await self.expirer.close()
        await self._tokens.close()
        await self.cache.close()
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
        """The one read path: the answer's version is at least `min_version`, or an error. It
        is never older than any answer any read returned before this one began."""
        checks = Checks()
        checks.sku("sku", sku)
        if min_version is not None:
            checks.integer("min_version", min_version, 1, VERSION_MAX)
        checks.raise_if_any()
        read = await self.cache.read(sku, min_version)
        if read is None:
            raise UnknownSku(sku)
        if min_version is not None and read.item.version < min_version:
            # The cache read through to the database: a version it has not reached never
            # committed.
            raise InvalidRequest(
                [
                    FieldError(
                        "min_version", f"ahead of the newest committed version {read.item.version}"
                    )
                ]
            )
        return read

    async def read_many(self, skus: Sequence[str]) -> tuple[list[ItemRead], list[str]]:
        """1 to READ_MANY_MAX distinct SKUs in one cache round trip: (found, in request order;
        unknown SKUs). Each item obeys the same rules as `read`."""
        checks = Checks()
        if not 1 <= len(skus) <= READ_MANY_MAX:
            checks.fail("sku", f"give 1 to {READ_MANY_MAX} SKUs")
        elif len(set(skus)) != len(skus):
            checks.fail("sku", "each SKU at most once")
        for sku in skus:
            checks.sku("sku", sku)
        checks.raise_if_any()
        reads = await self.cache.read_many(skus)
        found = [read for read in reads if read is not None]
        unknown = [sku for sku, read in zip(skus, reads, strict=True) if read is None]
        return found, unknown

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
        fingerprint = [[ln.sku, ln.delta, ln.set_to] for ln in lines]
        write = Write(
            reason=reason,
            lines=lines,
            user=user,
            on_behalf_of=on_behalf_of,
            idempotency_key=idempotency_key,
            request_hash=_request_hash(reason.value, fingerprint, on_behalf_of),
        )
        try:
            receipt = await self.store.write(write)
        except StockkeeperError as error:
            metrics.STOCK_CHANGES.labels(outcome=error.code).inc()
            raise
        if not receipt.replayed:
            await self._committed(receipt.changes, receipt.expired)
        metrics.STOCK_CHANGES.labels(outcome="replayed" if receipt.replayed else "applied").inc()
        return receipt

    async def _committed(self, changes: Sequence[Change], expired: Sequence[Expiry] = ()) -> None:
        # Committed: from here on a crash leaves the change to the change feed.
        await failpoints.hit("cache.push.before")
        await self.cache.committed([*(c for e in expired for c in e.changes), *changes])
        for expiry in expired:
            metrics.HOLDS.labels(event="expired").inc()
            metrics.HOLD_EXPIRY_LAG.observe(expiry.lag_s)

    async def _expired(self, expired: list[Expiry]) -> None:
        """The expirer recorded these: serve them, as any committed change."""
        await self._committed((), expired)

    # --- holds ------------------------------------------------------------------------------

    async def hold(
        self,
        lines: Sequence[OrderLine | dict[str, Any]],
        ttl_s: int = TTL_S_DEFAULT,
        *,
        user: str,
        on_behalf_of: str | None = None,
        idempotency_key: str | None = None,
        checks: Checks | None = None,
    ) -> HoldReceipt:
        """Set every line aside for `ttl_s` seconds, or none: a short line fails the hold with
        every shortage. The hold is then confirmed, released, or expires by itself."""
        checks = checks if checks is not None else Checks()
        request = check_hold_request(lines, ttl_s, on_behalf_of, checks=checks)
        idempotency_key = checks.optional_text("Idempotency-Key", idempotency_key)
        self._check_user(checks, user)
        checks.raise_if_any()
        fingerprint = [[ln.sku, ln.quantity] for ln in request.lines], request.ttl_s
        op = HoldWrite(
            HoldAction.CREATE,
            "h" + secrets.token_hex(12),
            user,
            request.on_behalf_of,
            idempotency_key,
            _request_hash("hold", fingerprint, request.on_behalf_of),
            request.lines,
            request.ttl_s,
        )
        return await self._commit_hold(op, "created")

    async def confirm(
        self,
        hold_id: str,
        lines: Sequence[OrderLine | dict[str, Any]] | None = None,
        *,
        user: str,
        idempotency_key: str | None = None,
        checks: Checks | None = None,
    ) -> HoldReceipt:
        """Sell what the hold holds: every line whole, or, given `lines`, that much of each
        SKU named (the rest, and lines not named, are released)."""
        checks = checks if checks is not None else Checks()
        parsed = None if lines is None else tuple(check_order_lines(checks, lines))
        fingerprint = None if parsed is None else [[ln.sku, ln.quantity] for ln in parsed]
        return await self._act_on_hold(
            HoldAction.CONFIRM, hold_id, user, idempotency_key, checks, fingerprint, lines=parsed
        )

    async def extend(
        self,
        hold_id: str,
        ttl_s: int,
        *,
        user: str,
        idempotency_key: str | None = None,
        checks: Checks | None = None,
    ) -> HoldReceipt:
        """Make the hold expire `ttl_s` seconds from now, by the database's clock."""
        checks = checks if checks is not None else Checks()
        ttl = check_ttl(checks, ttl_s)
        return await self._act_on_hold(
            HoldAction.EXTEND, hold_id, user, idempotency_key, checks, ttl, ttl_s=ttl
        )

    async def release(
        self,
        hold_id: str,
        *,
        user: str,
        idempotency_key: str | None = None,
        checks: Checks | None = None,
    ) -> HoldReceipt:
        """Give the hold's stock back now."""
        checks = checks if checks is not None else Checks()
        return await self._act_on_hold(
            HoldAction.RELEASE, hold_id, user, idempotency_key, checks, None
        )

    async def get_hold(self, hold_id: str) -> Hold:
        """The hold as it is now; one past its expires_at is `expired`, recorded or not."""
        hold = await self.store.get_hold(check_hold_id(hold_id))
        if hold is None:
            raise UnknownHold(hold_id)
        return hold

    async def held_drift(self) -> list[HeldDrift]:
        """Every SKU whose `held` is not what its active holds add up to: the check that the
        counter never drifts (it must find nothing, also after a stress run)."""
        return await self.store.held_drift()

    async def expire_holds(self) -> int:
        """One round of the expirer, now: how many overdue holds it recorded. A started
        Inventory runs these in the background."""
        return await self.expirer.round()

    async def _act_on_hold(
        self,
        action: HoldAction,
        hold_id: str,
        user: str,
        idempotency_key: str | None,
        checks: Checks,
        fingerprint: object,
        lines: tuple[OrderLine, ...] | None = None,
        ttl_s: int = TTL_S_DEFAULT,
    ) -> HoldReceipt:
        hold_id = check_hold_id(hold_id)
        idempotency_key = checks.optional_text("Idempotency-Key", idempotency_key)
        self._check_user(checks, user)
        checks.raise_if_any()
        op = HoldWrite(
            action,
            hold_id,
            user,
            None,
            idempotency_key,
            _request_hash(action.value, [hold_id, fingerprint], None),
            lines,
            ttl_s,
        )
        return await self._commit_hold(op, _EVENTS[action])

    async def _commit_hold(self, op: HoldWrite, event: str) -> HoldReceipt:
        try:
            receipt = await self.store.write_hold(op)
        except StockkeeperError as error:
            metrics.STOCK_CHANGES.labels(outcome=error.code).inc()
            raise
        if not receipt.replayed:
            await self._committed(receipt.hold.changes, receipt.expired)
            metrics.HOLDS.labels(event=event).inc()
        metrics.STOCK_CHANGES.labels(outcome="replayed" if receipt.replayed else "applied").inc()
        return receipt

    # --- principals -------------------------------------------------------------------------

    async def authenticate(self, token: str) -> Principal:
        """The token's principal, from this process's snapshot of live tokens: no query unless
        the token is unknown here. Unavailable if only the database could tell."""
        principal = await self._tokens.find(token)
        if principal is None:
            raise Unauthenticated("unknown bearer token")
        return principal

    async def create_token(self, name: str, role: Role) -> str:
        """Make a token for `name` with `role`; only its hash is stored, so show it once."""
        checks = Checks()
        if name is None or name == "":
            checks.fail("name", "required: a token needs a name, it becomes the audit user")
        else:
            checks.optional_text("name", name)
        checks.raise_if_any()
        token = auth.new_token()
        token_hash = auth.token_hash(token, await self.store.token_key())
        principal = Principal(name, role)
        await self.store.add_token(token_hash, principal)
        self._tokens.add(token_hash, principal)
        return token

    async def create_first_admin_token(self) -> str | None:
        """On an empty database, make the first admin token and return it; else None."""
        token = auth.new_token()
        token_hash = auth.token_hash(token, await self.store.token_key())
        if not await self.store.add_first_admin(token_hash, FIRST_ADMIN_NAME):
            return None
        self._tokens.add(token_hash, Principal(FIRST_ADMIN_NAME, Role.ADMIN))
        return token

    async def list_tokens(self) -> list[TokenInfo]:
        """Every token, revoked ones too, by id: never a token or its hash."""
        return await self.store.list_tokens()

    async def revoke_token(self, token_id: int) -> TokenInfo:
        """End a token: refused here at once and by every started server within a second. Its
        row stays, marked revoked."""
        checks = Checks()
        checks.integer("id", token_id, 1, VERSION_MAX)
        checks.raise_if_any()
        revoked = await self.store.revoke_token(token_id)
        if revoked is None:
            known = {info.id: info for info in await self.store.list_tokens()}
            if token_id not in known:
                raise InvalidRequest([FieldError("id", f"no token has id {token_id}")])
            info = known[token_id]
            assert info.revoked_at is not None, "a live token's revoke updates its row"
            at = format_timestamp(info.revoked_at)
            raise InvalidRequest(
                [FieldError("id", f"token {token_id} ({info.name}) was already revoked at {at}")]
            )
        await self._tokens.refresh()
        return revoked

    async def purge_idempotency_keys(self, older_than_s: int, *, every_s: int) -> int | None:
        """Delete keys older than `older_than_s`, unless some process of the cluster did within
        `every_s` (or is at it now): the number deleted, or None when skipped."""
        purged = await self.store.purge_idempotency_keys(older_than_s, every_s)
        metrics.IDEMPOTENCY_KEY_PURGES.labels(result="skipped" if purged is None else "ran").inc()
        return purged

    async def ping(self) -> None:
        await self.store.ping()
