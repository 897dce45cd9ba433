"""Items, changes, principals and the errors of stockkeeper.

Pure: nothing here knows of a database, a cache or HTTP, so every layer (and every embedding
application) shares one meaning of "valid" and one set of error codes.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

QUANTITY_MAX = 1_000_000
ON_HAND_MAX = 1_000_000_000_000
ORDER_LINES_MAX = 100
TEXT_CHARS_MAX = 255
AUDIT_PAGE_LIMIT_MAX = 1000

_SKU = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]{1,255}")


class Role(enum.IntEnum):
    """Ordered so that a higher role includes every right of a lower one."""

    READER = 1
    CLERK = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}: use reader, clerk or admin") from None


class Reason(enum.StrEnum):
    PURCHASE = "purchase"
    RESTOCK = "restock"
    ORDER = "order"
    SET = "set"
    HOLD = "hold"  # stock set aside: held rises, on_hand stays
    CONFIRM = "confirm"  # a hold sold: on_hand falls by what was confirmed, held by what was held
    RELEASE = "release"  # a hold given back: held falls
    EXPIRE = "expire"  # a hold past its expires_at, given back


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as `token list` shows it: never the token or its hash, which stay secret."""

    id: int
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Item:
    """A SKU's state at one version. `held` is stock set aside by active holds, never more than
    `on_hand`; purchases, orders and new holds take from `available`."""

    sku: str
    on_hand: int
    version: int
    held: int = 0

    @property
    def available(self) -> int:
        return self.on_hand - self.held

    def to_json(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "on_hand": self.on_hand,
            "held": self.held,
            "available": self.available,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class ItemRead:
    """A read's answer, and whether this server answered it without reading the database."""

    item: Item
    cache_hit: bool


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One committed change as the change feed carries it: the state it produced, and the
    database's timestamp of its audit entry (seconds since the epoch), for visibility lag."""

    sku: str
    version: int
    on_hand: int
    at_s: float
    held: int = 0

    @property
    def item(self) -> Item:
        return Item(self.sku, self.on_hand, self.version, self.held)


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change of one SKU: the state it produced and its audit entry's id."""

    sku: str
    delta: int
    on_hand: int
    version: int
    audit_id: int
    held_delta: int = 0
    held: int = 0

    @property
    def item(self) -> Item:
        return Item(self.sku, self.on_hand, self.version, self.held)

    def to_json(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "delta": self.delta,
            "on_hand": self.on_hand,
            "version": self.version,
            "audit_id": self.audit_id,
            "held_delta": self.held_delta,
            "held": self.held,
            "available": self.on_hand - self.held,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        # Answers kept for idempotency keys before holds existed carry no held fields.
        return cls(
            data["sku"],
            data["delta"],
            data["on_hand"],
            data["version"],
            data["audit_id"],
            data.get("held_delta", 0),
            data.get("held", 0),
        )


@dataclass(frozen=True, slots=True)
class Expiry:
    """One overdue hold given back, as the expirer or a request recorded it."""

    hold_id: str
    changes: tuple[Change, ...]
    lag_s: float  # from its expires_at to the moment recorded, by the database's clock


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a write returns: its changes in request order, and whether it was a replay.
    `expired` are the overdue holds it expired first (their changes are pushed to the caches
    with its own, not part of its answer)."""

    changes: tuple[Change, ...]
    replayed: bool = False
    expired: tuple[Expiry, ...] = ()

    @property
    def change(self) -> Change:
        assert len(self.changes) == 1, "a single-SKU write produces exactly one change"
        return self.changes[0]

    @property
    def created(self) -> bool:
        """A `set` that created its item produced version 1."""
        return len(self.changes) == 1 and self.changes[0].version == 1


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    sku: str
    version: int
    delta: int
    on_hand: int
    user: str
    on_behalf_of: str | None
    reason: Reason
    idempotency_key: str | None
    at: datetime
    held_delta: int = 0
    held: int = 0
    hold_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sku": self.sku,
            "version": self.version,
            "delta": self.delta,
            "on_hand": self.on_hand,
            "held_delta": self.held_delta,
            "held": self.held,
            "hold_id": self.hold_id,
            "user": self.user,
            "on_behalf_of": self.on_behalf_of,
            "reason": self.reason.value,
            "idempotency_key": self.idempotency_key,
            "at": format_timestamp(self.at),
        }


@dataclass(frozen=True, slots=True)
class AuditPage:
    entries: tuple[AuditEntry, ...]
    next_after_version: int | None

    @classmethod
    def from_fetched(cls, entries: list[AuditEntry], limit: int) -> AuditPage:
        """`entries` were fetched with one row over `limit`, which only says a next page exists."""
        if len(entries) > limit:
            return cls(tuple(entries[:limit]), entries[limit - 1].version)
        return cls(tuple(entries), None)


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class LineChange:
    """One line of a write as the store applies it: add `delta`, or set `on_hand` outright."""

    sku: str
    delta: int = 0
    set_to: int | None = None


@dataclass(frozen=True, slots=True)
class Write:
    """A validated write, ready for a store: every line commits with its audit entry, or none."""

    reason: Reason
    lines: tuple[LineChange, ...]
    user: str
    on_behalf_of: str | None = None
    idempotency_key: str | None = None
    request_hash: bytes = b""


def format_timestamp(at: datetime) -> str:
    """RFC 3339, UTC, always with microseconds."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- errors -------------------------------------------------------------------------------


class StockkeeperError(Exception):
    """Base of every error the service raises on purpose; `code` is API.md's stable code."""

    code: str = "error"

    def details(self) -> dict[str, Any]:
        """Extra machine-readable fields of the error, beside its code."""
        return {}


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class InvalidRequest(StockkeeperError):
    code = "invalid_request"

    def __init__(self, errors: list[FieldError]) -> None:
        assert errors, "an invalid request names at least one field"
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))

    def details(self) -> dict[str, Any]:
        return {"errors": [{"field": e.field, "message": e.message} for e in self.errors]}


