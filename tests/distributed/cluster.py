"""Several real `stockkeeper serve` processes sharing one PostgreSQL schema."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import POSTGRES_URL, admin_execute
from tests.processes import STOCKKEEPER, free_port

STARTUP_S_MAX = 30.0
TOKEN = re.compile(r"^sk_\S+$", re.MULTILINE)


def _admin_sql(sql: str) -> None:
    asyncio.run(admin_execute(sql))


@dataclass
class Cluster:
    urls: list[str]
    database_url: str
    admin_token: str
    clerk_token: str
    processes: list[subprocess.Popen[bytes]]

    def kill(self, n: int) -> None:
        """SIGKILL server `n` and its workers: no shutdown, no last words."""
        os.killpg(self.processes[n].pid, signal.SIGKILL)
        self.processes[n].wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S_MAX
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {url} not ready after {STARTUP_S_MAX}s: {log.read_text()}")


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A database URL whose search_path is a new PostgreSQL schema, dropped afterwards."""
    schema = f"sk_dist_{uuid.uuid4().hex[:12]}"
    _admin_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_URL}?search_path={schema}"
    finally:
        _admin_sql(f"DROP SCHEMA {schema} CASCADE")


def _create_token(database_url: str, name: str, role: str) -> str:
    command = [STOCKKEEPER, "token", "create", name, "--role", role, "--database", database_url]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


@contextmanager
def running_servers(
    tmp: Path,
    database_url: str,
    servers: int,
    workers: int = 1,
    cache_url: str = "memory://",
    env: Mapping[int, Mapping[str, str]] | None = None,
) -> Iterator[Cluster]:
    """Start `servers` serve commands (of `workers` processes each) on one database and cache;
    `env` adds environment variables to the servers it names by index (failpoints, say). Stop
    them afterwards."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        urls, admin_tokens = [], []
        for n in range(servers):
            port = free_port()
            log, out = tmp / f"server-{n}.log", tmp / f"server-{n}.out"
            command = [STOCKKEEPER, "serve", "--port", str(port), "--workers", str(workers)]
            process = subprocess.Popen(
                [*command, "--database", database_url, "--cache", cache_url],
                stdout=out.open("wb"),
                stderr=log.open("wb"),
                env={**os.environ, **((env or {}).get(n, {}))},
                start_new_session=True,  # its own process group, so kill() reaches workers
            )
            processes.append(process)
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, process, log)
            urls.append(url)
            admin_tokens += TOKEN.findall(out.read_text())
        assert len(admin_tokens) == 1, "only the first start prints the admin token, once"
        clerk = _create_token(database_url, "shop", "clerk")
        yield Cluster(urls, database_url, admin_tokens[0], clerk, processes)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


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
