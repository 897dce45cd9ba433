"""`bench holds`' verdict, a pure function: a correct run passes, and each way a run can break
is named (so the benchmark can fail)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from stockkeeper.bench.holds import CONFIRMED, HELD, SHORT, TOO_LATE, Cart, verdict

T0 = "2026-12-02T10:00:00.000000Z"


def at(seconds: float) -> str:
    return f"2026-12-02T10:00:{seconds:09.6f}Z"


def entry(version: int, reason: str, delta: int, held_delta: int, **kw: Any) -> dict[str, Any]:
    return {"version": version, "reason": reason, "delta": delta, "held_delta": held_delta, **kw}


def run() -> tuple[list[Cart], list[dict[str, Any]], list[dict[str, Any]]]:
    """Stock 2: cart 1 holds and confirms, cart 2 holds and walks away (expired 0.2 s after
    its expires_at), cart 3 is refused, cart 4 holds the unit cart 2 gave back and confirms."""
    carts = [
        Cart(HELD, 0.01, "h1", at(1), CONFIRMED, 0.01),
        Cart(HELD, 0.01, "h2", at(1)),
        Cart(SHORT, 0.01),
        Cart(HELD, 0.01, "h4", at(3), CONFIRMED, 0.01),
    ]
    steps = [
        ("set", 2, 0, None, T0),
        ("hold", 0, 1, "h1", at(0.1)),
        ("hold", 0, 1, "h2", at(0.1)),
        ("confirm", -1, -1, "h1", at(0.2)),
        ("expire", 0, -1, "h2", at(1.2)),
        ("hold", 0, 1, "h4", at(2)),
        ("confirm", -1, -1, "h4", at(2.1)),
    ]
    audit, on_hand, held = [], 0, 0
    for version, (reason, delta, held_delta, hold_id, stamp) in enumerate(steps, 1):
        on_hand, held = on_hand + delta, held + held_delta
        audit.append(
            entry(
                version,
                reason,
                delta,
                held_delta,
                on_hand=on_hand,
                held=held,
                hold_id=hold_id,
                at=stamp,
            )
        )
    return carts, audit, [{"sku": "S", "on_hand": 0, "held": 0, "available": 0}]


def test_a_correct_run_passes_and_measures_the_walk_aways_lag() -> None:
    carts, audit, served = run()
    problems, lags = verdict(2, carts, audit, served)
    assert problems == []
    assert lags == [pytest.approx(0.2)]


def answered(seconds: float) -> datetime:
    return datetime.fromisoformat(at(seconds))


def test_a_confirm_answered_too_late_after_expires_at_is_a_walk_away() -> None:
    carts, audit, served = run()
    carts[1].confirm, carts[1].confirm_s, carts[1].confirm_answered_at = (
        TOO_LATE,
        1.1,
        answered(1.1),
    )
    problems, lags = verdict(2, carts, audit, served)
    assert problems == []
    assert lags == [pytest.approx(0.2)]


def _broken(kind: str) -> tuple[list[Cart], list[dict[str, Any]], list[dict[str, Any]]]:
    carts, audit, served = run()
    if kind == "late-expiry":
        audit[4]["at"] = at(2.5)
    elif kind == "ended-twice":
        extra = dict(audit[4], version=8, on_hand=0, held=-1)
        audit.append(extra)
    elif kind == "confirm-lost":
        carts[3].confirm = "503 unavailable"
    elif kind == "over-held":
        for e in audit[1:]:
            e["held"] = e["held"] + 3 if e["reason"] == "hold" else e["held"]
    elif kind == "still-served-held":
        served[0]["held"] = 1
    elif kind == "unacknowledged-hold":
        carts[1].hold = SHORT
    elif kind == "refused-as-expired-early":
        carts[1].confirm, carts[1].confirm_answered_at = TOO_LATE, answered(0.9)
    return carts, audit, served


@pytest.mark.parametrize(
    "kind",
    [
        "late-expiry",
        "ended-twice",
        "confirm-lost",
        "over-held",
        "still-served-held",
        "unacknowledged-hold",
        "refused-as-expired-early",
    ],
)
def test_each_way_a_run_breaks_is_named(kind: str) -> None:
    problems, _ = verdict(2, *_broken(kind))
    assert problems, f"{kind} went unnoticed"
