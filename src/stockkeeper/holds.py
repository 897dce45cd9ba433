"""Holds: stock set aside for a checkout, then confirmed (a sale), released, or expired
(shared/API.md, "Holds"; docs/holds.md).

Pure, like domain.py: what a valid hold request is, what state a hold is in at a given database
time, which action that state allows, and what a confirm takes and gives back. The store
applies these decisions inside the transaction that reads the hold, at the database's clock.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stockkeeper.domain import (
    MISSING,
    Change,
    Checks,
    Expiry,
    OrderLine,
    StockkeeperError,
    check_order_lines,
    format_timestamp,
)

TTL_S_DEFAULT = 600
TTL_S_MAX = 3600
HOLD_ID_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
_HOLD_ID = re.compile(HOLD_ID_PATTERN)


class HoldState(enum.StrEnum):
    ACTIVE = "active"
    CONFIRMED = "confirmed"
    RELEASED = "released"
    EXPIRED = "expired"


class HoldAction(enum.StrEnum):
    CREATE = "create"
    CONFIRM = "confirm"
    EXTEND = "extend"
    RELEASE = "release"


@dataclass(frozen=True, slots=True)
class HoldLine:
    sku: str
    quantity: int
    confirmed: int | None = None  # set once confirmed: what became a sale

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {"sku": self.sku, "quantity": self.quantity}
        if self.confirmed is not None:
            line["confirmed"] = self.confirmed
        return line


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    state: HoldState  # as recorded; `state_at` says what it is at a given time
    expires_at: datetime
    lines: tuple[HoldLine, ...]
    changes: tuple[Change, ...] = ()  # what the request that returns it changed

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "expires_at": format_timestamp(self.expires_at),
            "lines": [line.to_json() for line in self.lines],
            "changes": [change.to_json() for change in self.changes],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Hold:
        """An answer kept for an idempotency key, read back for its replay."""
        return cls(
            data["id"],
            HoldState(data["state"]),
            datetime.fromisoformat(data["expires_at"]),
            tuple(HoldLine(ln["sku"], ln["quantity"], ln.get("confirmed")) for ln in data["lines"]),
            tuple(Change.from_json(change) for change in data["changes"]),
        )


@dataclass(frozen=True, slots=True)
class HoldWrite:
    """A validated request on a hold, ready for a store: every item change it makes commits
    with its audit entry, in one transaction, or none does. `lines` are the new hold's (create)
    or what to confirm (None: every line whole); `ttl_s` is create's and extend's."""

    action: HoldAction
    hold_id: str
    user: str
    on_behalf_of: str | None = None
    idempotency_key: str | None = None
    request_hash: bytes = b""
    lines: tuple[OrderLine, ...] | None = None
    ttl_s: int = TTL_S_DEFAULT


@dataclass(frozen=True, slots=True)
class HoldReceipt:
    """What a hold request returns; `expired` are the overdue holds it expired first (their
    changes are pushed to the caches with its own, not part of its answer)."""

    hold: Hold
    replayed: bool = False
    expired: tuple[Expiry, ...] = ()


def check_hold_id(hold_id: object) -> str:
    """A hold id from a path: anything else names no hold."""
    if not isinstance(hold_id, str) or not _HOLD_ID.fullmatch(hold_id):
        raise UnknownHold(str(hold_id)[:64])
    return hold_id


def state_at(recorded: HoldState, expires_at: datetime, now: datetime) -> HoldState:
    """From `expires_at` on an active hold is expired for every request, whether or not an
    expirer has recorded it yet: stock of an expired hold is never refused to a buyer."""
    if recorded is HoldState.ACTIVE and now >= expires_at:
        return HoldState.EXPIRED
    return recorded


def check_action(action: HoldAction, state: HoldState) -> None:
    """Raise unless `action` may run on a hold in `state` (from `state_at`). Confirm and extend
    of an expired hold say `hold_expired`, the one thing such a caller must learn; anything on
    a hold already closed otherwise (and a release of an expired one) says `hold_closed`."""
    if state is HoldState.ACTIVE:
        return
    if state is HoldState.EXPIRED and action is not HoldAction.RELEASE:
        raise HoldExpired()
    raise HoldClosed(state)


@dataclass(frozen=True, slots=True)
class HoldRequest:
    lines: tuple[OrderLine, ...]
    ttl_s: int
    on_behalf_of: str | None


def check_hold_request(
    lines: object,
    ttl_s: object = MISSING,
    on_behalf_of: object = None,
    *,
    checks: Checks | None = None,
) -> HoldRequest:
    """Validate `POST /v1/holds`: an order's lines (1-100, each SKU once) and a TTL of
    1-3600 s (default 600). Raises InvalidRequest naming every bad field, unless given the
    caller's `checks` to add them to."""
    found = checks if checks is not None else Checks()
    parsed = check_order_lines(found, lines)
    ttl = check_ttl(found, ttl_s, default=TTL_S_DEFAULT)
    acting_for = found.optional_text("on_behalf_of", on_behalf_of)
    if checks is None:
        found.raise_if_any()
    return HoldRequest(tuple(parsed), ttl, acting_for)


def check_ttl(checks: Checks, value: object, *, default: int | None = None) -> int:
    if value is MISSING and default is not None:
        return default
    return checks.integer("ttl_s", value, 1, TTL_S_MAX)


@dataclass(frozen=True, slots=True)
class ConfirmLine:
    sku: str
    held: int  # leaves `held`
    confirmed: int  # leaves `on_hand`: the sale


def plan_confirm(held: tuple[HoldLine, ...], requested: object = None) -> list[ConfirmLine]:
    """What a confirm does, per hold line, in the hold's line order: with no lines, every
    line is sold whole; with lines, each names a SKU of the hold and 1 up to its held quantity,
    and a hold line not named is released (confirmed 0)."""
    if requested is None:
        return [ConfirmLine(line.sku, line.quantity, line.quantity) for line in held]
    checks = Checks()
    parsed = check_order_lines(checks, requested)
    quantities = {line.sku: line.quantity for line in held}
    for i, line in enumerate(parsed):
        if line.sku and line.sku not in quantities:
            checks.fail(f"lines[{i}].sku", f"{line.sku!r} is not held by this hold")
        elif line.sku and line.quantity > quantities[line.sku]:
            checks.fail(
                f"lines[{i}].quantity",
                f"{line.quantity} is more than the {quantities[line.sku]} held of {line.sku!r}",
            )
    checks.raise_if_any()
    asked = {line.sku: line for line in parsed}
    return [
        ConfirmLine(line.sku, line.quantity, asked[line.sku].quantity if line.sku in asked else 0)
        for line in held
    ]


# --- errors (API.md's codes) ---------------------------------------------------------------


class UnknownHold(StockkeeperError):
    code = "unknown_hold"

    def __init__(self, hold_id: str) -> None:
        self.hold_id = hold_id
        super().__init__(f"no hold with id {hold_id!r}")


class HoldExpired(StockkeeperError):
    code = "hold_expired"

    def __init__(self) -> None:
        super().__init__("the hold expired: its stock is available to others again")


class HoldClosed(StockkeeperError):
    code = "hold_closed"

    def __init__(self, state: HoldState) -> None:
        self.state = state
        super().__init__(f"the hold is already {state.value}")

    def details(self) -> dict[str, Any]:
        return {"state": self.state.value}
