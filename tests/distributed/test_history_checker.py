"""The history checker itself: it must flag each kind of violation, and only those."""

from __future__ import annotations

from tests.distributed.history import STALE_S_MAX, Op, check

AUDIT = {"A": {1: 5, 2: 4, 3: 3}}


def read(started: float, ended: float, version: int, on_hand: int | None = None) -> Op:
    on_hand = AUDIT["A"][version] if on_hand is None else on_hand
    return Op("read", "A", 0, started, ended, version, on_hand)


def write(started: float, ended: float, version: int) -> Op:
    return Op("purchase", "A", 1, started, ended, version, AUDIT["A"][version])


def test_a_clean_history_passes() -> None:
    ops = [read(0, 1, 1), write(1, 2, 2), read(2.01, 3, 2), read(2.05, 2.7, 1), write(3, 4, 3)]
    assert check(ops, AUDIT) == []  # v1 at 2.05: within the staleness limit, no newer read ended


def test_an_answer_outside_the_history_is_flagged() -> None:
    (problem,) = check([read(0, 1, 2, on_hand=7)], AUDIT)
    assert problem.startswith("not in the history")


def test_going_back_after_a_finished_read_is_flagged() -> None:
    (problem,) = check([read(0, 1, 2), read(1.5, 2, 1)], AUDIT)
    assert problem.startswith("went back")


def test_overlapping_reads_may_disagree() -> None:
    assert check([read(0, 2, 2), read(1, 3, 1)], AUDIT) == []


def test_a_read_staler_than_the_limit_after_an_acknowledged_write_is_flagged() -> None:
    late = 2 + STALE_S_MAX + 0.01
    assert check([write(1, 2, 2), read(2 + STALE_S_MAX / 2, 9, 1)], AUDIT) == []
    (problem,) = check([write(1, 2, 2), read(late, late + 1, 1)], AUDIT)
    assert problem.startswith("stale")


def test_failed_operations_are_ignored() -> None:
    assert check([Op("read", "A", 0, 0, 1, None, None), read(2, 3, 1)], AUDIT) == []
