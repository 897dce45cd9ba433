"""A local cluster for the benchmarks: K real `stockkeeper serve` processes (or baseline
servers, see `baseline_command`) on one database and one cache, optionally in a fresh PostgreSQL
schema and on a private redis-server, all stopped and removed on exit (also on error or Ctrl-C),
so a bench run leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

STOCKKEEPER = shutil.which("stockkeeper", path=str(Path(sys.executable).parent)) or "stockkeeper"
REDIS_SERVER = shutil.which("redis-server") or "redis-server"
LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
PRIVATE_REDIS = "redis-private"  # --cache value: start a private redis-server for this run
TOKEN = re.compile(r"^sk_\S+$", re.MULTILINE)
STARTUP_S_MAX = 30.0
STOP_S_MAX = 10.0
TOKEN_CREATE_S_MAX = 30.0
POLL_S = 0.1


@dataclass(frozen=True)
class Cluster:
    """What a scenario needs to drive a cluster: its URLs and two tokens (and, for a cluster
    started here, its processes)."""

    urls: list[str]
    admin_token: str
    clerk_token: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list, compare=False)

    def kill(self, n: int) -> None:
        """SIGKILL server `n` and its workers: no shutdown, no last words."""
        kill(self.processes[n])


def baseline_command(kind: str) -> list[str]:
    """The argv prefix that starts baseline server `kind` ("naive" or "hello", see
    stockkeeper.bench.baselines) in place of `stockkeeper serve`, taking the same options."""
    return [sys.executable, "-m", "stockkeeper.bench.baselines", kind]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def has_schema(database_url: str) -> bool:
    """Whether a PostgreSQL URL already names a schema (then it is used as it is)."""
    query = urllib.parse.urlsplit(database_url).query
    return "search_path" in urllib.parse.parse_qs(query)


def with_search_path(database_url: str, schema: str) -> str:
    parts = urllib.parse.urlsplit(database_url)
    query = urllib.parse.urlencode([*urllib.parse.parse_qsl(parts.query), ("search_path", schema)])
    return urllib.parse.urlunsplit(parts._replace(query=query))


async def _execute(database_url: str, sql: str, timeout_s: float) -> None:
    import asyncpg

    conn = await asyncpg.connect(database_url, timeout=timeout_s)
    try:
        await conn.execute(sql, timeout=timeout_s)
    finally:
        await conn.close(timeout=timeout_s)


@contextmanager
def fresh_schema(database_url: str, timeout_s: float = 30.0) -> Iterator[str]:
    """A URL whose search_path is a new schema, dropped afterwards: the audit log is
    append-only, so a bench run cannot clean up row by row."""
    schema = f"sk_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_execute(database_url, f"CREATE SCHEMA {schema}", timeout_s))
    try:
        yield with_search_path(database_url, schema)
    finally:
        asyncio.run(_execute(database_url, f"DROP SCHEMA {schema} CASCADE", timeout_s))


def _redis_answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own (no persistence) on a free port, so the run never touches a
    shared Redis; yields its URL and stops it afterwards."""
    port = free_port()
    command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + STARTUP_S_MAX
        while not _redis_answers_ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(POLL_S)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], group: bool = False) -> None:
    """SIGTERM, then SIGKILL if it has not exited within STOP_S_MAX."""
    stop_all([process], group)


def stop_all(processes: Sequence[subprocess.Popen[bytes]], group: bool = False) -> None:
    """`stop` each, all at once: a server drains for its grace before it stops, and the
    graces of a cluster's servers then run side by side."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        _signal(process, signal.SIGTERM, group)
    deadline = time.monotonic() + STOP_S_MAX
    for process in processes:
        if process not in running:
            if group:
                _signal(process, signal.SIGKILL, group)  # orphaned workers of an exited server
            continue
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL, group)
            process.wait(timeout=STOP_S_MAX)


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a server started here and its workers (its process group), and reap it."""
    _signal(process, signal.SIGKILL, group=True)
    process.wait(timeout=STOP_S_MAX)


def _signal(process: subprocess.Popen[bytes], signum: int, group: bool) -> None:
    try:
        if group:
            os.killpg(process.pid, signum)  # the server and its granian workers
        else:
            process.send_signal(signum)
    except ProcessLookupError:
        pass


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1.0) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S_MAX
    while not _ready(url):
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"server at {url} not ready after {STARTUP_S_MAX} s: {_tail(log)}")
        time.sleep(POLL_S)


def _tail(log: Path, chars: int = 2000) -> str:
    return log.read_text(errors="replace")[-chars:]


