"""The faults of a stress run: a seeded plan (what, where, when, for how long) and the injector
that carries it out against a StressCluster while the clients run.

The plan is a pure function of the seed, so a failing run can be replayed with the same faults
at the same offsets; the servers' timing decides the rest. Its first faults are one of each kind
in a seeded order, so a run long enough for them fires every kind. Faults on one resource (Redis,
PostgreSQL, one server, one proxy) wait for each other; faults on different ones overlap."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from stockkeeper.faults.proxy import FaultProxy
from tests.stress.cluster import Node, StressCluster

KINDS = (
    "failpoint",  # a server's failpoints armed with delays or errors, for a while
    "kill",  # a server SIGKILLed, and started again
    "redis_flush",  # FLUSHALL: every cached key gone at once
    "redis_freeze",  # SIGSTOP, then SIGCONT: Redis hangs without closing a connection
    "redis_restart",  # killed, started again empty
    "redis_cut",  # one server cut off from Redis (held, dropped or reset)
    "pg_cut",  # one server cut off from PostgreSQL (held or reset)
    "redis_delay",  # one server's Redis traffic delayed with jitter (reorders connections)
    "pg_delay",  # one server's PostgreSQL traffic delayed with jitter
    "pg_terminate",  # every client backend terminated (pg_terminate_backend)
    "pg_restart",  # PostgreSQL restarted in fast mode
)
FAILPOINT_SPECS = (
    "store.write.before_commit=sleep(50)",  # commits land late, behind later reads
    "cache.push.before=sleep(30)",  # committed, not yet in Redis
    "service.read.after_fetch=sleep(20)",  # slow fills racing newer writes
    "store.write.before_audit=20%error",  # crashes inside the transaction
    "store.write.before_commit=20%error",  # crashes just before COMMIT
    "cache.push.before=20%error",  # crashes after COMMIT, before the push
    "cache.read_mode.before_catch_up=sleep(200)",  # a slow switch back to Redis
)
START_ATTEMPTS_MAX = 5
START_RETRY_S = 1.0
FAULTS_AT_ONCE_MAX = 3


@dataclass(frozen=True)
class Fault:
    at_s: float  # offset from the start of the clients
    kind: str
    server: int  # the server it targets (0 for the cluster-wide kinds)
    duration_s: float  # how long it lasts (0 for the instant kinds)
    detail: str = ""  # failpoint spec, cut mode, delay

    def __str__(self) -> str:
        where = f" server {self.server}" if self.kind in _PER_SERVER else ""
        lasting = f" for {self.duration_s:.1f} s" if self.duration_s else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"+{self.at_s:.1f} s {self.kind}{where}{lasting}{detail}"


_PER_SERVER = frozenset({"failpoint", "kill", "redis_cut", "pg_cut", "redis_delay", "pg_delay"})


def plan(seed: int, seconds: float, servers: int, faults_per_s: float) -> list[Fault]:
    """The faults of a run of `seconds`, starting after a second of calm and ending early enough
    to be over by `seconds` (the run then settles, fault-free, before it stops)."""
    rng = random.Random(f"faults:{seed}")
    first = list(KINDS)
    rng.shuffle(first)
    faults: list[Fault] = []
    at_s = 1.0
    while True:
        at_s += rng.expovariate(faults_per_s)
        kind = first.pop(0) if first else rng.choice(KINDS)
        fault = _draw(rng, at_s, kind, servers)
        if fault.at_s + fault.duration_s > seconds:
            return faults
        faults.append(fault)


def _draw(rng: random.Random, at_s: float, kind: str, servers: int) -> Fault:
    server = rng.randrange(servers)
    if kind == "failpoint":
        return Fault(at_s, kind, server, rng.uniform(2, 5), rng.choice(FAILPOINT_SPECS))
    if kind == "kill":
        return Fault(at_s, kind, server, rng.uniform(0.3, 2))
    if kind in ("redis_freeze", "redis_restart"):
        return Fault(at_s, kind, 0, rng.uniform(0.2, 2))
    if kind == "redis_cut":
        return Fault(at_s, kind, server, rng.uniform(0.5, 3), rng.choice(("hold", "drop", "reset")))
    if kind == "pg_cut":
        return Fault(at_s, kind, server, rng.uniform(0.5, 3), rng.choice(("hold", "reset")))
    if kind in ("redis_delay", "pg_delay"):
        delay = f"{rng.randint(2, 30)}±{rng.randint(0, 20)} ms"
        return Fault(at_s, kind, server, rng.uniform(2, 5), delay)
    return Fault(at_s, kind, 0, 0.0)


@dataclass(frozen=True)
class Fired:
    """A fault as it happened, on the operations' clock (time.monotonic)."""

    fault: Fault
    started_s: float
    ended_s: float
    error: str | None = None  # the fault could not be applied (counted, not hidden)


