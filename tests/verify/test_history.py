"""The history checker itself: it must flag each kind of violation, and only those, count all
of them while keeping a bounded number of examples, and cope with benchmark-sized histories."""

from __future__ import annotations

import random
from bisect import bisect_right

from stockkeeper.verify.history import (
    KINDS,
    STALE_S_MAX,
    Op,
    Verdict,
    Violation,
    check,
    summary,
)

AUDIT = {"A": {1: 5, 2: 4, 3: 3}}
NONE = dict.fromkeys(KINDS, 0)


def read(started: float, ended: float, version: int, on_hand: int | None = None) -> Op:
    on_hand = AUDIT["A"][version] if on_hand is None else on_hand
    return Op("read", "A", 0, started, ended, version, on_hand)


def write(started: float, ended: float, version: int) -> Op:
    return Op("purchase", "A", 1, started, ended, version, AUDIT["A"][version])


def only(verdict: Verdict) -> Violation:
    """The one violation found, checking that the counts agree."""
    (violation,) = verdict.examples
    assert verdict.counts == summary([violation]) == {**NONE, violation.kind: 1}
    return violation


def test_a_clean_history_passes() -> None:
    ops = [read(0, 1, 1), write(1, 2, 2), read(2.01, 3, 2), read(2.05, 2.7, 1), write(3, 4, 3)]
    verdict = check(ops, AUDIT)  # v1 at 2.05: within the staleness limit, no newer read ended
    assert verdict.ok and verdict.counts == NONE and verdict.examples == []


def test_an_answer_outside_the_history_is_flagged() -> None:
    bad = read(0, 1, 2, on_hand=7)
    violation = only(check([bad], AUDIT))
    assert violation.kind == "not_in_history" and violation.op == bad
    assert violation.cause is None and str(violation).startswith("not_in_history: ")


def test_going_back_after_a_finished_read_is_flagged() -> None:
    first, second = read(0, 1, 2), read(1.5, 2, 1)
    violation = only(check([first, second], AUDIT))
    assert (violation.kind, violation.op, violation.cause) == ("went_back", second, first)


def test_overlapping_reads_may_disagree() -> None:
    assert check([read(0, 2, 2), read(1, 3, 1)], AUDIT).ok


def test_a_read_staler_than_the_limit_after_an_acknowledged_write_is_flagged() -> None:
    late = 2 + STALE_S_MAX + 0.01
    assert check([write(1, 2, 2), read(2 + STALE_S_MAX / 2, 9, 1)], AUDIT).ok
    acknowledged, stale = write(1, 2, 2), read(late, late + 1, 1)
    violation = only(check([acknowledged, stale], AUDIT))
    assert (violation.kind, violation.op, violation.cause) == ("stale", stale, acknowledged)


def test_the_staleness_limit_is_a_parameter() -> None:
    ops = [write(1, 2, 2), read(2.05, 3, 1)]
    assert check(ops, AUDIT).ok
    assert only(check(ops, AUDIT, stale_s_max=0.01)).kind == "stale"


def test_failed_operations_are_ignored() -> None:
    assert check([Op("read", "A", 0, 0, 1, None, None), read(2, 3, 1)], AUDIT).ok


# --- against the audit log's commit times -------------------------------------------------------

COMMITS = {"A": [(1, 0.0), (2, 10.0)]}  # v2 written by nobody in the recorded history


def test_a_read_older_than_a_commit_past_the_limit_is_flagged() -> None:
    stale = read(10.15, 10.2, 1)
    violation = only(check([stale], AUDIT, COMMITS))
    assert (violation.kind, violation.op, violation.cause) == ("stale_vs_audit", stale, None)
    assert "v2 committed 150.0 ms before" in violation.detail


def test_a_read_older_than_a_commit_within_the_limit_passes() -> None:
    assert check([read(10.05, 10.2, 1)], AUDIT, COMMITS).ok


def test_a_read_of_the_newest_version_passes() -> None:
    assert check([read(10.15, 10.2, 2), read(30, 31, 2)], AUDIT, COMMITS).ok


def test_without_commit_times_the_audit_check_is_skipped() -> None:
    assert check([read(10.15, 10.2, 1)], AUDIT).ok


# --- counting ------------------------------------------------------------------------------------


def test_every_violation_is_counted_but_only_keep_max_of_each_kind_are_kept() -> None:
    ops = [read(n - 9, n - 8.5, 1, on_hand=9) for n in range(5)]  # 5 answers not in the history
    ops += [write(0, 0.5, 2)] + [read(1 + n, 1.5 + n, 1) for n in range(4)]  # 4 stale reads
    verdict = check(ops, AUDIT, keep_max=2)
    assert verdict.counts == {**NONE, "not_in_history": 5, "stale": 4}
    assert [v.kind for v in verdict.examples] == ["not_in_history"] * 2 + ["stale"] * 2
    assert summary(verdict.examples) == {**NONE, "not_in_history": 2, "stale": 2}
    assert not verdict.ok and "not_in_history 5" in str(verdict)
    assert check(ops, AUDIT, keep_max=0).examples == []
    assert summary(check(ops, AUDIT).examples) == verdict.counts


# --- a benchmark-sized history -------------------------------------------------------------------


def consistent_history(
    rng: random.Random, n_ops: int, skus: int
) -> tuple[list[Op], dict[str, dict[int, int]], dict[str, list[tuple[int, float]]]]:
    """A shuffled history that keeps every guarantee: each write commits within its own span,
    each read returns the newest version committed at some instant within its span, and a tenth
    of the writes (and some operations) are missing from the recording or failed."""
    audit: dict[str, dict[int, int]] = {}
    commits: dict[str, list[tuple[int, float]]] = {}
    ops: list[Op] = []
    duration_s = 60.0
    writes_per_sku = n_ops // skus // 5
    for s in range(skus):
        sku = f"S-{s}"
        times = [0.0, *sorted(rng.uniform(0, duration_s) for _ in range(writes_per_sku))]
        on_hand = [1000]
        for _ in times[1:]:
            on_hand.append(on_hand[-1] + rng.choice((-1, 1)))
        audit[sku] = {version: n for version, n in enumerate(on_hand, 1)}
        commits[sku] = [(version, at) for version, at in enumerate(times, 1)]
        for version, at in enumerate(times[1:], 2):
            if rng.random() < 0.1:
                continue  # a writer outside the recorded history
            kind = "purchase" if on_hand[version - 1] < on_hand[version - 2] else "restock"
            started, ended = at - rng.uniform(0, 0.05), at + rng.expovariate(1 / 0.02)
            server = rng.randrange(4)
            ops.append(Op(kind, sku, server, started, ended, version, on_hand[version - 1]))
    commit_times = {sku: [at for _, at in sku_commits] for sku, sku_commits in commits.items()}
    while len(ops) < n_ops:
        sku = f"S-{rng.randrange(skus)}"
        started = rng.uniform(0, duration_s)
        ended = started + rng.expovariate(1 / 0.01)
        if rng.random() < 0.02:
            ops.append(Op("read", sku, rng.randrange(4), started, ended, None, None))
            continue
        instant = rng.uniform(started, ended)
        version = bisect_right(commit_times[sku], instant)
        ops.append(Op("read", sku, rng.randrange(4), started, ended, version, audit[sku][version]))
    rng.shuffle(ops)
    return ops, audit, commits


def test_a_large_consistent_history_has_no_violations() -> None:
    ops, audit, commits = consistent_history(random.Random(7), 200_000, skus=50)
    assert len(ops) == 200_000
    verdict = check(ops, audit, commits)
    assert verdict.counts == NONE, verdict
