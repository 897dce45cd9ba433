"""Shared fixtures: real databases (a fresh PostgreSQL schema or SQLite file per test)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from stockkeeper.domain import Role
from stockkeeper.http.app import App
from stockkeeper.service import Inventory

POSTGRES_URL = os.environ.get(
    "STOCKKEEPER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("sqlite", "postgres")


async def admin_execute(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A URL whose search_path is a fresh schema, dropped afterwards (the audit log is
    append-only, so tests cannot clean it row by row)."""
    schema = f"sk_test_{uuid.uuid4().hex[:12]}"
    await admin_execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_URL}?search_path={schema}"
    finally:
        await admin_execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'stockkeeper.db'}"


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """The same contract test runs once per backend."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def inventory(database_url: str) -> AsyncIterator[Inventory]:
    async with await Inventory.open(database_url) as opened:
        yield opened


@dataclass
class Api:
    """An HTTP client over the real app, with one token per role."""

    http: httpx.AsyncClient
    tokens: dict[Role, str]

    def auth(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
async def api(inventory: Inventory) -> AsyncIterator[Api]:
    tokens = {role: await inventory.create_token(role.name.lower(), role) for role in Role}
    transport = httpx.ASGITransport(app=App.for_inventory(inventory))
    async with httpx.AsyncClient(transport=transport, base_url="http://stockkeeper") as http:
        yield Api(http, tokens)
