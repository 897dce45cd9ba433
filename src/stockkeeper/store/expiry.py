"""Giving back the stock of overdue holds, each hold as audited changes of its own.

Two callers: a request that needs an overdue hold's stock (it waits for the hold's lock, in id
order), and the background expirer (it skips any hold another transaction has locked, so two
servers never take one). Both lock the holds first and then every item involved in one sorted
statement, the lock order every hold write follows (docs/holds.md).
"""

from __future__ import annotations

from stockkeeper import failpoints
from stockkeeper.domain import Expiry, Reason, Write
from stockkeeper.holds import HoldState
from stockkeeper.store.sql_tx import Applied, HoldRow, SqlTx

# A request expires at most this many overdue holds on its SKUs; the expirer takes the rest.
DUE_PER_REQUEST_MAX = 1000


async def expire_due_on(tx: SqlTx, skus: list[str]) -> tuple[Expiry, ...]:
    """Expire the overdue holds on `skus` before the write that needs their stock, and lock
    `skus` with their items in the same sorted pass."""
    now = await tx.now()
    holds = await tx.lock_due(now, skus, DUE_PER_REQUEST_MAX)
    return tuple(await _expire(tx, holds, skus))


async def expire_batch(tx: SqlTx, limit: int) -> list[Expiry]:
    """The expirer's round: up to `limit` of the longest overdue holds no one else has locked."""
    holds = await tx.lock_due(await tx.now(), None, limit)
    return await _expire(tx, holds, [])


async def _expire(tx: SqlTx, holds: list[HoldRow], skus: list[str]) -> list[Expiry]:
    if not holds:
        return []
    await tx.lock_items(sorted({line.sku for hold in holds for line in hold.lines} | set(skus)))
    recorded = await tx.now()  # after the item locks: the moment the expiry is recorded
    expired = []
    for hold in holds:
        rows = [
            Applied(await tx.settle(line.sku, 0, line.quantity), 0, -line.quantity)
            for line in hold.lines
        ]
        await failpoints.hit("store.expire.before_audit")
        # The audit names the hold's own user: an expiry is its checkout ending, by no one.
        write = Write(Reason.EXPIRE, (), hold.user, hold.on_behalf_of)
        changes = await tx.audited(write, rows, hold.id, recorded)
        await tx.close_hold(hold.id, HoldState.EXPIRED, recorded, {})
        lag_s = (recorded - hold.expires_at).total_seconds()
        expired.append(Expiry(hold.id, changes, lag_s))
    return expired
