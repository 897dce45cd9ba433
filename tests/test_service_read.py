"""The one read path: what it answers, and the failpoint a cache fill will race at."""

from __future__ import annotations

import asyncio

import pytest

from stockkeeper.domain import InvalidRequest, Item
from stockkeeper.service import Inventory
from tests.holds import held


async def test_a_read_held_after_its_fetch_answers_what_it_fetched(inventory: Inventory) -> None:
    """Held at the failpoint, a read returns the version it fetched even though a newer write
    commits meanwhile: exactly the stale fill the coherent cache must not keep."""
    await inventory.set_stock("R-1", 5, user="t")
    async with held("service.read.after_fetch") as hold:
        read = asyncio.create_task(inventory.read("R-1"))
        await hold.reached()
        await inventory.decrement_stock("R-1", 1, user="t")
        hold.release()
        assert (await read).item == Item("R-1", 5, 1)
    assert await inventory.get_stock("R-1") == Item("R-1", 4, 2)


async def test_min_version_ahead_of_the_database_is_invalid(inventory: Inventory) -> None:
    await inventory.set_stock("R-2", 5, user="t")
    assert (await inventory.read("R-2", min_version=1)).item.version == 1
    with pytest.raises(InvalidRequest, match="min_version"):
        await inventory.read("R-2", min_version=2)
