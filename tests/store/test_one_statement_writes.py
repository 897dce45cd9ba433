"""PostgreSQL's one-statement purchase (no idempotency key): what it reports when a concurrent
purchase wins the row between its snapshot and its re-check."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from stockkeeper.domain import InsufficientStock, Item, Shortage
from stockkeeper.service import Inventory
from tests.holds import held
from tests.store.test_connection_loss import wait_for_lock_wait


async def test_a_purchase_that_lost_the_row_to_a_concurrent_one_reports_what_is_left(
    postgres_url: str,
) -> None:
    """Its snapshot saw 1 on hand; a concurrent purchase took it first, and the one statement
    re-checked the newer row and refused. The refusal says 0 is available, not its snapshot's 1."""
    name = f"sk_{uuid.uuid4().hex[:10]}"
    async with await Inventory.open(f"{postgres_url}&application_name={name}") as inv:
        await inv.set_stock("L-1", 1, user="test")
        async with held("store.write.before_commit") as hold:
            first = asyncio.create_task(
                inv.decrement_stock("L-1", 1, user="test", idempotency_key="first")
            )
            await hold.reached()  # row locked, the last item taken but not committed
            second = asyncio.create_task(inv.decrement_stock("L-1", 1, user="test"))
            await wait_for_lock_wait(name)  # its snapshot saw 1 on hand; now it waits
            hold.release()
            await first
            with pytest.raises(InsufficientStock) as refused:
                await second
        assert refused.value.shortages == [Shortage("L-1", 1, 0)]
        assert await inv.get_stock("L-1") == Item("L-1", 0, 2)
