"""Overload past what a worker can serve is refused at once (503 busy, Retry-After), before it
touches the database or the cache, so the requests it does take keep bounded waits; health and
metrics stay answerable so an operator can see it."""

from __future__ import annotations

import asyncio

import httpx

from stockkeeper import failpoints, metrics
from stockkeeper.domain import Item, Role
from stockkeeper.http.app import App
from stockkeeper.service import Inventory

HOLD_S_MAX = 10.0


async def test_requests_past_the_bound_are_refused_fast_and_change_nothing(
    inventory: Inventory,
) -> None:
    await inventory.set_stock("F-1", 10, user="t")
    token = await inventory.create_token("shop", Role.CLERK)
    headers = {"Authorization": f"Bearer {token}"}
    gate, arrived = asyncio.Event(), asyncio.Queue[None]()

    async def wait_at_the_gate() -> None:
        arrived.put_nowait(None)
        await asyncio.wait_for(gate.wait(), HOLD_S_MAX)

    transport = httpx.ASGITransport(app=App.for_inventory(inventory, in_flight_max=2))
    async with httpx.AsyncClient(transport=transport, base_url="http://sk") as http:

        def purchase() -> asyncio.Task[httpx.Response]:
            call = http.post("/v1/items/F-1/purchase", json={"quantity": 1}, headers=headers)
            return asyncio.create_task(call)

        refusals = metrics.BUSY_REFUSALS._value.get()
        with failpoints.armed("cache.push.before", wait_at_the_gate):
            held = [purchase(), purchase()]
            for _ in held:
                await asyncio.wait_for(arrived.get(), HOLD_S_MAX)
            refused = await http.post(
                "/v1/items/F-1/purchase", json={"quantity": 1}, headers=headers
            )
            read_refused = await http.get("/v1/items/F-1", headers=headers)
            health = await http.get("/healthz")
            gate.set()
            answers = await asyncio.gather(*held)
        after = await http.get("/v1/items/F-1", headers=headers)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "unavailable"
    assert refused.json()["detail"] == "busy: 2 requests in flight on this worker already"
    assert read_refused.status_code == 503
    assert health.status_code == 200
    assert metrics.BUSY_REFUSALS._value.get() == refusals + 2
    assert [a.status_code for a in answers] == [200, 200]
    assert after.status_code == 200  # the bound frees as requests finish
    assert await inventory.get_stock("F-1") == Item("F-1", 8, 3)  # the refusal changed nothing
