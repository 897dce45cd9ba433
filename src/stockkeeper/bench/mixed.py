"""`stockkeeper bench mixed`: open-loop mixed load at a target rate against stockkeeper and its
baselines, one after another on the same machine with the same harness:

- `hello`: a bare-ASGI server with a fixed answer (the ceiling of this stack here);
- `nocache`: stockkeeper with every read from PostgreSQL;
- `naive`: the real app over cache-aside with a TTL and delete-on-write (the buggy design);
- `coherent`: stockkeeper with its coherent Redis cache.

Per system: seed the SKUs, run wrk (loadgen.py) through a warm-up and a measured window while a
probe measures visibility lag, scrape /metrics and CPU over the window, then judge every answer
against the audit log (stockkeeper.verify.history): a fast system that serves stale stock shows
as WRONG."""

from __future__ import annotations

import asyncio
import datetime
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from stockkeeper.bench.cluster import (
    PRIVATE_REDIS,
    STOCKKEEPER,
    Cluster,
    baseline_command,
    local_cluster,
)
from stockkeeper.bench.latency import Latencies
from stockkeeper.bench.loadgen import (
    LoadResult,
    Mix,
    Record,
    run_load,
    schedule_from_now,
    sku_name,
    target_of,
)
from stockkeeper.bench.oversell import Progress, call_json, read_audit
from stockkeeper.bench.probe import PROBE_SKU, ProbeResult, probe
from stockkeeper.bench.scrape import (
    Groups,
    Samples,
    cpu_snapshot,
    cpu_used,
    delta,
    histogram_quantile,
    scrape,
    total,
)
from stockkeeper.verify.history import STALE_S_MAX, Op, check

if TYPE_CHECKING:
    import aiohttp

SEED_ON_HAND = 1_000_000  # purchases never run out, so every write is a change
SEED_CONCURRENCY = 16
AUDIT_CONCURRENCY = 16
THROUGHPUT_BUCKET_S = 0.25
REQUEST_TIMEOUT_S = 10.0
LAG = "stockkeeper_visibility_lag_seconds"
DB_READS = "stockkeeper_item_database_reads_total"
CACHE_REQUESTS = "stockkeeper_cache_requests_total"
TRIPS = "stockkeeper_cache_degraded_trips_total"
FEED_WAITS = "stockkeeper_cache_feed_waits_total"


@dataclass(frozen=True)
class System:
    name: str
    description: str
    command: tuple[str, ...]
    cache_url: str
    versioned: bool = True  # answers real items (and /metrics), so they can be judged
    product: bool = True  # stockkeeper itself: a wrong answer fails the command


SYSTEMS = {
    s.name: s
    for s in (
        System(
            "hello",
            "bare ASGI hello on the same granian: the stack's ceiling",
            tuple(baseline_command("hello")),
            "memory://",
            versioned=False,
            product=False,
        ),
        System(
            "nocache",
            "stockkeeper, every read from PostgreSQL",
            (STOCKKEEPER, "serve"),
            "memory://",
        ),
        System(
            "naive",
            "cache-aside: TTL, unversioned SET, delete-on-write",
            tuple(baseline_command("naive")),
            PRIVATE_REDIS,
            product=False,
        ),
        System(
            "coherent",
            "stockkeeper with its coherent Redis cache",
            (STOCKKEEPER, "serve"),
            PRIVATE_REDIS,
        ),
    )
}


@dataclass(frozen=True)
class MixedOptions:
    rate_per_s: float = 10_000
    window_s: float = 20.0
    warmup_s: float = 5.0
    connections: int = 64
    mix: Mix = field(default_factory=Mix)
    stale_s_max: float = STALE_S_MAX


