"""A seeded stress run: `stockkeeper verify`'s clients (purchases, restocks, sets, orders, single
and batch reads, `min_version` reads, keyed retries) on a local StressCluster while the seeded
fault plan fires, judged by stockkeeper.verify.history against the audit log.

On a violation the run keeps its whole history (JSON), and prints the seed, the command that
replays it, and for each broken rule the smallest window of operations that still breaks it,
with the faults that were active then."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from stockkeeper.bench.cluster import STOCKKEEPER
from stockkeeper.store.postgres import PostgresStore
from stockkeeper.store.protocol import HeldDrift
from stockkeeper.verify.history import AuditEntry, Op, Violation, check
from stockkeeper.verify.run import Report, VerifyOptions, verify
from tests.stress.cluster import stress_cluster
from tests.stress.faults import KINDS, Fault, Fired, Injector, plan

SETTLE_S = 4.0  # fault-free time at the end: every part healed, the cluster caught up
MARGINS_S = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, math.inf)


@dataclass(frozen=True)
class StressOptions:
    seed: int = 0
    seconds: float = 60.0
    servers: int = 3
    concurrency: int = 16
    faults_per_s: float = 0.5
    hot_skus: int = 4
    cold_skus: int = 200
    history_dir: Path | None = None  # where a failing run's history goes (default: a temp dir)
    command: tuple[str, ...] = (STOCKKEEPER, "serve")  # or a naive baseline's
    failpoints: str = ""  # armed in every server for the whole run (STOCKKEEPER_FAILPOINTS)

    def replay_command(self) -> str:
        return (
            f"python -m tests.stress --seed {self.seed} --seconds {self.seconds:g} "
            f"--servers {self.servers} --concurrency {self.concurrency} "
            f"--faults-per-s {self.faults_per_s:g} --cold-skus {self.cold_skus}"
        )


@dataclass
class StressResult:
    options: StressOptions
    report: Report
    planned: list[Fault]
    fired: list[Fired]
    skipped: list[Fault]  # planned, but their resource was busy until the fault window ended
    history: Path | None = None  # written when the run failed
    # `held` against the sum of the open holds' lines, recomputed after the run settled
    held_drift: list[HeldDrift] = dataclasses.field(default_factory=list)
    holds_in_database: int = 0  # what the drift check saw: it must see the run's holds

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.held_drift

    def fault_counts(self) -> dict[str, int]:
        fired = {kind: 0 for kind in KINDS}
        for f in self.fired:
            if f.error is None:
                fired[f.fault.kind] += 1
        return fired

    def fault_errors(self) -> list[str]:
        return [f"{f.fault}: {f.error}" for f in self.fired if f.error is not None]


async def run_stress(
    options: StressOptions, folder: Path, say: Callable[[str], None] = print
) -> StressResult:
    window_s = options.seconds - SETTLE_S
    faults = plan(options.seed, window_s, options.servers, options.faults_per_s)
    say(f"stress seed {options.seed}: {len(faults)} faults planned over {options.seconds:g} s")
    with stress_cluster(folder, options.servers, options.command, options.failpoints) as cluster:
        injector = Injector(cluster)
        verify_options = VerifyOptions(
            cluster.urls,
            cluster.admin_token,
            seconds=options.seconds,
            seed=options.seed,
            concurrency=options.concurrency,
            hot_skus=options.hot_skus,
            cold_skus=options.cold_skus,
            # A cut, delayed or restarting PostgreSQL keeps every expirer from recording what
            # falls due meanwhile: expiry is still decided on time by every request, so only
            # its recording is late, and that one rule is not judged here.
            expiry_s_max=None,
        )

        async def faults_beside(started_s: float) -> None:
            await injector.run(faults, started_s, window_s)

        def progress(elapsed_s: float, ops: int) -> None:
            if int(elapsed_s) % 10 == 0 and elapsed_s - int(elapsed_s) < 0.5:
                say(f"  {elapsed_s:5.0f} s  {ops:>9,} operations  {len(injector.fired)} faults")

        report = await verify(verify_options, progress, faults_beside)
        drift, holds_seen = await held_drift(cluster.database_url)
    result = StressResult(
        options,
        report,
        faults,
        injector.fired,
        injector.skipped,
        held_drift=drift,
        holds_in_database=holds_seen,
    )
    if not result.ok:
        result.history = write_history(result)
    return result


async def held_drift(database_url: str) -> tuple[list[HeldDrift], int]:
    """Medusa's drift (#15397): every item's `held` recomputed from the open holds, straight
    from the database once the run has settled; and how many holds that database has, so an
    empty answer from the wrong database cannot pass for no drift."""
    store = await PostgresStore.connect(database_url)
    try:
        drift = await store.held_drift()
    finally:
        await store.close()
    conn = await asyncpg.connect(database_url)
    try:
        return drift, int(await conn.fetchval("SELECT count(*) FROM holds"))
    finally:
        await conn.close()


def write_history(result: StressResult) -> Path:
    folder = result.options.history_dir or Path(tempfile.mkdtemp(prefix="sk-stress-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"history-seed-{result.options.seed}.json"
    data = {
        "options": {**dataclasses.asdict(result.options), "history_dir": str(folder)},
        "replay": result.options.replay_command(),
        "counts": result.report.counts(),
        "planned": [dataclasses.asdict(f) for f in result.planned],
        "fired": [dataclasses.asdict(f) for f in result.fired],
        "ops": [dataclasses.asdict(op) for op in result.report.ops],
        "entries": [dataclasses.asdict(entry) for entry in result.report.entries],
        "replay_mismatches": result.report.replay_mismatches,
    }
    path.write_text(json.dumps(data))
    return path


def smallest_window(violation: Violation, ops: list[Op], entries: list[AuditEntry]) -> list[Op]:
    """The fewest operations around `violation` (on its SKU) that the checker, given just them
    and the SKU's audit log, still finds breaking the same rule: the offending operation and the
    one it contradicts, widened step by step until the rule fires again."""
    anchor = violation.op or violation.cause
    sku = anchor.sku if anchor is not None else violation.entry.sku if violation.entry else ""
    sku_ops = sorted((op for op in ops if op.sku == sku), key=lambda op: op.started_s)
    sku_entries = [entry for entry in entries if entry.sku == sku]
    anchors = [op for op in (violation.op, violation.cause) if op is not None]
    if not anchors:  # a rule on the audit log alone: the operations near its entry's version
        version = violation.entry.version if violation.entry else 0
        anchors = [
            op for op in sku_ops if op.version is not None and abs(op.version - version) <= 1
        ]
    if not anchors:
        return sku_ops
    lo_s, hi_s = min(op.started_s for op in anchors), max(op.ended_s for op in anchors)
    for margin_s in MARGINS_S:
        window = [
            op
            for op in sku_ops
            if op.ended_s >= lo_s - margin_s and op.started_s <= hi_s + margin_s
        ]
        if check(window, sku_entries).counts.get(violation.kind):
            return window
    return sku_ops


def describe_failure(result: StressResult) -> str:
    """The seed, how to replay, and each broken rule's smallest window with its faults."""
    report = result.report
    lines = [
        f"stress seed {result.options.seed} FAILED: "
        + ", ".join(f"{kind} {n}" for kind, n in report.counts().items() if n),
        f"replay: {result.options.replay_command()}",
        f"history: {result.history}",
    ]
    lines += [f"  replay mismatch: {m}" for m in report.replay_mismatches[:5]]
    lines += [f"  held drift: {drift}" for drift in result.held_drift[:5]]
    shown: set[str] = set()
    for violation in report.verdict.examples:
        if violation.kind in shown:
            continue
        shown.add(violation.kind)
        window = smallest_window(violation, report.ops, report.entries)
        lines.append(f"{violation} — smallest window, {len(window)} operations:")
        lines += [f"    {_op_line(op)}" for op in window]
        if window:
            lo_s, hi_s = window[0].started_s, max(op.ended_s for op in window)
            active = [f for f in result.fired if f.started_s <= hi_s and f.ended_s >= lo_s]
            lines += [f"    during fault: {f.fault}" for f in active]
    return "\n".join(lines)


