"""stockkeeper: inventory that never oversells, with a same-transaction audit log.

Embed it:

    async with await Inventory.open("postgresql://…") as inventory:
        receipt = await inventory.decrement_stock("A-1", 1, user="shop")
"""

from stockkeeper.domain import (
    AuditEntry,
    AuditPage,
    Change,
    FieldError,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidRequest,
    Item,
    ItemRead,
    OrderLine,
    Principal,
    Receipt,
    Role,
    Shortage,
    StockkeeperError,
    Unauthenticated,
    Unavailable,
    UnknownSku,
)
from stockkeeper.holds import (
    Hold,
    HoldClosed,
    HoldExpired,
    HoldLine,
    HoldReceipt,
    HoldState,
    UnknownHold,
)
from stockkeeper.service import Inventory

__all__ = [
    "AuditEntry",
    "AuditPage",
    "Change",
    "FieldError",
    "Forbidden",
    "Hold",
    "HoldClosed",
    "HoldExpired",
    "HoldLine",
    "HoldReceipt",
    "HoldState",
    "IdempotencyKeyReused",
    "InsufficientStock",
    "InvalidRequest",
    "Inventory",
    "Item",
    "ItemRead",
    "OrderLine",
    "Principal",
    "Receipt",
    "Role",
    "Shortage",
    "StockkeeperError",
    "Unauthenticated",
    "Unavailable",
    "UnknownHold",
    "UnknownSku",
]
