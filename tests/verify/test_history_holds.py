"""The checker's hold rules (13-16) and holds in the older ones: a correct history of holds
passes, and each broken one is flagged under its own rule only."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stockkeeper.verify.history import AuditEntry, Op, Verdict, check

T = 1_000_000.0  # the database's clock (db_s), seconds
EXPIRES = T + 10


def entry(v: int, reason: str, delta: int, on_hand: int, held_delta: int, held: int,
          hold_id: str | None = None, db_s: float = T) -> AuditEntry:  # fmt: skip
    return AuditEntry("A", v, delta, on_hand, None, None, held_delta, held, reason, hold_id, db_s)


def history() -> tuple[list[Op], list[AuditEntry]]:
    """A at 10; h1 holds 2 and is confirmed; h2 holds 3 and expires 0.3 s after its
    expires_at; h3 holds 1 and is released; a purchase takes 7 of the 8 available."""
    audit = [
        entry(1, "set", 10, 10, 0, 0),
        entry(2, "hold", 0, 10, 2, 2, "h1"),
        entry(3, "hold", 0, 10, 3, 5, "h2"),
        entry(4, "confirm", -2, 8, -2, 3, "h1", T + 1),
        entry(5, "expire", 0, 8, -3, 0, "h2", EXPIRES + 0.3),
        entry(6, "hold", 0, 8, 1, 1, "h3"),
        entry(7, "release", 0, 8, -1, 0, "h3"),
        entry(8, "purchase", -7, 1, 0, 0),
    ]
    ops = [
        Op("set", "A", 0, 0.0, 0.1, 1, 10),
        Op("hold", "A", 0, 1.0, 1.1, 2, 10, hold_id="h1", expires_at_s=EXPIRES),
        Op("hold", "A", 0, 1.2, 1.3, 3, 10, hold_id="h2", expires_at_s=EXPIRES),
        Op("confirm", "A", 0, 2.0, 2.1, 4, 8, hold_id="h1"),
        Op("hold", "A", 0, 3.0, 3.1, 6, 8, hold_id="h3", expires_at_s=EXPIRES),
        Op("release", "A", 0, 3.2, 3.3, 7, 8, hold_id="h3"),
        Op("purchase", "A", 0, 4.0, 4.1, 8, 1, delta=-7),
    ]
    return ops, audit


def judged(ops: list[Op], audit: list[AuditEntry], **kwargs: object) -> Verdict:
    return check(ops, audit, complete_writers=True, holds_settled=True, **kwargs)  # type: ignore[arg-type]


def broken(verdict: Verdict) -> set[str]:
    return {kind for kind, n in verdict.counts.items() if n}


def test_a_correct_history_of_holds_passes() -> None:
    verdict = judged(*history())
    assert verdict.ok, verdict


def test_a_hold_expired_while_no_one_recorded_it_is_explained_by_its_hold() -> None:
    ops, audit = history()
    without_h2 = [op for op in ops if op.hold_id != "h2"]
    assert broken(judged(without_h2, audit)) == {"unexplained"}  # its hold entry: no writer
    strange = [replace(e, hold_id="h9") if e.reason == "expire" else e for e in audit]
    assert "unexplained" in broken(judged(ops, strange))


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        # held above on_hand: sold plus held over the stock.
        (lambda a: a.__setitem__(2, replace(a[2], held=11, held_delta=9)), "over_held"),
        # held does not replay.
        (lambda a: a.__setitem__(5, replace(a[5], held=4, held_delta=1)), "over_held"),
        # a confirm after expires_at by the database's clock.
        (lambda a: a.__setitem__(3, replace(a[3], db_s=EXPIRES + 0.001)), "confirm_after_expiry"),
        # an expiry recorded too late, or before the hold was due.
        (lambda a: a.__setitem__(4, replace(a[4], db_s=EXPIRES + 1.5)), "expiry_untimely"),
        (lambda a: a.__setitem__(4, replace(a[4], db_s=EXPIRES - 0.5)), "expiry_untimely"),
        # a hold ending a second time.
        (lambda a: a.append(entry(9, "expire", 0, 1, -1, -1, "h3", EXPIRES + 0.1)), "hold_ends"),
    ],
)
def test_each_broken_hold_rule_is_flagged(change: object, rule: str) -> None:
    ops, audit = history()
    change(audit)  # type: ignore[operator]
    assert rule in broken(judged(ops, audit))


def test_a_hold_that_never_ended_is_flagged_once_the_caller_let_every_hold_end() -> None:
    ops, audit = history()
    ops = [op for op in ops if op.kind != "release"]
    ops[-1] = replace(ops[-1], version=7)
    audit = [e for e in audit if e.version < 7] + [replace(audit[7], version=7, held=1)]
    assert check(ops, audit, holds_settled=False).ok
    assert broken(check(ops, audit, holds_settled=True)) == {"hold_ends"}


def test_an_acknowledged_release_that_the_audit_records_as_a_confirm_is_flagged() -> None:
    ops, audit = history()
    audit[6] = replace(audit[6], reason="confirm")
    assert broken(judged(ops, audit)) == {"hold_ends"}


def test_a_purchase_of_held_stock_is_oversold() -> None:
    """8 of 10 on hand but 5 held: a purchase of 7 took 2 that were promised."""
    ops, audit = history()
    audit[7] = replace(audit[7], version=8)
    audit.insert(4, entry(5, "purchase", -7, 3, 0, 5))
    audit[5:] = [replace(e, version=e.version + 1) for e in audit[5:]]
    ops.append(Op("purchase", "A", 0, 2.5, 2.6, 5, 3, delta=-7))
    assert "oversold" in broken(check(ops, audit))


def test_expiry_lateness_is_not_judged_when_the_caller_says_so() -> None:
    ops, audit = history()
    audit[4] = replace(audit[4], db_s=EXPIRES + 30)
    verdict = judged(ops, audit, expiry_s_max=None)
    assert "expiry_untimely" in verdict.skipped and "expiry_untimely" not in broken(verdict)
