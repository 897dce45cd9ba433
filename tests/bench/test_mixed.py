"""The mixed bench's judgement, without servers: answers against the audit log, which answers
are wrong (and which are only an overloaded server's honest refusals), the exit status, the
targets and the report."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from stockkeeper.bench.latency import Latencies
from stockkeeper.bench.loadgen import LoadResult, Mix, Record, Schedule
from stockkeeper.bench.mixed import (
    SYSTEMS,
    MixedOptions,
    SystemRun,
    exit_code,
    history_ops,
    judge,
    parse_audit_time,
    result_json,
)
from stockkeeper.bench.report import ratios, render, targets, write_report

T0_US = 1_800_000_000_000_000  # realtime µs
SKU = "MX-00001"


def audit_entry(version: int, on_hand: int, at_us: int) -> dict[str, Any]:
    seconds, micros = divmod(at_us, 1_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return {"version": version, "on_hand": on_hand, "at": f"{stamp}.{micros:06d}Z"}


def record(
    op: str, sent_us: int, version: int | None, on_hand: int | None, status: int = 200, **kw: Any
) -> Record:
    return Record(
        kw.get("connection", 1),
        op,
        1,
        sent_us,
        sent_us,
        sent_us + 500,
        status,
        version,
        on_hand,
        kw.get("cache", "hit"),
    )


def test_audit_times_are_realtime_seconds() -> None:
    assert parse_audit_time("1970-01-01T00:00:01.500000Z") == 1.5


def test_a_read_older_than_a_commit_100_ms_before_it_is_judged_stale() -> None:
    audits = {SKU: [audit_entry(1, 10, T0_US), audit_entry(2, 9, T0_US + 10_000)]}
    fresh = [record("get", T0_US + 20_000, 1, 10), record("get", T0_US + 200_000, 2, 9)]
    counts, _ = judge(history_ops(fresh, 2), audits, 0.1)
    assert sum(counts.values()) == 0
    stale = [record("get", T0_US + 200_000, 1, 10)]
    counts, examples = judge(history_ops(stale, 2), audits, 0.1)
    assert counts["stale_vs_audit"] == 1 and examples


def test_a_read_going_back_and_an_invented_state_are_judged() -> None:
    audits = {SKU: [audit_entry(1, 10, T0_US), audit_entry(2, 9, T0_US + 10_000)]}
    ops = history_ops(
        [
            record("get", T0_US + 20_000, 2, 9),
            record("get", T0_US + 30_000, 1, 10, connection=2),
            record("get", T0_US + 40_000, 2, 7),
        ],
        2,
    )
    counts, _ = judge(ops, audits, 0.1)
    assert counts["went_back"] == 1
    assert counts["not_in_history"] == 1


def run_of(
    system: str, records: list[Record], violations: dict[str, int] | None = None
) -> SystemRun:
    schedule = Schedule(100, 1, T0_US, 0.0, 1.0)
    load = LoadResult(schedule, records, ["wrk"], 0.1, T0_US + 3_000_000)
    run = SystemRun(SYSTEMS[system], MixedOptions(mix=Mix()), 2, 1, load, None, {}, {}, 1.0)
    run.violations = violations or {}
    run.reads_checked = len(records)
    return run


def test_busy_and_unanswered_are_not_wrong_but_other_failures_and_violations_are() -> None:
    busy = run_of(
        "coherent", [record("get", T0_US + 1, 1, 1), record("get", T0_US + 2, None, None, 503)]
    )
    assert busy.problems() == []
    assert busy.busy() == 1
    broken = run_of("coherent", [record("get", T0_US + 1, None, None, 500)])
    assert broken.problems() == ["1 answers neither 200 nor 503"]
    stale = run_of("coherent", [record("get", T0_US + 1, 1, 1)], {"stale_vs_audit": 3})
    assert stale.problems() == ["3 stale_vs_audit reads"]


def test_only_stockkeeper_answering_wrong_fails_the_command() -> None:
    wrong = {"went_back": 1}
    assert exit_code([run_of("naive", [], wrong), run_of("coherent", [])]) == 0
    assert exit_code([run_of("naive", [], wrong), run_of("coherent", [], wrong)]) == 1
    assert exit_code([run_of("nocache", [], wrong)]) == 1


def test_unanswered_requests_count_in_the_latency_of_all_requests() -> None:
    run = run_of("coherent", [record("get", T0_US + 5_000, 1, 1)])
    latency = run.to_json()["latency"]
    every = latency["all"]
    assert every["count"] == 100  # 1 answered + 99 slots of the window never answered
    assert (every["p50_ms"] or 0.0) > 1_000  # they waited until wrk stopped
    # Which operation an unsent request would have been was never drawn: only "all" has them.
    assert latency["get"]["count"] == 1
    assert latency["write"]["count"] == latency["purchase"]["count"] == 0


def test_percentiles_are_within_a_tenth_of_a_percent() -> None:
    latencies = Latencies().record_all(range(1, 100_001))  # 1 µs .. 100 ms, uniform
    for percentile in (50.0, 90.0, 99.0, 99.9):
        exact_ms = percentile  # the value at p% of 1..100,000 µs is p ms
        assert abs((latencies.percentile_ms(percentile) or 0.0) - exact_ms) <= exact_ms * 0.001
    assert latencies.max_ms() == pytest.approx(100.0, rel=1e-3)
    assert Latencies().percentile_ms(99) is None


def synthetic(system: str, rate: float, p99_ms: float, hit: float | None) -> dict[str, Any]:
    return {
        "system": system,
        "offered_rate_per_s": 10_000,
        "achieved_rate_per_s": rate,
        "hit_rate": hit,
        "latency": {"get": {"p99_ms": p99_ms, "curve_ms": [(50.0, 0.5), (99.0, p99_ms)]}},
        "visibility_probe": {"lag_ms": {"p99_ms": 4.0, "max_ms": 30.0}, "lags_ms": [1.0, 4.0]},
        "history": {"reads_checked": 10, "violations": {"stale": 0}, "examples": []},
        "throughput_per_s": {"bucket_s": 0.25, "values": [rate, rate]},
        "verdict": "CORRECT",
        "problems": [],
    }


def test_targets_are_judged_on_the_coherent_system_with_their_gaps() -> None:
    systems = [synthetic("hello", 20_000, 1.0, None), synthetic("coherent", 9_000, 3.0, 0.995)]
    found = {t.name.split(" (")[0]: t for t in targets(systems, read_share=0.95)}
    assert not found["answered rate"].met
    assert not found["GET p99"].met and "gap +1" in found["GET p99"].line()
    assert found["hit rate"].met
    assert found["lag p99"].met and found["lag max"].met
    assert not found["share of hello's rate"].met  # 0.45
    edges = {t.name: t for t in targets([synthetic("coherent", 9_950, 1, 1)], read_share=0.95)}
    assert edges["answered rate"].met  # the window's edges cut a few answers of a sustained rate
    write_heavy = {t.name: t for t in targets([synthetic("coherent", 1, 1, 0.96)], read_share=0.7)}
    assert write_heavy["hit rate"].met


def test_ratios_survive_a_coherent_run_that_answered_no_get_in_time() -> None:
    """An overloaded default run on 2 busy cores once crashed the report here."""
    systems = [synthetic("naive", 1_700, 50.0, 0.9), synthetic("coherent", 1_300, 900.0, None)]
    (line,) = ratios(systems)
    assert line.startswith("coherent / naive: throughput x0.76")
    assert "hit rate - vs 90.00%" in line


def test_the_report_renders_and_plots(tmp_path: Path) -> None:
    run = run_of("coherent", [record("get", T0_US + 5_000, 1, 1)])
    result = result_json([run], 2, 1, run.options)
    text = render(result)
    assert "coherent" in text and "targets (coherent):" in text
    written = write_report(result, tmp_path)
    assert {p.name for p in written} == {
        "result.json",
        "latency_percentiles.png",
        "visibility_lag.png",
        "throughput.png",
    }
    assert json.loads((tmp_path / "result.json").read_text())["systems"][0]["system"] == "coherent"
    assert all(p.stat().st_size > 1000 for p in written if p.suffix == ".png")
