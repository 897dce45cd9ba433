"""The write algorithm, once for every backend.

Why it cannot oversell: a decrement is a single conditional statement (`on_hand >= q` checked
by the database in the statement that changes the row), never a read in Python followed by a
write. Multi-SKU orders lock their rows in sorted SKU order before changing any, so two orders
can never wait on each other in a cycle. The audit entries and the idempotency key commit in
the same transaction as the stock, or nothing does.

Stock of an expired hold is never refused to a buyer: a write that finds a line short looks for
overdue holds on its SKUs, and if there are any it is run again (ExpireFirst), expiring them
before it takes any item lock (the lock order: holds, then items; docs/holds.md).
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
from stockkeeper.store.expiry import expire_due_on
from stockkeeper.store.sql_tx import Applied, SqlTx


class ExpireFirst(Exception):
    """A line was short while overdue holds on its SKUs still hold stock: the store runs the
    write again in a new transaction with `expire_first` (this one holds item locks, and a
    hold's lock must be taken before them)."""


async def apply_write(tx: SqlTx, write: Write, *, expire_first: bool = False) -> Receipt:
    key = write.idempotency_key
    if key is not None:
        response = await replayed_answer(tx, write.user, key, write.request_hash)
        if response is not None:
            return Receipt(
                tuple(Change.from_json(c) for c in orjson.loads(response)), replayed=True
            )

    skus = [line.sku for line in write.lines]
    expired = await expire_due_on(tx, skus) if expire_first else ()
    await failpoints.hit("store.write.before_change")
    try:
        rows = await _change_stock(tx, write)
    except InsufficientStock:
        if not expire_first and await tx.any_due(skus, await tx.now()):
            raise ExpireFirst() from None
        raise
    await failpoints.hit("store.write.before_audit")
    changes = await tx.audited(write, rows)
    assert len(changes) == len(write.lines), "one audit entry per changed line"
    if key is not None:
        await tx.save_response(write.user, key, orjson.dumps([c.to_json() for c in changes]))
    await failpoints.hit("store.write.before_commit")
    return Receipt(changes, expired=expired)


async def replayed_answer(tx: SqlTx, user: str, key: str, request_hash: bytes) -> bytes | None:
    """Claim the idempotency key, or return the answer of the request that claimed it; the
    same key with another request is misuse."""
    prior = await tx.claim_key(user, key, request_hash)
    if prior is None:
        return None
    claimed_hash, response = prior
    if claimed_hash != request_hash:
        raise IdempotencyKeyReused(key)
    return response


def refuse(line: LineChange, available: int | None, *, is_order: bool) -> NoReturn:
    """Why a one-line change that did not apply was refused, given what was available (None:
    no item)."""
    if available is None:
        raise UnknownSku(line.sku)
    if line.delta > 0:
        raise InvalidRequest([FieldError("quantity", f"would raise on_hand above {ON_HAND_MAX}")])
    raise InsufficientStock([Shortage(line.sku, -line.delta, available)], is_order=is_order)


async def _change_stock(tx: SqlTx, write: Write) -> list[Applied]:
    """Apply every line, in request order."""
    if write.reason is Reason.SET:
        (line,) = write.lines
        assert line.set_to is not None and line.set_to >= 0
        if await tx.create_item(line.sku, line.set_to):
            return [Applied(Item(line.sku, line.set_to, 1), line.set_to)]
        old = await tx.lock_item(line.sku)
        if line.set_to < old.held:
            # Held stock is promised to a checkout: on_hand may not fall below it. Said as a
            # take: the set removes on_hand - set_to, of which only `available` may go.
            taken = old.on_hand - line.set_to
            raise InsufficientStock([Shortage(line.sku, taken, old.available)], is_order=False)
        return [Applied(await tx.set_on_hand(line.sku, line.set_to), line.set_to - old.on_hand)]

    is_order = write.reason is Reason.ORDER
    if len(write.lines) == 1:
        line = write.lines[0]
        if line.delta > 0:
            item = await tx.add(line.sku, line.delta, ON_HAND_MAX)
        else:
            item = await tx.take(line.sku, -line.delta)
        if item is None:
            refuse(line, await tx.available(line.sku), is_order=is_order)
        return [Applied(item, line.delta)]

    assert all(line.delta < 0 for line in write.lines), "multi-line writes are orders"
    await lock_enough(tx, [(line.sku, -line.delta) for line in write.lines])
    after: dict[str, Item] = {}
    for line in sorted(write.lines, key=lambda line: line.sku):
        item = await tx.take(line.sku, -line.delta)
        assert item is not None, "the row is locked and was checked: the decrement must apply"
        after[line.sku] = item
    return [Applied(after[line.sku], line.delta) for line in write.lines]


async def lock_enough(tx: SqlTx, wanted: list[tuple[str, int]]) -> None:
    """Lock every (sku, quantity) line's item in sorted order, then refuse the lot, naming
    every shortage, unless each has that much available."""
    available = await tx.lock_items(sorted(sku for sku, _ in wanted))
    for sku, _ in wanted:
        if sku not in available:
            raise UnknownSku(sku)
    shortages = [
        Shortage(sku, quantity, available[sku])
        for sku, quantity in wanted
        if available[sku] < quantity
    ]
    if shortages:
        raise InsufficientStock(shortages, is_order=True)
