"""A real PgBouncer in front of a PostgreSQL: its own port, ini and auth file in a temp folder,
`pool_mode = transaction` and otherwise its defaults, stopped by its PID.

The tests give each schema a database entry of its own, named after it, whose `connect_query`
sets the search_path on every server connection: PgBouncer 1.18 refuses a `search_path`
startup parameter (and passes no `options`), and a pooled client's own `SET` would reach
whichever server connection it happened to run on. A client that sends `RESET ALL` or `DISCARD
ALL` through it (asyncpg's default pool reset) clears that search_path for everyone after it,
so the tests' own connections go straight to PostgreSQL (`direct_url`).

PgBouncer refuses to run as root; as root it runs as the `postgres` user (Debian's package
makes it), with the folder handed to that user."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tests.processes import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
START_S_MAX = 10.0
STOP_S_MAX = 10.0
POLL_S = 0.02
POOLER_PARAMETER = "pooler=transaction"  # what stockkeeper's URL says behind it


@dataclass(frozen=True)
class PgBouncer:
    port: int
    folder: Path  # its ini, auth file and log

    def url(self, schema: str) -> str:
        """stockkeeper's database URL for `schema` through this PgBouncer."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{schema}?{POOLER_PARAMETER}"

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""


def direct_url(url: str, postgres_url: str) -> str:
    """The URL of the same schema straight at PostgreSQL (`postgres_url`, no query), for a
    test's own connections; any other URL comes back as it is."""
    parts = urlsplit(url)
    if POOLER_PARAMETER not in parts.query:
        return url
    return f"{postgres_url}?search_path={parts.path.lstrip('/')}"


def _ini(port: int, folder: Path, postgres_url: str, schemas: Sequence[str]) -> str:
    target = urlsplit(postgres_url)
    server = f"host={target.hostname} port={target.port or 5432} dbname={target.path.lstrip('/')}"
    databases = [
        f"{schema} = {server} connect_query='SET search_path TO {schema}'" for schema in schemas
    ]
    settings = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "unix_socket_dir": str(folder),
        "auth_type": "trust",  # as the test PostgreSQL trusts 127.0.0.1
        "auth_file": str(folder / "userlist.txt"),
        "pool_mode": "transaction",
        "logfile": str(folder / "pgbouncer.log"),
    }
    lines = ["[databases]", *databases, "[pgbouncer]"]
    return "\n".join([*lines, *(f"{key} = {value}" for key, value in settings.items())]) + "\n"


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextmanager
def running_pgbouncer(postgres_url: str, schemas: Sequence[str]) -> Iterator[PgBouncer]:
    """PgBouncer in front of the PostgreSQL database `postgres_url` names, with one database
    entry per schema (see the module's docstring); stopped and its folder removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="sk-pgbouncer-"))
    port = free_port()
    (folder / "pgbouncer.ini").write_text(_ini(port, folder, postgres_url, schemas))
    (folder / "userlist.txt").write_text('"postgres" ""\n')
    as_postgres = os.geteuid() == 0
    if as_postgres:
        for path in (folder, *folder.iterdir()):
            shutil.chown(path, "postgres", "postgres")
    process = subprocess.Popen(
        [PGBOUNCER, str(folder / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        user="postgres" if as_postgres else None,
        group="postgres" if as_postgres else None,
        extra_groups=[] if as_postgres else None,
    )
    bouncer = PgBouncer(port, folder)
    try:
        deadline = time.monotonic() + START_S_MAX
        while not _accepts(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start: {bouncer.log()}")
            time.sleep(POLL_S)
        yield bouncer
    finally:
        # SIGTERM is PgBouncer's immediate shutdown: its server connections close with it.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_S_MAX)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_S_MAX)
        shutil.rmtree(folder, ignore_errors=True)