@dataclass
class Injector:
    cluster: StressCluster
    fired: list[Fired] = field(default_factory=list)
    skipped: list[Fault] = field(default_factory=list)  # their turn came after the fault window
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _at_once: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(FAULTS_AT_ONCE_MAX)
    )

    async def run(self, faults: list[Fault], started_s: float, until_s: float) -> None:
        """Fire each fault at its offset from `started_s` (or as soon as its resource is free),
        skipping those whose turn comes after `until_s`; return once all are over and every part
        of the cluster is healed."""
        tasks = []
        try:
            for fault in faults:
                await asyncio.sleep(max(0.0, started_s + fault.at_s - time.monotonic()))
                tasks.append(asyncio.create_task(self._fire(fault, started_s + until_s)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(self.cluster.heal)

    def _lock(self, fault: Fault) -> asyncio.Lock:
        resource = {
            "failpoint": f"server{fault.server}",
            "kill": f"server{fault.server}",
            "redis_cut": f"redis-proxy{fault.server}",
            "redis_delay": f"redis-proxy{fault.server}",
            "pg_cut": f"pg-proxy{fault.server}",
            "pg_delay": f"pg-proxy{fault.server}",
        }.get(fault.kind, "redis" if fault.kind.startswith("redis") else "postgres")
        return self._locks.setdefault(resource, asyncio.Lock())

    async def _fire(self, fault: Fault, until_s: float) -> None:
        async with self._at_once, self._lock(fault):
            started_s, error = time.monotonic(), None
            if started_s + fault.duration_s > until_s:
                self.skipped.append(fault)
                return
            try:
                await self._apply(fault)
            except Exception as failure:
                # A failed start's message ends with its log's tail: keep the last line (why).
                lines = str(failure).strip().splitlines() or [""]
                error = f"{type(failure).__name__}: {lines[-1]}"
            self.fired.append(Fired(fault, started_s, time.monotonic(), error))

    async def _apply(self, fault: Fault) -> None:
        cluster, node = self.cluster, self.cluster.nodes[fault.server]
        kind = fault.kind
        if kind == "failpoint":
            await self._during(fault, lambda: node.arm(fault.detail), lambda: node.arm(""))
        elif kind == "kill":
            await asyncio.to_thread(node.kill)
            await asyncio.sleep(fault.duration_s)
            await start(node)
        elif kind == "redis_flush":
            await asyncio.to_thread(cluster.flush_redis)
        elif kind == "redis_freeze":
            await self._during(fault, cluster.freeze_redis, cluster.thaw_redis)
        elif kind == "redis_restart":
            await self._during(fault, cluster.redis.kill, cluster.redis.start)
        elif kind in ("redis_cut", "pg_cut"):
            proxy = node.redis_proxy if kind == "redis_cut" else node.pg_proxy
            cut = {"hold": proxy.hold, "drop": proxy.drop, "reset": _reset_and_refuse(proxy)}
            await self._during(fault, cut[fault.detail], _healer(proxy))
        elif kind in ("redis_delay", "pg_delay"):
            proxy = node.redis_proxy if kind == "redis_delay" else node.pg_proxy
            ms, jitter_ms = (float(x) for x in fault.detail.removesuffix(" ms").split("±"))
            await self._during(fault, lambda: proxy.delay(ms, jitter_ms), lambda: proxy.delay(0))
        elif kind == "pg_terminate":
            await terminate_backends(cluster.database_url)
        else:
            assert kind == "pg_restart", kind
            await asyncio.to_thread(cluster.postgres.restart)

    @staticmethod
    async def _during(fault: Fault, begin: Callable[[], object], end: Callable[[], object]) -> None:
        await asyncio.to_thread(begin)
        try:
            await asyncio.sleep(fault.duration_s)
        finally:
            await asyncio.to_thread(end)


def _reset_and_refuse(proxy: FaultProxy) -> Callable[[], None]:
    """A cut that the server sees at once: every connection reset, new ones refused."""

    def cut() -> None:
        proxy.refuse(True)
        proxy.reset()

    return cut


def _healer(proxy: FaultProxy) -> Callable[[], None]:
    def heal() -> None:
        proxy.refuse(False)
        proxy.heal()

    return heal


async def start(node: Node) -> None:
    """Start a server again; its start may fail while another fault is on (PostgreSQL
    restarting, say), so it is tried a bounded number of times."""
    for attempt in range(START_ATTEMPTS_MAX):
        try:
            await asyncio.to_thread(node.start)
            return
        except RuntimeError:
            if attempt == START_ATTEMPTS_MAX - 1:
                raise
            await asyncio.sleep(START_RETRY_S)


async def terminate_backends(database_url: str) -> int:
    """Terminate every client backend but this one: what an administrator, an OOM kill or a
    pooler restart does to a server's connections."""
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await conn.close()