@dataclass
class SystemRun:
    """What one system did under the load, and what was wrong with it."""

    system: System
    options: MixedOptions
    servers: int
    workers: int
    load: LoadResult
    probe: ProbeResult | None
    metrics: Samples
    cpu_s: dict[str, float]
    window_s: float
    violations: dict[str, int] = field(default_factory=dict)
    violation_examples: list[str] = field(default_factory=list)
    reads_checked: int = 0

    # --- derived figures --------------------------------------------------------------------

    @property
    def measured(self) -> list[Record]:
        return self.load.measured

    def latencies(self, ops: Sequence[str], unanswered: bool = False) -> Latencies:
        """From intended send times. With `unanswered`, requests never answered count too, as
        waiting until wrk stopped: only for all operations together, since an unsent request's
        operation was never drawn."""
        latencies = Latencies().record_all(r.latency_us for r in self.measured if r.op in ops)
        if unanswered:
            latencies.record_all(self.load.unanswered_latencies_us)
        return latencies

    def service_times(self, ops: Sequence[str]) -> Latencies:
        """What a closed-loop tool would report: from the actual send."""
        return Latencies().record_all(r.service_us for r in self.measured if r.op in ops)

    def statuses(self) -> dict[str, dict[int, int]]:
        counts: dict[str, Counter[int]] = {}
        for record in self.measured:
            counts.setdefault(record.op, Counter())[record.status] += 1
        return {op: dict(sorted(c.items())) for op, c in sorted(counts.items())}

    def hit_rate(self) -> float | None:
        """Of the GETs answered 200, the share the server answered from its cache (X-Cache)."""
        marked = [r.cache for r in self.measured if r.op == "get" and r.status == 200]
        known = [c for c in marked if c in ("hit", "miss")]
        return sum(1 for c in known if c == "hit") / len(known) if known else None

    def achieved_rate(self, keep: Callable[[Record], bool] = lambda record: True) -> float:
        """Answers (those `keep` keeps) that arrived during the window, per second: what the
        servers still served. (Counting the window's requests answered by the end of the drain
        would credit an overloaded server with answers it gave afterwards.)"""
        begin, until = self.load.schedule.window_us
        arrived = sum(1 for r in self.load.records if begin <= r.done_us < until and keep(r))
        return arrived / ((until - begin) / 1e6)

    def _rate_of(self, op: str) -> float:
        return self.achieved_rate(lambda record: record.op == op)

    def wrong_statuses(self) -> int:
        """Answers that are neither a success nor the honest "busy" of an overloaded server."""
        return sum(1 for r in self.measured if r.status not in (200, 503))

    def busy(self) -> int:
        return sum(1 for r in self.measured if r.status == 503)

    def throughput(self) -> list[float]:
        """Answers per second in THROUGHPUT_BUCKET_S buckets, from the first intended send
        (warm-up included) to the end of the drain."""
        start = self.load.schedule.start_us
        buckets = [0] * (int((self.load.ended_us - start) / 1e6 / THROUGHPUT_BUCKET_S) + 1)
        for record in self.load.records:
            index = int((record.done_us - start) / 1e6 / THROUGHPUT_BUCKET_S)
            if 0 <= index < len(buckets):
                buckets[index] += 1
        return [count / THROUGHPUT_BUCKET_S for count in buckets]

    def problems(self) -> list[str]:
        """Wrong answers only: an overloaded server may answer 503 or not at all, but what it
        answers must be true."""
        found = []
        if wrong := self.wrong_statuses():
            found.append(f"{wrong} answers neither 200 nor 503")
        found += [f"{count} {kind} reads" for kind, count in self.violations.items() if count]
        return found

    def to_json(self) -> dict[str, Any]:
        get, writes, every = ("get",), ("purchase", "restock"), ("get", "purchase", "restock")
        wrk_requests = len(self.load.records)
        problems = self.problems()
        server = {
            "db_reads_per_get": _ratio(
                total(self.metrics, DB_READS),
                sum(1 for r in self.measured if r.op == "get"),
            ),
            "cache_hit_rate": _ratio(
                total(self.metrics, CACHE_REQUESTS, result="hit"),
                total(self.metrics, CACHE_REQUESTS),
            ),
            "lag_count": total(self.metrics, f"{LAG}_count"),
            "lag_p50_ms": _ms(histogram_quantile(self.metrics, LAG, 0.5)),
            "lag_p99_ms": _ms(histogram_quantile(self.metrics, LAG, 0.99)),
        }
        return {
            "system": self.system.name,
            "description": self.system.description,
            "servers": self.servers,
            "workers": self.workers,
            "offered_rate_per_s": self.options.rate_per_s,
            "window_s": self.window_s,
            "offered": self.load.schedule.offered(),
            "answered": len(self.measured),
            "unanswered": len(self.load.unanswered_latencies_us),
            "achieved_rate_per_s": self.achieved_rate(),
            "statuses": self.statuses(),
            "busy_503": self.busy(),
            "ok_rate_per_s": self.achieved_rate(lambda r: r.status == 200),
            "busy_latency_ms": Latencies()
            .record_all(r.latency_us for r in self.measured if r.status == 503)
            .to_json(),
            "hit_rate": self.hit_rate(),
            "latency": {
                "all": self.latencies(every, unanswered=True).to_json(),
                "get": self.latencies(get).to_json(),
                "write": self.latencies(writes).to_json(),
                "purchase": self.latencies(("purchase",)).to_json(),
                "restock": self.latencies(("restock",)).to_json(),
            },
            "rate_per_s": {op: self._rate_of(op) for op in every},
            "service_time_get": self.service_times(get).to_json(),
            "visibility_probe": None if self.probe is None else _probe_json(self.probe),
            "server_metrics": server,
            "degraded_trips": total(self.metrics, TRIPS),
            "feed_waits": total(self.metrics, FEED_WAITS),
            "history": {
                "reads_checked": self.reads_checked,
                "violations": self.violations,
                "examples": self.violation_examples[:10],
            },
            "cpu_cores": {k: v / self.window_s for k, v in self.cpu_s.items()},
            "load_generator": {
                "cpu_s": self.load.wrk_cpu_s,
                "cpu_us_per_request": _ratio(self.load.wrk_cpu_s * 1e6, wrk_requests),
                "socket_errors": self.load.wrk_errors,
                "command": self.load.command,
            },
            "throughput_per_s": {"bucket_s": THROUGHPUT_BUCKET_S, "values": self.throughput()},
            "problems": problems,
            "verdict": "CORRECT" if not problems else "WRONG",
        }


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _probe_json(result: ProbeResult) -> dict[str, Any]:
    lags = Latencies().record_all(round(s * 1e6) for s in result.lags_s)
    trips = Latencies().record_all(round(s * 1e6) for s in result.get_round_trips_s)
    return {
        "writes": result.writes,
        "write_errors": result.write_errors,
        "not_visible": result.not_visible,
        "read_errors": result.read_errors,
        "lag_ms": {k: lags.to_json()[k] for k in ("count", "p50_ms", "p99_ms", "max_ms")},
        "lags_ms": [s * 1000.0 for s in result.lags_s],
        "get_round_trip_p50_ms": trips.percentile_ms(50),
    }


