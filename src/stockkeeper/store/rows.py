"""Row shapes shared by the backends, so both read the audit log the same way."""

from __future__ import annotations

from datetime import datetime

from stockkeeper.domain import AuditEntry, Reason
from stockkeeper.store.sql_tx import Row

AUDIT_COLUMNS = (
    "id, sku, version, delta, on_hand, held_delta, held, hold_id, user_name, on_behalf_of, "
    "reason, idempotency_key, at"
)


def audit_entry(row: Row, at: datetime) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        sku=row["sku"],
        version=row["version"],
        delta=row["delta"],
        on_hand=row["on_hand"],
        user=row["user_name"],
        on_behalf_of=row["on_behalf_of"],
        reason=Reason(row["reason"]),
        idempotency_key=row["idempotency_key"],
        at=at,
        held_delta=row["held_delta"],
        held=row["held"],
        hold_id=row["hold_id"],
    )


PURGED_NODE_KEY = "cache_purged:"
"""stockkeeper_meta key prefix of a promoted Redis Cluster primary that was purged."""
