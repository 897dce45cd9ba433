"""Creating, confirming, extending and releasing holds, once for every backend.

The same guarantees as store/writes.py: a hold takes stock with one conditional statement on
`available`, a hold of several lines locks its items in sorted order, and every change of
`on_hand` or `held` commits with its audit entry and the hold's own row, or nothing does. A
hold's lock is always taken before any item's. Whether a hold is expired is decided by the
database's clock read after its lock is held, never before a wait for it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NoReturn

import orjson

from stockkeeper import failpoints
from stockkeeper.domain import InsufficientStock, LineChange, Reason, Write
from stockkeeper.holds import (
    ConfirmLine,
    Hold,
    HoldAction,
    HoldLine,
    HoldReceipt,
    HoldState,
    HoldWrite,
    UnknownHold,
    check_action,
    plan_confirm,
    state_at,
)
from stockkeeper.store.expiry import expire_due_on
from stockkeeper.store.sql_tx import Applied, HoldRow, SqlTx
from stockkeeper.store.writes import ExpireFirst, lock_enough, refuse, replayed_answer

_ENDS = {
    HoldAction.CONFIRM: (HoldState.CONFIRMED, Reason.CONFIRM),
    HoldAction.RELEASE: (HoldState.RELEASED, Reason.RELEASE),
}


async def apply_hold_write(tx: SqlTx, op: HoldWrite, *, expire_first: bool = False) -> HoldReceipt:
    key = op.idempotency_key
    if key is not None:
        response = await replayed_answer(tx, op.user, key, op.request_hash)
        if response is not None:
            return HoldReceipt(Hold.from_json(orjson.loads(response)), replayed=True)
    if op.action is HoldAction.CREATE:
        receipt = await _create(tx, op, expire_first)
    else:
        receipt = await _act(tx, op)
    if key is not None:
        await tx.save_response(op.user, key, orjson.dumps(receipt.hold.to_json()))
    await failpoints.hit("store.hold.before_commit")
    return receipt


async def read_hold(tx: SqlTx, hold_id: str) -> Hold | None:
    """The hold as it is now by the database's clock (an overdue one is `expired`)."""
    row = await tx.read_hold(hold_id, lock=False)
    if row is None:
        return None
    return Hold(
        row.id, state_at(row.state, row.expires_at, await tx.now()), row.expires_at, row.lines
    )


async def _create(tx: SqlTx, op: HoldWrite, expire_first: bool) -> HoldReceipt:
    assert op.lines, "a hold has lines"
    skus = [line.sku for line in op.lines]
    expired = await expire_due_on(tx, skus) if expire_first else ()
    wanted = [(line.sku, line.quantity) for line in op.lines]
    rows, now = await _set_aside(tx, wanted, may_expire=not expire_first)
    lines = tuple(HoldLine(line.sku, line.quantity) for line in op.lines)
    hold = HoldRow(
        op.hold_id,
        op.user,
        op.on_behalf_of,
        HoldState.ACTIVE,
        now + timedelta(seconds=op.ttl_s),
        lines,
    )
    await tx.insert_hold(hold, now)
    write = Write(Reason.HOLD, (), op.user, op.on_behalf_of, op.idempotency_key)
    changes = await tx.audited(write, rows, op.hold_id, now)
    return HoldReceipt(Hold(hold.id, hold.state, hold.expires_at, lines, changes), expired=expired)


async def _set_aside(
    tx: SqlTx, wanted: list[tuple[str, int]], *, may_expire: bool
) -> tuple[list[Applied], datetime]:
    """Hold every (sku, quantity) line, or refuse the lot (ExpireFirst, if it `may_expire`
    and an overdue hold on them may hold what is missing); in request order, with the clock
    read once every item lock is held: ttl_s runs from there, not from before a lock wait."""
    if len(wanted) == 1:
        ((sku, quantity),) = wanted
        item = await tx.set_aside(sku, quantity)
        now = await tx.now()
        if item is None:
            expire = may_expire and await tx.any_due([sku], now)
            refuse_hold_line(sku, quantity, await tx.available(sku), expire)
        return [Applied(item, 0, quantity)], now
    try:
        await lock_enough(tx, wanted)
    except InsufficientStock:
        if may_expire and await tx.any_due([sku for sku, _ in wanted], await tx.now()):
            raise ExpireFirst() from None
        raise
    after = {}
    for sku, quantity in sorted(wanted):
        item = await tx.set_aside(sku, quantity)
        assert item is not None, "the row is locked and was checked: the hold must apply"
        after[sku] = item
    return [Applied(after[sku], 0, quantity) for sku, quantity in wanted], await tx.now()


def refuse_hold_line(sku: str, quantity: int, available: int | None, expire: bool) -> NoReturn:
    """Why a one-line hold did not apply, given what was available (None: no item); or run it
    again expiring first, if an overdue hold on the SKU may hold what is missing."""
    if expire:
        raise ExpireFirst()
    refuse(LineChange(sku, -quantity), available, is_order=True)


async def _act(tx: SqlTx, op: HoldWrite) -> HoldReceipt:
    hold = await tx.read_hold(op.hold_id, lock=True)
    if hold is None:
        raise UnknownHold(op.hold_id)
    await failpoints.hit("store.hold.locked")
    if op.action is not HoldAction.EXTEND:
        await tx.lock_items(sorted(line.sku for line in hold.lines))
    # Read once every lock is held: the decision's moment, and the stamp of its audit entries.
    now = await tx.now()
    check_action(op.action, state_at(hold.state, hold.expires_at, now))
    if op.action is HoldAction.EXTEND:
        expires_at = now + timedelta(seconds=op.ttl_s)
        await tx.set_expires_at(hold.id, expires_at)
        return HoldReceipt(Hold(hold.id, HoldState.ACTIVE, expires_at, hold.lines))
    if op.action is HoldAction.CONFIRM:
        plan = plan_confirm(hold.lines, op.lines)
    else:
        plan = [ConfirmLine(line.sku, line.quantity, 0) for line in hold.lines]
    rows = [
        Applied(await tx.settle(line.sku, line.confirmed, line.held), -line.confirmed, -line.held)
        for line in plan
    ]
    state, reason = _ENDS[op.action]
    # The hold's user and shopper, as its creation recorded them: the confirm carries neither.
    changes = await tx.audited(
        Write(reason, (), op.user, hold.on_behalf_of, op.idempotency_key), rows, hold.id, now
    )
    confirmed = {line.sku: line.confirmed for line in plan} if state is HoldState.CONFIRMED else {}
    await tx.close_hold(hold.id, state, now, confirmed)
    lines = tuple(HoldLine(line.sku, line.held, confirmed.get(line.sku)) for line in plan)
    return HoldReceipt(Hold(hold.id, state, hold.expires_at, lines, changes))
