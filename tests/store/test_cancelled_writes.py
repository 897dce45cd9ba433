"""A write whose caller is cancelled (a client gone, a server closing) at any step leaves no
transaction open behind it: on SQLite an open one holds the database's write lock for every
process until this one exits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from stockkeeper.store import open_store

STEPS = ("BEGIN IMMEDIATE", "INSERT", "COMMIT")


@pytest.mark.parametrize("step", STEPS)
async def test_a_write_cancelled_at_any_step_leaves_the_database_unlocked(
    tmp_path: Path, step: str
) -> None:
    url = f"sqlite:///{tmp_path / 'stockkeeper.db'}"
    this, other = await open_store(url), await open_store(url)
    try:
        await this.migrate()
        writer = this._writer  # type: ignore[attr-defined]
        real_execute = writer.execute
        reached = asyncio.Event()

        async def execute(sql: str, *params: Any) -> Any:
            if sql.startswith(step):
                reached.set()
            return await real_execute(sql, *params)

        writer.execute = execute
        write = asyncio.create_task(this.vote_database_reads("cancelled", 1_000))
        await asyncio.wait_for(reached.wait(), 5)
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        # The other process's writer would wait out its busy timeout (5 s) behind a lock
        # left held; it must get the lock at once.
        await asyncio.wait_for(other.vote_database_reads("other", 1_000), 2)
    finally:
        await other.close()
        await this.close()