# --- judging answers against the audit log -------------------------------------------------


def parse_audit_time(text: str) -> float:
    """The audit's RFC 3339 UTC timestamp as seconds since the epoch (CLOCK_REALTIME, as the
    load generator's)."""
    at = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return at.replace(tzinfo=datetime.UTC).timestamp()


def history_ops(records: Sequence[Record], servers: int) -> list[Op]:
    """Every successful answer as an operation of the history checker (seconds, realtime)."""
    kinds = {"get": "read", "purchase": "purchase", "restock": "restock"}
    return [
        Op(
            kinds[r.op],
            r.sku,
            (r.connection - 1) % servers,
            r.sent_us / 1e6,
            r.done_us / 1e6,
            r.version,
            r.on_hand,
        )
        for r in records
        if r.status == 200 and r.version is not None
    ]


def judge(
    ops: Sequence[Op], audits: dict[str, list[dict[str, Any]]], stale_s_max: float
) -> tuple[dict[str, int], list[str]]:
    """Violations per kind (every kind present) and a few examples."""
    states = {sku: {e["version"]: e["on_hand"] for e in log} for sku, log in audits.items()}
    commits = {
        sku: [(e["version"], parse_audit_time(e["at"])) for e in log] for sku, log in audits.items()
    }
    verdict = check(ops, states, commits, stale_s_max=stale_s_max, keep_max=10)
    return verdict.counts, [str(v) for v in verdict.examples]


# --- one system -------------------------------------------------------------------------------


async def _seed(session: aiohttp.ClientSession, cluster: Cluster, skus: int) -> None:
    gate = asyncio.Semaphore(SEED_CONCURRENCY)

    async def put(n: int, sku: str) -> None:
        async with gate:
            url = f"{cluster.urls[n % len(cluster.urls)]}/v1/items/{sku}"
            status, body = await call_json(
                session, "PUT", url, cluster.admin_token, {"on_hand": SEED_ON_HAND}
            )
            if status not in (200, 201):
                raise RuntimeError(f"seeding {sku}: {status} {body}")

    names = [sku_name(k) for k in range(1, skus + 1)] + [PROBE_SKU]
    await asyncio.gather(*(put(n, sku) for n, sku in enumerate(names)))


