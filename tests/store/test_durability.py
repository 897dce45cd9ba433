"""An acknowledged change must survive a crash: commits wait for the WAL flush."""

from __future__ import annotations

from stockkeeper.store.postgres import PostgresStore


async def test_commits_are_synchronous_even_if_the_url_asks_otherwise(postgres_url: str) -> None:
    store = await PostgresStore.connect(f"{postgres_url}&synchronous_commit=off")
    try:
        setting = await store._run(lambda conn: conn.fetchval("SHOW synchronous_commit"))
    finally:
        await store.close()
    assert setting == "on"
