"""A private Redis for distributed tests: its own port, so a test may restart it (or stop it)
without touching the Redis other tests share. With `tls`, that port speaks TLS only."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import free_port

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
STARTUP_S_MAX = 10.0


@dataclass(frozen=True)
class RedisTls:
    cert: Path
    key: Path
    ca: Path  # the CA of the client certificates it accepts
    auth_clients: bool = False  # whether it demands one


@dataclass
class RedisServer:
    port: int
    tls: RedisTls | None = None
    bind: tuple[str, ...] = ("127.0.0.1",)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'redis' if self.tls is None else 'rediss'}://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [REDIS_SERVER, "--bind", *self.bind, "--save", "", "--appendonly", "no"]
        if self.tls is None:
            command += ["--port", str(self.port)]
        else:
            command += ["--port", "0", "--tls-port", str(self.port)]
            command += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            command += ["--tls-ca-cert-file", str(self.tls.ca)]
            command += ["--tls-auth-clients", "yes" if self.tls.auth_clients else "no"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + STARTUP_S_MAX
        while time.monotonic() < deadline and self.process.poll() is None:
            if self._answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def _answers(self) -> bool:
        """PONG from redis-cli; a TLS port only has to accept: redis-cli would need the
        client certificate that the server may demand."""
        if self.tls is not None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return False
            return True
        ping = subprocess.run(
            ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
        )
        return ping.stdout.strip() == "PONG"

    def kill(self) -> None:
        """Dies at once, keeping nothing: a restart comes back empty."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@contextmanager
def running_redis(
    tls: RedisTls | None = None, bind: tuple[str, ...] = ("127.0.0.1",)
) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tls, bind)
    server.start()
    try:
        yield server
    finally:
        server.kill()
