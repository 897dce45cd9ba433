"""Shared fixtures: real databases (a fresh PostgreSQL schema or SQLite file per test), and a
throwaway PKI with a private PostgreSQL and private Redis servers that speak TLS only."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import asyncpg
import httpx
import pytest

from stockkeeper.domain import Role
from stockkeeper.http.app import App
from stockkeeper.service import Inventory
from tests.distributed.pgbouncer import direct_url, running_pgbouncer
from tests.distributed.postgres_server import PostgresServer, running_postgres
from tests.distributed.redis_server import RedisServer, RedisTls, running_redis
from tests.tls import OTHER_HOST, Pki, make_pki

# No test needs this long; a hung one fails, and says what it awaited.
TEST_S_MAX = float(os.environ.get("STOCKKEEPER_TEST_S_MAX", "300"))


def _dump_tasks(out: TextIO) -> None:
    loop = asyncio._get_running_loop()
    faulthandler.dump_traceback(out)
    for task in [] if loop is None else asyncio.all_tasks(loop):
        print(f"--- {task!r}", file=out)
        task.print_stack(limit=50, file=out)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A limit on every test: past TEST_S_MAX, every asyncio task's stack goes to the test's
    stderr and the test fails, rather than holding the whole run until CI gives up."""

    def ran_out(signum: int, frame: object) -> None:
        _dump_tasks(sys.stderr)
        raise TimeoutError(f"{item.nodeid} ran past {TEST_S_MAX:g} s")

    previous = signal.signal(signal.SIGALRM, ran_out)
    signal.setitimer(signal.ITIMER_REAL, TEST_S_MAX)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


POSTGRES_URL = os.environ.get(
    "STOCKKEEPER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("sqlite", "postgres")
# Also through PgBouncer: `pytest.mark.parametrize("database_url", WITH_PGBOUNCER, indirect=True)`.
WITH_PGBOUNCER = (*BACKENDS, "pgbouncer")
POSTGRES_DIRECT_AND_POOLED = ("postgres", "pgbouncer")


async def admin_execute(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def new_schema() -> AsyncIterator[str]:
    """A new schema's name, dropped afterwards (the audit log is append-only, so tests cannot
    clean it row by row)."""
    schema = f"sk_test_{uuid.uuid4().hex[:12]}"
    await admin_execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        await admin_execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A URL whose search_path is a fresh schema."""
    async with new_schema() as schema:
        yield f"{POSTGRES_URL}?search_path={schema}"


@pytest.fixture
async def pgbouncer_url() -> AsyncIterator[str]:
    """A URL of a fresh schema through a PgBouncer of this test's own (transaction pooling)."""
    async with new_schema() as schema:
        with running_pgbouncer(POSTGRES_URL, [schema]) as bouncer:
            yield bouncer.url(schema)


def direct(database_url: str) -> str:
    """The URL a test's own connections use: `database_url`, or, for one through PgBouncer,
    the same schema straight at PostgreSQL."""
    return direct_url(database_url, POSTGRES_URL)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'stockkeeper.db'}"


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """The same contract test runs once per backend."""
    return backend_url(request)


def backend_url(request: pytest.FixtureRequest) -> str:
    """The URL of the fixture `<request.param>_url` (`postgres_url`, say)."""
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


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_postgres(pki: Pki) -> Iterator[PostgresServer]:
    """PostgreSQL with ssl=on and pki's server certificate, started once (initdb takes
    seconds). Its pg_hba.conf takes TLS connections only, so whatever connects to it is proven
    to use TLS. It listens on OTHER_HOST too, which its certificate does not name."""
    settings = {"ssl": "on", "listen_addresses": f"127.0.0.1,{OTHER_HOST}"}
    files = {
        "server.crt": pki.server.cert.read_bytes(),  # ssl_cert_file's default, as ssl_key_file's
        "server.key": pki.server.key.read_bytes(),
        "pg_hba.conf": b"local all all trust\nhostssl all all 127.0.0.0/8 trust\n",
    }
    with running_postgres(settings, files) as server:
        yield server


@pytest.fixture(scope="session")
def tls_redis(pki: Pki) -> Iterator[RedisServer]:
    """A TLS port only, pki's server certificate, no client certificate needed; it listens on
    OTHER_HOST too."""
    tls = RedisTls(pki.server.cert, pki.server.key, pki.ca)
    with running_redis(tls, ("127.0.0.1", OTHER_HOST)) as server:
        yield server


@pytest.fixture(scope="session")
def expired_redis(pki: Pki) -> Iterator[RedisServer]:
    with running_redis(RedisTls(pki.expired.cert, pki.expired.key, pki.ca)) as server:
        yield server
