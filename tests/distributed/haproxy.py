"""A real HAProxy (Debian's) running the shipped deploy/haproxy.cfg, with only its addresses
changed: its frontend on a free port, its stats socket in a temp folder, and one `server` line
per stockkeeper server given. Stopped by its PID."""

from __future__ import annotations

import csv
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.processes import free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
EXAMPLE = Path(__file__).parents[2] / "deploy" / "haproxy.cfg"
START_S_MAX = 10.0
STOP_S_MAX = 10.0
POLL_S = 0.05
_BIND = re.compile(r"^(\s*)bind \S+$", re.MULTILINE)
_SOCKET = re.compile(r"^(\s*stats socket )\S+", re.MULTILINE)
_SERVER = re.compile(r"^\s*server .*\n", re.MULTILINE)


@dataclass(frozen=True)
class HAProxy:
    port: int
    folder: Path  # its config, stats socket and log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def states(self) -> dict[str, str]:
        """Each server's status as HAProxy sees it now ("UP", "DOWN", …), by name."""
        with socket.socket(socket.AF_UNIX) as stats:
            stats.connect(str(self.folder / "stats.sock"))
            stats.sendall(b"show stat\n")
            chunks = []
            while chunk := stats.recv(65536):
                chunks.append(chunk)
        rows = csv.DictReader(b"".join(chunks).decode().removeprefix("# ").splitlines())
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def log(self) -> str:
        return (self.folder / "haproxy.log").read_text(errors="replace")


def config(port: int, folder: Path, server_ports: Sequence[int]) -> str:
    """The example's text with this machine's addresses, and nothing else changed."""
    text = EXAMPLE.read_text()
    assert len(_BIND.findall(text)) == 1 and len(_SOCKET.findall(text)) == 1, "example changed"
    text = _BIND.sub(rf"\1bind 127.0.0.1:{port}", text)
    text = _SOCKET.sub(rf"\g<1>{folder / 'stats.sock'}", text)
    indent = re.search(r"^(\s*)server ", text, re.MULTILINE)
    assert indent is not None, "the example has no server line"
    servers = "".join(
        f"{indent.group(1)}server sk{n + 1} 127.0.0.1:{server_port}\n"
        for n, server_port in enumerate(server_ports)
    )
    first = _SERVER.search(text)
    assert first is not None
    return text[: first.start()] + servers + _SERVER.sub("", text[first.start() :])


@contextmanager
def running_haproxy(folder: Path, server_ports: Sequence[int]) -> Iterator[HAProxy]:
    """HAProxy in front of `server_ports`, once it sees every one of them UP."""
    folder.mkdir(parents=True, exist_ok=True)
    proxy = HAProxy(free_port(), folder)
    (folder / "haproxy.cfg").write_text(config(proxy.port, folder, server_ports))
    with (folder / "haproxy.log").open("wb") as log:
        process = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(folder / "haproxy.cfg")], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + START_S_MAX
        while not _all_up(proxy, len(server_ports)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not come up: {proxy.log()}")
            time.sleep(POLL_S)
        yield proxy
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_S_MAX)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_S_MAX)


def _all_up(proxy: HAProxy, servers: int) -> bool:
    try:
        states = proxy.states()
    except OSError:  # not listening yet
        return False
    return len(states) == servers and all(state == "UP" for state in states.values())