def _op_line(op: Op) -> str:
    answer = f"v{op.version} on_hand {op.on_hand}" if op.version is not None else "no state"
    delta = f" delta {op.delta:+d}" if op.delta is not None else ""
    key = f" key {op.idempotency_key}" if op.idempotency_key else ""
    return (
        f"[{op.started_s:.4f}, {op.ended_s:.4f}] server {op.server} {op.kind}{delta}{key}: "
        f"{op.outcome}, {answer}"
    )


def summary(result: StressResult, elapsed_s: float) -> str:
    report = result.report
    counts = result.fault_counts()
    lines = [
        f"stress seed {result.options.seed}: {len(report.ops):,} operations on "
        f"{len(report.skus)} SKUs in {report.seconds:.0f} s "
        f"({len(report.ops) / max(report.seconds, 1e-9):,.0f}/s; {elapsed_s:.0f} s in all), "
        f"{report.verdict.indeterminate:,} indeterminate",
        "faults fired: "
        + ", ".join(f"{kind} {n}" for kind, n in counts.items())
        + f" ({sum(counts.values())} of {len(result.planned)} planned, "
        f"{len(result.skipped)} skipped: their resource was busy until the window ended)",
        "rules: " + ", ".join(f"{kind} {n}" for kind, n in report.counts().items()),
        f"held drift (held against the open holds, after settling): {len(result.held_drift)} items",
        "verdict: " + ("CORRECT" if result.ok else "WRONG"),
    ]
    lines += [f"fault not applied: {error}" for error in result.fault_errors()]
    return "\n".join(lines)


def main_run(options: StressOptions) -> int:
    started_s = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sk-stress-run-") as folder:
        result = asyncio.run(run_stress(options, Path(folder)))
    print(summary(result, time.monotonic() - started_s))
    if not result.ok:
        print(describe_failure(result))
        return 1
    return 0