class TokenNameTaken(InvalidRequest):
    """A live (unrevoked) token already has this name: two would make the audit `user`
    ambiguous. A revoked token's name may be reused."""

    def __init__(self, name: str, token_id: int) -> None:
        self.name = name
        self.token_id = token_id
        message = (
            f"live token {token_id} is already named {name!r}; revoke it first "
            f"(stockkeeper token revoke {token_id}) or choose another name"
        )
        super().__init__([FieldError("name", message)])


class NoDatabase(StockkeeperError):
    """The database holds no stockkeeper schema (or the SQLite file does not exist), and the
    caller asked not to create one."""

    code = "no_database"

    def __init__(self, where: str) -> None:
        self.where = where
        super().__init__(f"no stockkeeper database at {where}")


class UnknownSku(StockkeeperError):
    code = "unknown_sku"

    def __init__(self, sku: str) -> None:
        self.sku = sku
        super().__init__(f"no item with sku {sku!r}")

    def details(self) -> dict[str, Any]:
        return {"sku": self.sku}


@dataclass(frozen=True, slots=True)
class Shortage:
    sku: str
    requested: int
    available: int

    def to_json(self) -> dict[str, Any]:
        return {"sku": self.sku, "requested": self.requested, "available": self.available}


class InsufficientStock(StockkeeperError):
    """Not enough on hand for one or more lines; nothing changed."""

    code = "insufficient_stock"

    def __init__(self, shortages: list[Shortage], *, is_order: bool = False) -> None:
        assert shortages, "an insufficient-stock error names at least one shortage"
        self.shortages = shortages
        self.is_order = is_order
        first = shortages[0]
        self.sku, self.requested, self.available = first.sku, first.requested, first.available
        super().__init__(
            ", ".join(
                f"{s.sku}: requested {s.requested}, available {s.available}" for s in shortages
            )
        )

    def details(self) -> dict[str, Any]:
        fields: dict[str, Any] = self.shortages[0].to_json()
        if self.is_order:
            fields["shortages"] = [s.to_json() for s in self.shortages]
        return fields


