"""The history checker itself: it must flag each kind of violation, and only those, count all
of them while keeping a bounded number of examples, and cope with benchmark-sized histories."""

from __future__ import annotations

import random
import time
from bisect import bisect_right

import pytest

from stockkeeper.verify.history import (
    KINDS,
    NEEDS_ENTRIES,
    STALE_S_MAX,
    AuditEntry,
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


# --- full audit entries: each rule on its own ---------------------------------------------------


def entry(version: int, delta: int, on_hand: int, key: str | None = None) -> AuditEntry:
    return AuditEntry("B", version, delta, on_hand, key, at_s=version - 0.5)


# v1 set 5 committed at 0.5, v2 purchase of 1 at 1.5, v3 restock of 2 at 2.5
LOG = [entry(1, 5, 5), entry(2, -1, 4, "k2"), entry(3, 2, 6, "k3")]


def op(
    kind: str,
    started: float,
    ended: float,
    version: int | None,
    on_hand: int | None,
    outcome: str = "ok",
    delta: int | None = None,
    idempotency_key: str | None = None,
) -> Op:
    return Op(kind, "B", 0, started, ended, version, on_hand, outcome, delta, idempotency_key)


SET = op("set", 0, 1, 1, 5, delta=5)
PURCHASE = op("purchase", 1, 2, 2, 4, delta=-1, idempotency_key="k2")
RESTOCK = op("restock", 2, 3, 3, 6, delta=2, idempotency_key="k3")
CLEAN = [
    SET,
    op("read", 1.1, 1.2, 1, 5),
    PURCHASE,
    op("read", 2.1, 2.2, 2, 4),
    RESTOCK,
    op("purchase", 5, 6, 2, 4, delta=-1, idempotency_key="k2"),  # a replay: the old answer
    op("read", 3.1, 3.2, 3, 6),
]


def broken(verdict: Verdict) -> str:
    """The one kind of violation found (any number of times), checking the examples agree."""
    (kind,) = [kind for kind, n in verdict.counts.items() if n]
    assert summary(verdict.examples) == verdict.counts and not verdict.ok
    return kind


def test_a_clean_history_against_full_entries_breaks_no_rule() -> None:
    for strict in False, True:
        verdict = check(CLEAN, LOG, strict_reads=strict, complete_writers=strict)
        assert verdict.counts == NONE and verdict.examples == [], verdict
    verdict = check(reversed(CLEAN), list(reversed(LOG)), strict_reads=True, complete_writers=True)
    assert verdict.ok and verdict.skipped == () and verdict.indeterminate == 0


def test_the_old_audit_form_skips_the_rules_it_cannot_support() -> None:
    verdict = check([read(0, 1, 1)], AUDIT)
    assert verdict.ok and set(NEEDS_ENTRIES) <= set(verdict.skipped)
    assert {"stale_vs_audit", "unexplained"} <= set(verdict.skipped)
    assert "not judged: " in str(verdict)


def test_a_negative_entry_or_answer_is_flagged() -> None:
    log = [entry(1, 1, 1), entry(2, -2, -1)]
    verdict = check([], log)
    assert broken(verdict) == "negative" and verdict.counts["negative"] == 1
    assert verdict.examples[0].entry == log[1] and verdict.examples[0].op is None
    answer = op("read", 2, 3, 2, -1)
    verdict = check([answer], log)
    assert broken(verdict) == "negative" and verdict.counts["negative"] == 2
    assert broken(check([], {"B": {1: -1}})) == "negative"


def test_a_missing_or_duplicated_audit_version_is_a_gap() -> None:
    verdict = check([], [entry(1, 5, 5), entry(3, 1, 6)])
    assert broken(verdict) == "audit_gap" and "no v2" in verdict.examples[0].detail
    verdict = check([], [*LOG, entry(3, 2, 6)])
    assert broken(verdict) == "audit_gap" and verdict.counts["audit_gap"] == 1
    assert broken(check([], [entry(0, 5, 5), *LOG])) == "audit_gap"


def test_an_entry_its_delta_does_not_reach_breaks_the_replay() -> None:
    verdict = check([], [entry(1, 5, 5), entry(2, -1, 3)])
    assert broken(verdict) == "audit_replay" and verdict.counts["audit_replay"] == 1
    assert broken(check([], [entry(1, 5, 4)])) == "audit_replay"  # on_hand[0] = 0


def test_an_acknowledged_change_not_in_the_audit_is_missing() -> None:
    other_key = op("purchase", 1, 2, 2, 4, idempotency_key="mine")
    other_delta = op("purchase", 1, 2, 2, 4, delta=-2)
    for ack in other_key, other_delta:
        verdict = check([ack], LOG)
        assert broken(verdict) == "ack_missing" and verdict.examples[0].op == ack
    # two writes acknowledged with one version, not replays of one key: one of them is lost
    first, second = op("purchase", 1, 2, 2, 4), op("purchase", 1.5, 2.5, 2, 4)
    verdict = check([second, first], LOG)
    assert broken(verdict) == "ack_missing"
    assert (verdict.examples[0].op, verdict.examples[0].cause) == (second, first)
    # an invented version is both outside the history and missing from the audit
    invented = check([op("restock", 0, 1, 4, 7)], LOG)
    assert invented.counts == {**NONE, "not_in_history": 1, "ack_missing": 1}


def test_an_idempotency_key_applied_twice_is_flagged() -> None:
    verdict = check([PURCHASE], [*LOG, entry(4, -1, 5, "k2")])
    assert broken(verdict) == "ack_duplicated" and verdict.counts["ack_duplicated"] == 1
    assert verdict.examples[0].cause == PURCHASE and verdict.examples[0].entry is not None
    # one key per SKU: an order's key on two SKUs is fine
    other = AuditEntry("C", 1, 3, 3, "k2")
    assert check([], [*LOG, other]).ok


def test_a_purchase_the_stock_did_not_pay_for_is_oversold() -> None:
    log = [entry(1, 5, 5), entry(2, 1, 6)]  # the entry of v2 took nothing
    sale = op("purchase", 1, 2, 2, 6)
    verdict = check([sale], log)
    assert broken(verdict) == "oversold" and verdict.examples[0].op == sale
    assert broken(check([sale], {"B": {1: 5, 2: 6}})) == "oversold"
    # one that took more than there was also breaks the audit's own rules
    short = check([op("purchase", 1, 2, 2, -1)], [entry(1, 1, 1), entry(2, -2, -1)])
    assert short.counts == {**NONE, "negative": 2, "oversold": 1}


def test_a_write_ordered_before_an_answer_it_follows_is_not_linearizable() -> None:
    older = op("purchase", 2, 3, 2, 4)
    for before in op("restock", 0, 1, 3, 6), op("read", 0, 1, 3, 6):
        verdict = check([before, older], LOG)
        assert broken(verdict) == "not_linearizable"
        assert (verdict.examples[0].op, verdict.examples[0].cause) == (older, before)
    assert check([op("restock", 0, 2.5, 3, 6), older], LOG).ok  # overlapping: either order


def test_strict_reads_take_no_staleness_allowance() -> None:
    ops = [write(1, 2, 2), read(2 + STALE_S_MAX / 2, 2.1, 1)]
    assert check(ops, AUDIT).ok
    verdict = check(ops, AUDIT, strict_reads=True)
    assert broken(verdict) == "not_linearizable" and verdict.examples[0].cause == ops[0]


def test_strict_reads_may_not_end_before_their_version_committed() -> None:
    early = op("read", 2.0, 2.2, 3, 6)  # v3 commits at 2.5 and its write was not recorded
    assert check([early], LOG).ok
    verdict = check([early], LOG, strict_reads=True)
    assert broken(verdict) == "not_linearizable" and "committed 300.0 ms after" in str(verdict)


def test_with_every_writer_recorded_an_unclaimed_entry_is_unexplained() -> None:
    ops = [SET, PURCHASE]  # nobody recorded wrote v3
    assert check(ops, LOG).ok and "unexplained" in check(ops, LOG).skipped
    verdict = check(ops, LOG, complete_writers=True)
    assert broken(verdict) == "unexplained" and verdict.examples[0].entry == LOG[2]


def test_an_indeterminate_write_is_counted_and_may_explain_an_entry() -> None:
    timed_out = op("restock", 2, 3, None, None, outcome="indeterminate", idempotency_key="k3")
    bogus = op("restock", 2, 3, 9, 1, outcome="indeterminate")  # its answer is not trusted
    verdict = check(
        [SET, PURCHASE, timed_out, bogus], LOG, strict_reads=True, complete_writers=True
    )
    assert verdict.ok and verdict.counts == NONE and verdict.indeterminate == 2
    assert "indeterminate 2" in str(verdict)
    # one write explains one entry, and only one committed after it started
    late = op("restock", 2.6, 3, None, None, outcome="indeterminate")
    assert broken(check([SET, PURCHASE, late], LOG, complete_writers=True)) == "unexplained"
    extra = [*LOG, entry(4, 1, 7)]
    assert broken(check([SET, PURCHASE, timed_out], extra, complete_writers=True)) == "unexplained"


def test_refused_operations_are_ignored() -> None:
    refused = op("purchase", 1, 2, 7, 0, outcome="refused")
    assert check([*CLEAN, refused], LOG, strict_reads=True, complete_writers=True).ok
    with pytest.raises(ValueError, match="unknown outcome"):
        check([op("read", 0, 1, 1, 5, outcome="maybe")], LOG)


# --- a benchmark-sized history against full entries ---------------------------------------------


def full_history(rng: random.Random, n_ops: int, skus: int) -> tuple[list[Op], list[AuditEntry]]:
    """A shuffled strictly linearizable history with every writer recorded: each write commits
    within its span (a tenth of them time out, indeterminate; purchases the stock cannot cover
    are refused; some acks are replayed later by their key); each read returns the version
    committed at an instant within its span, or times out."""
    ops: list[Op] = []
    entries: list[AuditEntry] = []
    commit_times: dict[str, list[float]] = {}
    states: dict[str, list[int]] = {}
    duration_s = 60.0
    for s in range(skus):
        sku = f"S-{s}"
        stock = rng.randint(0, 20)
        entries.append(AuditEntry(sku, 1, stock, stock, None, 0.0))
        ops.append(Op("set", sku, 0, -0.01, 0.01, 1, stock, delta=stock))
        times, on_hand = [0.0], [stock]
        for at in sorted(rng.uniform(0.1, duration_s) for _ in range(n_ops // skus // 5)):
            started, ended = at - rng.uniform(0, 0.05), at + rng.expovariate(1 / 0.02)
            server, key = rng.randrange(4), f"{sku}-{len(times)}-{rng.random()}"
            kind, delta = ("purchase", -rng.randint(1, 3)) if rng.random() < 0.6 else ("restock", 5)
            if stock + delta < 0:
                ops.append(Op(kind, sku, server, started, ended, None, None, "refused", delta, key))
                continue
            stock += delta
            times.append(at)
            on_hand.append(stock)
            version = len(times)
            entries.append(AuditEntry(sku, version, delta, stock, key, at))
            if rng.random() < 0.1:
                ops.append(Op(kind, sku, server, started, ended, None, None, "indeterminate"))
                continue
            ack = Op(kind, sku, server, started, ended, version, stock, "ok", delta, key)
            ops.append(ack)
            if rng.random() < 0.02:
                again = ended + rng.uniform(0, 5)
                ops.append(
                    Op(kind, sku, server, again, again + 0.01, version, stock, "ok", delta, key)
                )
        commit_times[sku], states[sku] = times, on_hand
    while len(ops) < n_ops:
        sku = f"S-{rng.randrange(skus)}"
        started = rng.uniform(0, duration_s)
        ended = started + rng.expovariate(1 / 0.01)
        if rng.random() < 0.02:
            ops.append(
                Op("read", sku, rng.randrange(4), started, ended, None, None, "indeterminate")
            )
            continue
        version = bisect_right(commit_times[sku], rng.uniform(started, ended))
        ops.append(
            Op("read", sku, rng.randrange(4), started, ended, version, states[sku][version - 1])
        )
    rng.shuffle(ops)
    rng.shuffle(entries)
    return ops, entries


def test_a_large_clean_history_breaks_no_rule_within_the_time_limit() -> None:
    ops, entries = full_history(random.Random(17), 100_000, skus=300)
    assert len(ops) == 100_000
    began = time.perf_counter()
    verdict = check(ops, entries, strict_reads=True, complete_writers=True)
    elapsed = time.perf_counter() - began
    assert verdict.counts == NONE, verdict
    assert verdict.skipped == () and verdict.indeterminate > 1000
    assert elapsed < 10, f"{elapsed:.1f} s"


def test_a_long_run_of_missing_versions_is_counted_at_once() -> None:
    verdict = check([], [*LOG, entry(10**9, 1, 7)], keep_max=5)
    assert verdict.counts == {**NONE, "audit_gap": 10**9 - 4}
    (example,) = verdict.examples
    assert "no v4-v999999999" in example.detail
