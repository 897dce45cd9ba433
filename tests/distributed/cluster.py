"""Several real `stockkeeper serve` processes sharing one PostgreSQL schema."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from stockkeeper.bench import cluster as bench
from tests.conftest import POSTGRES_URL, admin_execute


def _admin_sql(sql: str) -> None:
    asyncio.run(admin_execute(sql))


@dataclass(frozen=True)
class Cluster(bench.Cluster):
    """The benchmark's cluster, and the database it runs on (tests read it directly)."""

    database_url: str = ""


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A database URL whose search_path is a new PostgreSQL schema, dropped afterwards."""
    schema = f"sk_dist_{uuid.uuid4().hex[:12]}"
    _admin_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_URL}?search_path={schema}"
    finally:
        _admin_sql(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def running_servers(
    tmp: Path,
    database_url: str,
    servers: int,
    workers: int = 1,
    cache_url: str | Sequence[str] = "memory://",
    env: Mapping[int, Mapping[str, str]] | None = None,
    command: Sequence[str] = (bench.STOCKKEEPER, "serve"),
) -> Iterator[Cluster]:
    """`servers` serve commands (of `workers` processes each) on one database and cache, started
    and stopped by the benchmark's launcher; `env` adds environment variables to the servers it
    names by index; `command` starts another server than `stockkeeper serve` (a baseline). The
    clerk token is "shop", the audit user the tests expect."""
    with bench.running_servers(
        database_url,
        cache_url,
        servers,
        workers,
        log_dir=tmp,
        env=env,
        clerk_name="shop",
        command=command,
    ) as started:
        yield Cluster(
            started.urls,
            started.admin_token,
            started.clerk_token,
            started.processes,
            database_url,
        )


@contextmanager
def running_cluster(
    tmp: Path, servers: int, workers: int = 1, cache_url: str = "memory://"
) -> Iterator[Cluster]:
    """Servers sharing one fresh PostgreSQL schema (and the cache at `cache_url`)."""
    with (
        fresh_schema() as database_url,
        running_servers(tmp, database_url, servers, workers, cache_url) as cluster,
    ):
        yield cluster
