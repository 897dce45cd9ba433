"""The pure rules of holds (src/stockkeeper/holds.py): validation, state by database time,
which action each state allows, and what a confirm takes and gives back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stockkeeper.domain import InvalidRequest, OrderLine
from stockkeeper.holds import (
    TTL_S_DEFAULT,
    ConfirmLine,
    Hold,
    HoldAction,
    HoldClosed,
    HoldExpired,
    HoldLine,
    HoldState,
    check_action,
    check_hold_request,
    plan_confirm,
    state_at,
)

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HELD = (HoldLine("A", 3), HoldLine("B", 2))


def fields(error: pytest.ExceptionInfo[InvalidRequest]) -> list[str]:
    return [e.field for e in error.value.errors]


def test_a_hold_request_takes_an_orders_lines_and_a_ttl() -> None:
    request = check_hold_request([{"sku": "A", "quantity": 2}], 30, "cart-9")
    assert request.lines == (OrderLine("A", 2),) and request.ttl_s == 30
    assert request.on_behalf_of == "cart-9"
    assert check_hold_request([{"sku": "A", "quantity": 1}]).ttl_s == TTL_S_DEFAULT


@pytest.mark.parametrize(
    ("lines", "ttl_s", "bad"),
    [
        ([], 10, ["lines"]),
        ([{"sku": "A", "quantity": 0}], 10, ["lines[0].quantity"]),
        ([{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 1}], 10, ["lines[1].sku"]),
        ([{"sku": "A", "quantity": 1}], 0, ["ttl_s"]),
        ([{"sku": "A", "quantity": 1}], 3601, ["ttl_s"]),
        ([{"sku": "A", "quantity": 1}], True, ["ttl_s"]),
        ([{"sku": "bad sku", "quantity": 1}], 5000, ["lines[0].sku", "ttl_s"]),
    ],
)
def test_a_bad_hold_request_names_every_bad_field(
    lines: object, ttl_s: object, bad: list[str]
) -> None:
    with pytest.raises(InvalidRequest) as error:
        check_hold_request(lines, ttl_s)
    assert fields(error) == bad


def test_an_active_hold_is_expired_from_expires_at_on_whatever_was_recorded() -> None:
    assert state_at(HoldState.ACTIVE, AT, AT - timedelta(microseconds=1)) is HoldState.ACTIVE
    assert state_at(HoldState.ACTIVE, AT, AT) is HoldState.EXPIRED
    assert state_at(HoldState.CONFIRMED, AT, AT + timedelta(hours=1)) is HoldState.CONFIRMED
    assert state_at(HoldState.RELEASED, AT, AT + timedelta(hours=1)) is HoldState.RELEASED


@pytest.mark.parametrize("action", list(HoldAction))
def test_every_action_runs_on_an_active_hold(action: HoldAction) -> None:
    check_action(action, HoldState.ACTIVE)


@pytest.mark.parametrize("action", [HoldAction.CONFIRM, HoldAction.EXTEND])
def test_confirm_or_extend_of_an_expired_hold_is_hold_expired(action: HoldAction) -> None:
    with pytest.raises(HoldExpired) as error:
        check_action(action, HoldState.EXPIRED)
    assert error.value.code == "hold_expired"


@pytest.mark.parametrize("action", list(HoldAction))
@pytest.mark.parametrize("state", [HoldState.CONFIRMED, HoldState.RELEASED])
def test_anything_on_a_closed_hold_is_hold_closed_with_its_state(
    action: HoldAction, state: HoldState
) -> None:
    with pytest.raises(HoldClosed) as error:
        check_action(action, state)
    assert error.value.code == "hold_closed" and error.value.details() == {"state": state.value}


def test_releasing_an_expired_hold_is_hold_closed() -> None:
    with pytest.raises(HoldClosed) as error:
        check_action(HoldAction.RELEASE, HoldState.EXPIRED)
    assert error.value.details() == {"state": "expired"}


def test_a_confirm_without_lines_sells_every_line_whole() -> None:
    assert plan_confirm(HELD) == [ConfirmLine("A", 3, 3), ConfirmLine("B", 2, 2)]


def test_a_partial_confirm_sells_what_it_names_and_releases_the_rest() -> None:
    plan = plan_confirm(HELD, [{"sku": "B", "quantity": 1}])
    assert plan == [ConfirmLine("A", 3, 0), ConfirmLine("B", 2, 1)]


@pytest.mark.parametrize(
    ("lines", "bad"),
    [
        ([{"sku": "C", "quantity": 1}], ["lines[0].sku"]),
        ([{"sku": "A", "quantity": 4}], ["lines[0].quantity"]),
        ([{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 1}], ["lines[1].sku"]),
        ([], ["lines"]),
    ],
)
def test_a_confirm_line_not_held_or_over_its_quantity_is_invalid(
    lines: object, bad: list[str]
) -> None:
    with pytest.raises(InvalidRequest) as error:
        plan_confirm(HELD, lines)
    assert fields(error) == bad


def test_a_hold_answers_in_the_contracts_shape() -> None:
    hold = Hold("h1", HoldState.CONFIRMED, AT, (HoldLine("A", 3, 2),))
    assert hold.to_json() == {
        "id": "h1",
        "state": "confirmed",
        "expires_at": "2026-12-01T12:00:00.000000Z",
        "lines": [{"sku": "A", "quantity": 3, "confirmed": 2}],
        "changes": [],
    }