async def _audits(
    session: aiohttp.ClientSession, cluster: Cluster, skus: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    gate = asyncio.Semaphore(AUDIT_CONCURRENCY)

    async def one(n: int, sku: str) -> tuple[str, list[dict[str, Any]]]:
        async with gate:
            url = cluster.urls[n % len(cluster.urls)]
            return sku, await read_audit(session, url, cluster.admin_token, sku)

    return dict(await asyncio.gather(*(one(n, sku) for n, sku in enumerate(skus))))


async def _sleep_until_us(moment_us: int) -> None:
    await asyncio.sleep(max(0.0, (moment_us - time.time_ns() // 1000) / 1e6))


def _cpu_groups(cluster: Cluster) -> Groups:
    leaders = {process.pid for process in cluster.processes}  # each leads its own group
    me = os.getpid()
    return {
        "servers": lambda pid, comm, pgrp: pgrp in leaders,
        "postgres": lambda pid, comm, pgrp: comm == "postgres",
        "redis": lambda pid, comm, pgrp: comm.startswith("redis-server"),
        "load generator": lambda pid, comm, pgrp: comm == "wrk",
        "bench": lambda pid, comm, pgrp: pid == me,
    }


async def run_system(
    system: System,
    cluster: Cluster,
    options: MixedOptions,
    workers: int,
    progress_stream: TextIO,
) -> SystemRun:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await _seed(session, cluster, options.mix.skus)
        schedule = schedule_from_now(
            options.rate_per_s, options.connections, options.warmup_s, options.window_s
        )
        targets = [target_of(url) for url in cluster.urls]
        loading = asyncio.create_task(
            asyncio.to_thread(
                run_load, targets, cluster.admin_token, cluster.clerk_token, options.mix, schedule
            )
        )
        progress = Progress(round(options.warmup_s + options.window_s), progress_stream)
        ticking = asyncio.create_task(_tick(progress, schedule.start_us))
        try:
            begin_us, until_us = schedule.window_us
            await _sleep_until_us(begin_us)
            scraping = system.versioned  # hello answers /metrics with its fixed item too
            before = await asyncio.gather(*(scrape(session, u) for u in cluster.urls if scraping))
            groups = _cpu_groups(cluster)
            cpu_before, window_started = cpu_snapshot(groups), time.monotonic()
            stop = asyncio.Event()
            probing = (
                asyncio.create_task(probe(session, cluster.urls, cluster.admin_token, stop))
                if system.versioned
                else None
            )
            await _sleep_until_us(until_us)
            cpu_after, window_s = cpu_snapshot(groups), time.monotonic() - window_started
            stop.set()
            probed = await probing if probing is not None else None
            after = await asyncio.gather(*(scrape(session, u) for u in cluster.urls if scraping))
            load = await loading
        finally:
            ticking.cancel()
            progress.finish()
            if not loading.done():
                await asyncio.gather(loading, return_exceptions=True)
        run = SystemRun(
            system,
            options,
            len(cluster.urls),
            workers,
            load,
            probed,
            delta(after, before),
            cpu_used(cpu_before, cpu_after, list(groups)),
            window_s,
        )
        if system.versioned:
            measured = run.measured
            ops = history_ops(measured, len(cluster.urls))
            skus = sorted({op.sku for op in ops})
            audits = await _audits(session, cluster, skus)
            run.violations, run.violation_examples = judge(ops, audits, options.stale_s_max)
            run.reads_checked = sum(1 for op in ops if op.kind == "read")
    return run


async def _tick(progress: Progress, start_us: int) -> None:
    while True:
        progress.done = max(0, round((time.time_ns() // 1000 - start_us) / 1e6))
        progress.show()
        await asyncio.sleep(0.5)


@contextmanager
def system_cluster(
    system: System, servers: int, workers: int, database_url: str
) -> Iterator[Cluster]:
    """A fresh cluster of `system`: its own schema and, where it caches, its own Redis."""
    with local_cluster(
        servers, workers, database_url, system.cache_url, command=system.command
    ) as cluster:
        yield cluster


def run_mixed(
    systems: Sequence[str],
    servers: int,
    workers: int,
    database_url: str,
    options: MixedOptions,
    log: Callable[[str], None],
    progress_stream: TextIO,
) -> list[SystemRun]:
    runs = []
    for name in systems:
        system = SYSTEMS[name]
        log(f"{name}: {system.description}; {servers} servers x {workers} workers")
        with system_cluster(system, servers, workers, database_url) as cluster:
            run = asyncio.run(run_system(system, cluster, options, workers, progress_stream))
        log(
            f"{name}: {run.achieved_rate():,.0f} req/s answered of {options.rate_per_s:,.0f}"
            f" offered; verdict {'CORRECT' if not run.problems() else 'WRONG'}"
        )
        runs.append(run)
    return runs


TARGET = System("target", "the running servers given by --url", (), "")


def run_on_urls(cluster: Cluster, options: MixedOptions, progress_stream: TextIO) -> SystemRun:
    return asyncio.run(run_system(TARGET, cluster, options, 0, progress_stream))


def result_json(
    runs: Sequence[SystemRun], servers: int, workers: int, options: MixedOptions
) -> dict[str, Any]:
    from stockkeeper.bench.report import machine

    return {
        "scenario": "mixed",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "servers": servers,
        "workers": workers,
        "options": {
            "rate_per_s": options.rate_per_s,
            "window_s": options.window_s,
            "warmup_s": options.warmup_s,
            "connections": options.connections,
            "read_share": options.mix.read_share,
            "restock_share": options.mix.restock_share,
            "skus": options.mix.skus,
            "zipf": options.mix.zipf,
            "stale_s_max": options.stale_s_max,
        },
        "systems": [run.to_json() for run in runs],
    }


def exit_code(runs: Sequence[SystemRun]) -> int:
    """1 when stockkeeper itself answered wrong; a baseline's wrong answers are the point."""
    return int(any(run.problems() for run in runs if run.system.product))
