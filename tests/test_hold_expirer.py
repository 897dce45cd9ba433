"""The background expirer of a started Inventory, on both backends: an overdue hold is recorded
as expired (an audited change, its lag observed) within a second, also when every server was
down at its expires_at and one comes back later."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest

from stockkeeper import metrics
from stockkeeper.domain import Item, OrderLine, Reason
from stockkeeper.hold_expirer import ExpirerOptions
from stockkeeper.http.app import settings_from_environment
from stockkeeper.service import Inventory
from tests.eventually import eventually
from tests.store.test_hold_writes import USER, make_overdue, recorded_state
from tests.store.test_writes import assert_audit_replays, audit_of, raw

EXPIRY_S_MAX = 1.0  # shared/API.md: each expiry is recorded within 1 s of expires_at


def _lag_count() -> float:
    return sum(
        sample.value
        for family in metrics.HOLD_EXPIRY_LAG.collect()
        for sample in family.samples
        if sample.name.endswith("_count")
    )


async def test_a_started_server_records_an_overdue_hold_within_a_second(database_url: str) -> None:
    async with await Inventory.open(database_url) as inventory:
        await inventory.set_stock("A", 10, user="admin")
        hold = (await inventory.hold([OrderLine("A", 4)], 1, user=USER)).hold
        await inventory.start()
        lags_before = _lag_count()
        assert await eventually(_is_expired(database_url, hold.id), 1 + 2 * EXPIRY_S_MAX)
        ((closed_at_lag_s,),) = await _lags(database_url, hold.id)
        assert 0 <= closed_at_lag_s <= EXPIRY_S_MAX
        assert _lag_count() == lags_before + 1
        assert await inventory.get_stock("A") == Item("A", 10, 3, 0)
        await assert_audit_replays(inventory, "A")


async def test_an_expiry_while_every_server_was_down_is_recorded_when_one_comes_back(
    database_url: str,
) -> None:
    async with await Inventory.open(database_url) as inventory:
        await inventory.set_stock("A", 10, user="admin")
        holds = [(await inventory.hold([OrderLine("A", 2)], 60, user=USER)).hold for _ in range(3)]
    # Every server is down; the holds fall due meanwhile.
    for hold in holds:
        await make_overdue(database_url, hold.id)
    async with await Inventory.open(database_url) as back:
        started_s = time.monotonic()
        await back.start()
        for hold in holds:
            assert await eventually(_is_expired(database_url, hold.id), timeout_s=EXPIRY_S_MAX)
        assert time.monotonic() - started_s <= EXPIRY_S_MAX
        entries = await audit_of(back, "A")
        assert [e.reason for e in entries[-3:]] == [Reason.EXPIRE] * 3
        assert {e.hold_id for e in entries[-3:]} == {hold.id for hold in holds}
        assert await back.held_drift() == []
        await assert_audit_replays(back, "A")


def _is_expired(database_url: str, hold_id: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await recorded_state(database_url, hold_id) == "expired"

    return check


async def _lags(database_url: str, hold_id: str) -> list[tuple[float]]:
    """closed_at - expires_at in seconds, by the database's own arithmetic."""
    if database_url.startswith("postgresql"):
        sql = (
            "SELECT extract(epoch FROM closed_at - expires_at)::float8 FROM holds "
            f"WHERE id = '{hold_id}'"
        )
    else:
        sql = (
            "SELECT (julianday(closed_at) - julianday(expires_at)) * 86400.0 FROM holds "
            f"WHERE id = '{hold_id}'"
        )
    return [(float(row[0]),) for row in await raw(database_url, sql)]


@pytest.mark.parametrize("poll_ms", [0, -5, 801])
def test_a_poll_interval_that_could_miss_the_second_is_refused(poll_ms: float) -> None:
    with pytest.raises(ValueError, match="poll_ms must be 1-800"):
        ExpirerOptions(poll_ms=poll_ms)


def test_the_servers_poll_interval_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STOCKKEEPER_HOLD_EXPIRY_POLL_MS", "50")
    assert settings_from_environment().expirer == ExpirerOptions(poll_ms=50)
    monkeypatch.delenv("STOCKKEEPER_HOLD_EXPIRY_POLL_MS")
    assert settings_from_environment().expirer == ExpirerOptions()
