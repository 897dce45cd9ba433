"""The write algorithm, once for every backend.

Why it cannot oversell: a decrement is a single conditional statement (`on_hand >= q` checked
by the database in the statement that changes the row), never a read in Python followed by a
write. Multi-SKU orders lock their rows in sorted SKU order before changing any, so two orders
can never wait on each other in a cycle. The audit entries and the idempotency key commit in
the same transaction as the stock, or nothing does.
"""

from __future__ import annotations

from typing import NoReturn

import orjson

from stockkeeper import failpoints
from stockkeeper.domain import (
    ON_HAND_MAX,
    Change,
    FieldError,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidRequest,
    Item,
    LineChange,
    Reason,
    Receipt,
    Shortage,
    UnknownSku,
    Write,
)
from stockkeeper.store.sql_tx import SqlTx


async def apply_write(tx: SqlTx, write: Write) -> Receipt:
    key = write.idempotency_key
    if key is not None:
        prior = await tx.claim_key(write.user, key, write.request_hash)
        if prior is not None:
            request_hash, response = prior
            if request_hash != write.request_hash:
                raise IdempotencyKeyReused(key)
            return Receipt(
                tuple(Change.from_json(c) for c in orjson.loads(response)), replayed=True
            )

    await failpoints.hit("store.write.before_change")
    rows = await _change_stock(tx, write)
    await failpoints.hit("store.write.before_audit")
    audit_ids = await tx.insert_audit(write, rows)
    assert len(audit_ids) == len(rows) == len(write.lines), "one audit entry per changed line"
    changes = tuple(
        Change(item.sku, delta, item.on_hand, item.version, audit_id, held=item.held)
        for (item, delta), audit_id in zip(rows, audit_ids, strict=True)
    )
    if key is not None:
        await tx.save_response(write.user, key, orjson.dumps([c.to_json() for c in changes]))
    await failpoints.hit("store.write.before_commit")
    return Receipt(changes)


def refuse(line: LineChange, available: int | None, *, is_order: bool) -> NoReturn:
    """Why a one-line change that did not apply was refused, given what was available (None:
    no item)."""
    if available is None:
        raise UnknownSku(line.sku)
    if line.delta > 0:
        raise InvalidRequest([FieldError("quantity", f"would raise on_hand above {ON_HAND_MAX}")])
    raise InsufficientStock([Shortage(line.sku, -line.delta, available)], is_order=is_order)


async def _change_stock(tx: SqlTx, write: Write) -> list[tuple[Item, int]]:
    """Apply every line; returns (item after, delta) per line in request order."""
    if write.reason is Reason.SET:
        (line,) = write.lines
        assert line.set_to is not None and line.set_to >= 0
        if await tx.create_item(line.sku, line.set_to):
            return [(Item(line.sku, line.set_to, 1), line.set_to)]
        old = await tx.lock_item(line.sku)
        if line.set_to < old.held:
            # Held stock is promised to a checkout: on_hand may not fall below it. Said as a
            # take: the set removes on_hand - set_to, of which only `available` may go.
            taken = old.on_hand - line.set_to
            raise InsufficientStock([Shortage(line.sku, taken, old.available)], is_order=False)
        return [(await tx.set_on_hand(line.sku, line.set_to), line.set_to - old.on_hand)]

    is_order = write.reason is Reason.ORDER
    if len(write.lines) == 1:
        line = write.lines[0]
        if line.delta > 0:
            item = await tx.add(line.sku, line.delta, ON_HAND_MAX)
        else:
            item = await tx.take(line.sku, -line.delta)
        if item is None:
            refuse(line, await tx.available(line.sku), is_order=is_order)
        return [(item, line.delta)]

    assert all(line.delta < 0 for line in write.lines), "multi-line writes are orders"
    available = await tx.lock_items(sorted(line.sku for line in write.lines))
    for line in write.lines:
        if line.sku not in available:
            raise UnknownSku(line.sku)
    shortages = [
        Shortage(line.sku, -line.delta, available[line.sku])
        for line in write.lines
        if available[line.sku] < -line.delta
    ]
    if shortages:
        raise InsufficientStock(shortages, is_order=True)
    after: dict[str, Item] = {}
    for line in sorted(write.lines, key=lambda line: line.sku):
        item = await tx.take(line.sku, -line.delta)
        assert item is not None, "the row is locked and was checked: the decrement must apply"
        after[line.sku] = item
    return [(after[line.sku], line.delta) for line in write.lines]