def create_token(database_url: str, name: str, role: str) -> str:
    """A token made by the real CLI, as an operator would make it."""
    command = [STOCKKEEPER, "token", "create", name, "--role", role, "--database", database_url]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=TOKEN_CREATE_S_MAX, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"token create failed: {done.stderr.strip()}")
    return done.stdout.strip()


@dataclass(frozen=True)
class Server:
    """How to start one server, so that it can be started again the same way (on its port) after
    it was killed. Its stdout and stderr go to `<logs>.out` and `<logs>.log`, appended to."""

    port: int
    database_url: str
    cache_url: str
    logs: Path
    workers: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    command: Sequence[str] = (STOCKKEEPER, "serve")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def out(self) -> Path:
        return self.logs.with_suffix(".out")

    def start(self) -> subprocess.Popen[bytes]:
        """Start it and wait until it is ready; raises with its log's tail if it is not."""
        where = ["--port", str(self.port), "--workers", str(self.workers)]
        log = self.logs.with_suffix(".log")
        with self.out.open("ab") as stdout, log.open("ab") as stderr:
            process = subprocess.Popen(
                [*self.command, *where, "--database", self.database_url, "--cache", self.cache_url],
                stdout=stdout,
                stderr=stderr,
                env={**os.environ, **self.env},
                start_new_session=True,  # its own process group, so stop reaches workers
            )
        try:
            _wait_ready(self.url, process, log)
        except BaseException:
            stop(process, group=True)
            raise
        return process


@contextmanager
def running_servers(
    database_url: str,
    cache_url: str | Sequence[str],
    servers: int,
    workers: int = 1,
    log_dir: Path | None = None,
    admin_token: str | None = None,
    env: Mapping[int, Mapping[str, str]] | None = None,
    clerk_name: str | None = None,
    *,
    command: Sequence[str] = (STOCKKEEPER, "serve"),
) -> Iterator[Cluster]:
    """Start `servers` serve commands of `workers` processes each, one after another (the first
    start against an empty database prints the admin token; pass `admin_token` for a database
    that has one already), and stop them all on exit. `env` adds environment variables to the
    servers it names by index (failpoints, say). `command` is the argv prefix each server runs,
    with `--port --workers --database --cache` appended (`baseline_command` for a baseline).
    `cache_url` is every server's, or one per server (each through its own fault proxy, say)."""
    cache_urls = [cache_url] * servers if isinstance(cache_url, str) else list(cache_url)
    assert len(cache_urls) == servers, "one cache URL, or one per server"
    processes: list[subprocess.Popen[bytes]] = []
    with ExitStack() as stack:
        if log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sk-bench-")))
        try:
            urls, printed = [], []
            for n in range(servers):
                server = Server(
                    free_port(), database_url, cache_urls[n], log_dir / f"server-{n}", workers,
                    (env or {}).get(n, {}), command,
                )  # fmt: skip
                processes.append(server.start())
                urls.append(server.url)
                printed += TOKEN.findall(server.out.read_text(errors="replace"))
            if len(printed) > 1:
                raise RuntimeError(
                    f"{len(printed)} servers printed an admin token; only the first may"
                )
            admin = admin_token or (printed[0] if printed else None)
            if admin is None:
                raise RuntimeError(
                    "the database has an admin token already (none was printed): pass it"
                )
            name = clerk_name or f"bench-{uuid.uuid4().hex[:8]}"
            yield Cluster(urls, admin, create_token(database_url, name, "clerk"), processes)
        finally:
            stop_all(processes, group=True)


@contextmanager
def local_cluster(
    servers: int,
    workers: int = 1,
    database_url: str = LOCAL_POSTGRES_URL,
    cache_url: str = PRIVATE_REDIS,
    admin_token: str | None = None,
    *,
    command: Sequence[str] = (STOCKKEEPER, "serve"),
) -> Iterator[Cluster]:
    """Servers on `database_url` (a PostgreSQL URL without a schema gets a fresh one, dropped
    afterwards) and `cache_url` (PRIVATE_REDIS starts a redis-server of our own), each started
    by `command` (see running_servers)."""
    with ExitStack() as stack:
        if database_url.startswith(("postgresql://", "postgres://")) and not has_schema(
            database_url
        ):
            database_url = stack.enter_context(fresh_schema(database_url))
        if cache_url == PRIVATE_REDIS:
            cache_url = stack.enter_context(private_redis())
        yield stack.enter_context(
            running_servers(
                database_url, cache_url, servers, workers, admin_token=admin_token, command=command
            )
        )