class IdempotencyKeyReused(StockkeeperError):
    code = "idempotency_key_reused"

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"idempotency key {key!r} was already used with another request")


class Unavailable(StockkeeperError):
    """The database did not answer, or a transaction could not finish; nothing changed."""

    code = "unavailable"
    retry_after_s: int | None = None


class ReadsRefused(Unavailable):
    """No read source was safe to serve in time (docs/cache.md, One read source); nothing
    changed; the caller may try again after `retry_after_s`, here or on another server."""

    retry_after_s = 1


class Busy(Unavailable):
    """Overloaded: no database connection (or SQLite's writer) was free in time. Nothing
    changed; the caller may try again after `retry_after_s`."""

    retry_after_s = 1


class Unauthenticated(StockkeeperError):
    code = "unauthenticated"


class Forbidden(StockkeeperError):
    code = "forbidden"


# --- validation ---------------------------------------------------------------------------


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""Stands for a field the caller did not send, so the check can say "required"."""


@dataclass(slots=True)
class Checks:
    """Collects every field error of one request, so a caller learns all of them at once."""

    errors: list[FieldError] = field(default_factory=list)

    def fail(self, name: str, message: str) -> None:
        self.errors.append(FieldError(name, message))

    def sku(self, name: str, value: object) -> str:
        if value is MISSING:
            self.fail(name, "required")
            return ""
        if not isinstance(value, str) or not _SKU.fullmatch(value):
            self.fail(name, "must be 1-64 characters of A-Z a-z 0-9 . _ -")
            return ""
        return value

    def integer(self, name: str, value: object, low: int, high: int) -> int:
        if value is MISSING:
            self.fail(name, "required")
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, f"must be an integer from {low} to {high}")
            return 0
        if not low <= value <= high:
            self.fail(name, f"must be an integer from {low} to {high}")
            return 0
        return value

    def quantity(self, name: str, value: object) -> int:
        return self.integer(name, value, 1, QUANTITY_MAX)

    def optional_text(self, name: str, value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not _PRINTABLE_ASCII.fullmatch(value):
            self.fail(name, f"must be 1-{TEXT_CHARS_MAX} printable ASCII characters")
            return None
        return value

    def raise_if_any(self) -> None:
        if self.errors:
            raise InvalidRequest(self.errors)


def check_order_lines(checks: Checks, lines: object) -> list[OrderLine]:
    """Validate an order's lines: 1-100 of them, each SKU once."""
    if lines is MISSING:
        checks.fail("lines", "required")
        return []
    if not isinstance(lines, list | tuple) or not lines:
        checks.fail("lines", f"must be a list of 1 to {ORDER_LINES_MAX} lines")
        return []
    if len(lines) > ORDER_LINES_MAX:
        checks.fail("lines", f"must have at most {ORDER_LINES_MAX} lines")
        return []
    parsed: list[OrderLine] = []
    seen: set[str] = set()
    for i, line in enumerate(lines):
        where = f"lines[{i}]"
        if isinstance(line, OrderLine):
            line = {"sku": line.sku, "quantity": line.quantity}
        if not isinstance(line, dict):
            checks.fail(where, "must be an object with sku and quantity")
            continue
        for unknown in sorted(set(line) - {"sku", "quantity"}):
            checks.fail(f"{where}.{unknown}", "unknown field")
        sku = checks.sku(f"{where}.sku", line.get("sku", MISSING))
        quantity = checks.quantity(f"{where}.quantity", line.get("quantity", MISSING))
        if sku and sku in seen:
            checks.fail(f"{where}.sku", f"duplicate sku {sku!r}: each sku may appear once")
        seen.add(sku)
        parsed.append(OrderLine(sku, quantity))
    return parsed
