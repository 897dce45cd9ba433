"""The cluster a stress run breaks: K real `stockkeeper serve` processes on a private PostgreSQL
and a private Redis, each server reaching each of them through its own fault proxy, so that one
server can be cut off from one upstream, or have its traffic to it delayed, while the others
are not. Every part can be killed and started again the same way."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from stockkeeper.bench.cluster import STOCKKEEPER, TOKEN, Server, kill
from stockkeeper.faults.proxy import FaultProxy
from tests.distributed.postgres_server import PostgresServer, running_postgres
from tests.distributed.redis_server import RedisServer
from tests.processes import free_port

# Short timeouts, so that a fault costs the run seconds, not minutes.
SERVER_ENV = {"STOCKKEEPER_LOCK_WAIT_MS_MAX": "2000", "STOCKKEEPER_POOL_WAIT_MS_MAX": "2000"}


@dataclass
class Node:
    """One server and its two proxies (to Redis and to PostgreSQL)."""

    spec: Server
    redis_proxy: FaultProxy
    pg_proxy: FaultProxy
    failpoints_file: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.spec.url

    def start(self) -> None:
        self.process = self.spec.start()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last words (its workers too)."""
        if self.process is not None:
            kill(self.process)
            self.process = None

    def arm(self, spec: str) -> None:
        """Arm failpoints in the running server (it follows this file; "" disarms all)."""
        self.failpoints_file.write_text(spec)


@dataclass
class StressCluster:
    postgres: PostgresServer
    redis: RedisServer
    nodes: list[Node]
    admin_token: str = ""
    frozen: bool = field(default=False)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def database_url(self) -> str:
        """Direct, not through a proxy: for the run's own checks."""
        return self.postgres.url

    def flush_redis(self) -> None:
        subprocess.run(
            ["redis-cli", "-p", str(self.redis.port), "FLUSHALL"], check=True, capture_output=True
        )

    def freeze_redis(self) -> None:
        assert self.redis.process is not None
        self.redis.process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw_redis(self) -> None:
        if self.frozen and self.redis.process is not None:
            self.redis.process.send_signal(signal.SIGCONT)
        self.frozen = False

    def heal(self) -> None:
        """Undo every fault: proxies pass, Redis runs, every server is up with no failpoint."""
        self.thaw_redis()
        if self.redis.process is None:
            self.redis.start()
        for node in self.nodes:
            node.redis_proxy.delay(0)
            node.pg_proxy.delay(0)
            for proxy in (node.redis_proxy, node.pg_proxy):
                proxy.refuse(False)
                proxy.heal()
            node.arm("")
            if node.process is None or node.process.poll() is not None:
                node.start()


@contextmanager
def stress_cluster(
    folder: Path,
    servers: int,
    command: Sequence[str] = (STOCKKEEPER, "serve"),
    failpoints: str = "",
) -> Iterator[StressCluster]:
    """`command` starts another server than `stockkeeper serve`: a naive baseline, to show the
    run catches it. `failpoints` are armed in every server all along, under the faults'."""
    with ExitStack() as stack:
        postgres = stack.enter_context(running_postgres())
        redis = RedisServer(free_port())
        redis.start()
        stack.callback(redis.kill)  # SIGKILL: it ends a frozen (SIGSTOPped) Redis too
        nodes = []
        for n in range(servers):
            redis_proxy = stack.enter_context(FaultProxy("127.0.0.1", redis.port))
            pg_proxy = stack.enter_context(FaultProxy("127.0.0.1", postgres.port))
            failpoints_file = folder / f"server-{n}.failpoints"
            failpoints_file.write_text("")
            database_url = f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/postgres"
            env = {
                **SERVER_ENV,
                "STOCKKEEPER_FAILPOINTS": failpoints,
                "STOCKKEEPER_FAILPOINTS_FILE": str(failpoints_file),
            }
            spec = Server(
                free_port(),
                database_url,
                f"redis://127.0.0.1:{redis_proxy.port}/0",
                folder / f"server-{n}",
                env=env,
                command=command,
            )
            nodes.append(Node(spec, redis_proxy, pg_proxy, failpoints_file))
        cluster = StressCluster(postgres, redis, nodes)
        for node in nodes:
            node.start()
            stack.callback(node.kill)
        printed = TOKEN.findall(nodes[0].spec.out.read_text(errors="replace"))
        assert len(printed) == 1, f"the first start prints one admin token, got {printed}"
        cluster.admin_token = printed[0]
        yield cluster
