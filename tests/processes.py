"""Helpers for tests that run the real `stockkeeper` command."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

STOCKKEEPER = shutil.which("stockkeeper", path=str(Path(sys.executable).parent)) or "stockkeeper"
START_S_MAX = 30.0
STOP_S_MAX = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Serving:
    """A server started by `serving`: where it answers, and the file its stdout goes to."""

    url: str
    stdout: Path

    def printed(self) -> str:
        return self.stdout.read_text()


@contextmanager
def serving(
    argv: Sequence[str], port: int, cwd: Path, env: Mapping[str, str] | None = None
) -> Iterator[Serving]:
    """Run a server command (`argv`, listening on `port`) until its /readyz answers 200, and stop
    it and its workers with SIGTERM (SIGKILL after STOP_S_MAX) on exit."""
    url = f"http://127.0.0.1:{port}"
    stdout, stderr = cwd / f"serve-{port}.out", cwd / f"serve-{port}.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True
        )
    try:
        deadline = time.monotonic() + START_S_MAX
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{' '.join(argv)} never became ready: {stderr.read_text()}")
            time.sleep(0.1)
        yield Serving(url, stdout)
    finally:
        _stop_group(process)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (its workers too); SIGKILL if it lingers."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_S_MAX)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait(timeout=STOP_S_MAX)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
