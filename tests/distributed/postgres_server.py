"""A private PostgreSQL cluster (initdb in a temp folder, its own port), so a test may
restart it and terminate its backends without touching the PostgreSQL that other tests share.

PostgreSQL refuses to run as root, so when we are root its commands run as the `postgres` user
(the Debian package makes it) and the folder is handed to that user."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import free_port

PG_BIN_ROOT = Path("/usr/lib/postgresql")
COMMAND_TIMEOUT_S = 60.0
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "300",
    # Nothing here outlives the run: durability would only slow every COMMIT down.
    "fsync": "off",
    "full_page_writes": "off",
}


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian keeps it off PATH)."""
    if not PG_BIN_ROOT.is_dir():
        return None
    versions = sorted((p for p in PG_BIN_ROOT.iterdir() if (p / "bin" / "initdb").exists()),
                      key=lambda p: [int(x) for x in p.name.split(".") if x.isdigit()])  # fmt: skip
    return versions[-1] / "bin" if versions else None


@dataclass
class PostgresServer:
    bin: Path
    folder: Path
    port: int
    settings: Mapping[str, str] = field(default_factory=dict)  # on top of SETTINGS

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stderr.strip()}\n{tail}")

    def _ctl(self, action: str, *extra: str) -> None:
        settings = {**SETTINGS, **self.settings}
        options = " ".join(f"-c {name}={value}" for name, value in settings.items())
        self._run(
            "pg_ctl", action, "-D", str(self.data), "-w", "-l", str(self.folder / "server.log"),
            "-o", f"-p {self.port} -k {self.folder} {options}", *extra,
        )  # fmt: skip

    def init(self, files: Mapping[str, bytes]) -> None:
        """initdb, then `files` into the data folder (where relative paths in settings point,
        e.g. ssl_key_file), private to the server: it refuses a key others can read."""
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N")
        for name, content in files.items():
            path = self.data / name
            path.write_bytes(content)
            path.chmod(0o600)
            if os.geteuid() == 0:
                shutil.chown(path, "postgres", "postgres")

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        """Fast mode: every session is cut off at once, as in a crash-restart or failover."""
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")


@contextmanager
def running_postgres(
    settings: Mapping[str, str] | None = None, files: Mapping[str, bytes] | None = None
) -> Iterator[PostgresServer]:
    """A fresh cluster with `settings` and `files` (see `init`), started; stopped and removed
    afterwards."""
    bin_ = pg_bin()
    if bin_ is None:
        raise RuntimeError(f"no PostgreSQL server binaries under {PG_BIN_ROOT}")
    folder = Path(tempfile.mkdtemp(prefix="sk-stress-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    server = PostgresServer(bin_, folder, free_port(), settings or {})
    try:
        server.init(files or {})
        server.start()
        yield server
    finally:
        with contextlib.suppress(RuntimeError):  # never started, or gone: the folder goes
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
