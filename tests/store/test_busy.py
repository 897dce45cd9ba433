"""Overload is answered fast and clearly: a request that finds no database connection (or, on
SQLite, the writer) free within pool_wait_ms_max gets 503 busy with Retry-After, and nothing
changes. Before, it waited 5 s and then said "database unreachable: " with no reason."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from stockkeeper import metrics
from stockkeeper.domain import Busy, Item, Role
from stockkeeper.http.app import App
from stockkeeper.service import Inventory
from stockkeeper.store import StoreOptions
from tests.holds import held

WAIT_MS = 100


async def test_a_write_finding_every_connection_taken_is_refused_fast(database_url: str) -> None:
    options = StoreOptions(pool_size=1, pool_wait_ms_max=WAIT_MS)
    async with await Inventory.open(database_url, options) as inventory:
        await inventory.set_stock("B-1", 5, user="t")
        token = await inventory.create_token("shop", Role.CLERK)
        refusals = metrics.BUSY_REFUSALS._value.get()
        async with held("store.write.before_commit") as hold:
            held_write = inventory.decrement_stock("B-1", 1, user="t", idempotency_key="held")
            first = asyncio.create_task(held_write)  # a transaction: it holds its connection
            await hold.reached()
            started = time.monotonic()
            with pytest.raises(Busy, match=f"busy: .* within {WAIT_MS} ms"):
                await inventory.decrement_stock("B-1", 1, user="t")
            waited_s = time.monotonic() - started
            app = App.for_inventory(inventory)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://sk") as http:
                response = await http.post(
                    "/v1/items/B-1/purchase",
                    json={"quantity": 1},
                    headers={"Authorization": f"Bearer {token}"},
                )
            hold.release()
            await first
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["code"] == "unavailable"
        assert response.json()["detail"].startswith("busy: ")
        assert waited_s < 1.0  # bounded by pool_wait_ms_max, not the old 5 s
        assert metrics.BUSY_REFUSALS._value.get() == refusals + 2
        assert await inventory.get_stock("B-1") == Item("B-1", 4, 2)
