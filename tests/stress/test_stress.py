"""The seeded stress run, in CI: bounded (about two minutes), every fault kind fired, every rule
held. It must also catch a broken server, and its plan must be the seed's alone.

A longer run: `python -m tests.stress --seed S --seconds 1200` (README, "What the tests show")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stockkeeper.bench.cluster import baseline_command
from stockkeeper.verify.history import AuditEntry, Op, check
from tests.distributed.postgres_server import pg_bin
from tests.stress.faults import KINDS, plan
from tests.stress.run import StressOptions, describe_failure, run_stress, smallest_window

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(pg_bin() is None, reason="needs PostgreSQL's server binaries (initdb)"),
]

SEED = int(os.environ.get("STOCKKEEPER_STRESS_SEED", "17"))
CI_SECONDS = float(os.environ.get("STOCKKEEPER_STRESS_SECONDS", "75"))


def test_the_fault_plan_is_the_seeds_alone_and_starts_with_every_kind() -> None:
    first = plan(SEED, 60, 3, 0.5)
    assert first == plan(SEED, 60, 3, 0.5)
    assert first != plan(SEED + 1, 60, 3, 0.5)
    assert {fault.kind for fault in first[: len(KINDS)]} == set(KINDS)
    assert all(fault.at_s + fault.duration_s <= 60 for fault in first)
    assert all(0 <= fault.server < 3 for fault in first)


async def test_a_seeded_stress_run_under_every_fault_kind_breaks_no_rule(tmp_path: Path) -> None:
    options = StressOptions(
        seed=SEED, seconds=CI_SECONDS, faults_per_s=0.6, history_dir=tmp_path / "history"
    )
    result = await run_stress(options, tmp_path)
    print(describe_failure(result) if not result.ok else result.report.counts())
    assert result.fault_errors() == []
    assert all(result.fault_counts().values()), result.fault_counts()
    assert result.ok
    assert result.held_drift == []
    assert result.report.holds, "the run held stock"
    assert result.holds_in_database >= len(result.report.holds), "the drift check saw them"
    assert len(result.report.ops) > 2_000
    answered = [op for op in result.report.ops if op.version is not None]
    assert len(answered) > len(result.report.ops) / 2, "most operations got an answer"


async def test_the_stress_run_catches_the_naive_cache_and_shows_a_small_window(
    tmp_path: Path,
) -> None:
    """Cache-aside with a TTL (the design the coherent cache replaces), with slow fills, under
    the same faults: the run fails, keeps its history and names each broken rule's window."""
    options = StressOptions(
        seed=SEED,
        seconds=15,
        faults_per_s=1.0,
        cold_skus=20,
        history_dir=tmp_path / "history",
        command=tuple(baseline_command("naive")),
        failpoints="service.read.after_fetch=sleep(20)",  # its stale-set race, every run
    )
    result = await run_stress(options, tmp_path)
    assert not result.ok
    assert result.history is not None and result.history.is_file()
    failure = describe_failure(result)
    print(failure)
    assert f"--seed {SEED}" in failure and "smallest window" in failure
    broken = {kind for kind, n in result.report.counts().items() if n}
    assert broken & {"went_back", "stale", "stale_vs_audit"}, broken


def test_the_smallest_window_keeps_the_two_reads_that_break_a_rule() -> None:
    """A read going back among a thousand others: the window is those two and what overlaps."""
    ops = [Op("read", "A", 0, n * 0.01, n * 0.01 + 0.005, 1, 10) for n in range(1000)]
    ops[500] = Op("read", "A", 1, 5.0, 5.005, 2, 9)  # the newer state, then the older again
    ops += [Op("set", "A", 0, 4.99, 4.995, 2, 9)]
    entries = [AuditEntry("A", 1, 10, 10), AuditEntry("A", 2, -1, 9)]
    verdict = check(ops, entries)
    (went_back, *_) = (v for v in verdict.examples if v.kind == "went_back")
    window = smallest_window(went_back, ops, entries)
    assert went_back.op in window and went_back.cause in window
    assert len(window) <= 4, window
