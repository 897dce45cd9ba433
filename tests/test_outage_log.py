"""OutageLog: one line when a loop starts failing, rate-limited reminders, one when it is back."""

from __future__ import annotations

import logging

import pytest

from stockkeeper.domain import Unavailable
from stockkeeper.outage_log import OutageLog

LOGGER = "stockkeeper.test_outage_log"


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outage(clock: Clock) -> OutageLog:
    return OutageLog("change feed", logging.getLogger(LOGGER), reminder_s=30, clock=clock)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_an_outage_is_one_line_then_a_reminder_per_period_then_one_line_back(
    outage: OutageLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    start_s = clock.now_s
    for _ in range(20):  # a retry every 0.5 s for 10 s
        outage.failed(Unavailable("database unreachable: connection refused"))
        clock.now_s += 0.5
    assert lines(caplog) == [
        "change feed: database unreachable: connection refused; retrying (a reminder every 30 s)"
    ]
    for _ in range(101):  # to 60 s in: reminders at 30 s and 60 s after the first line
        outage.failed(ConnectionRefusedError(111, "Connection refused"))
        clock.now_s += 0.5
    assert lines(caplog)[1:] == [
        "change feed: still failing after 30 s: [Errno 111] Connection refused",
        "change feed: still failing after 60 s: [Errno 111] Connection refused",
    ]
    assert outage.down
    clock.now_s = start_s + 61
    outage.recovered()
    outage.recovered()
    assert lines(caplog)[3:] == ["change feed: working again after 61 s (121 failed attempts)"]
    assert not outage.down
    assert all(r.exc_info is None for r in caplog.records)


def test_recovered_without_a_failure_logs_nothing_and_a_new_outage_logs_again(
    outage: OutageLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    outage.recovered()
    assert lines(caplog) == []
    outage.failed(Unavailable("the database system is starting up"))
    clock.now_s += 2
    outage.recovered()
    clock.now_s += 1  # a second outage soon after the first is logged in full
    outage.failed(TimeoutError("no connection within 500 ms"))
    assert [line.split(":")[1].strip() for line in lines(caplog)] == [
        "the database system is starting up; retrying (a reminder every 30 s)",
        "working again after 2 s (1 failed attempts)",
        "no connection within 500 ms; retrying (a reminder every 30 s)",
    ]


def test_an_unexpected_error_keeps_its_traceback_but_is_rate_limited_too(
    outage: OutageLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    for _ in range(50):
        try:
            raise KeyError("sku")
        except KeyError as error:
            outage.failed(error)
        clock.now_s += 1
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [r.getMessage() for r in records] == [
        "change feed: KeyError('sku'); retrying (a reminder every 30 s)",
        "change feed: still failing after 30 s: KeyError('sku')",
    ]
    assert all(r.exc_info is not None and r.exc_info[0] is KeyError for r in records)
    assert "Traceback" in caplog.text


def test_asyncpgs_pool_floor_traceback_is_dropped_for_an_outage_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from stockkeeper.store import postgres  # installs the filter on asyncpg.pool

    pool_log = logging.getLogger("asyncpg.pool")
    assert postgres._quiet_pool_floor in pool_log.filters
    caplog.set_level(logging.WARNING, "asyncpg.pool")
    for error in (ConnectionRefusedError(111, "refused"), RuntimeError("a bug")):
        try:
            raise error
        except Exception:
            pool_log.warning("Failed to restore the pool connection floor; retrying", exc_info=True)
    pool_records = [r for r in caplog.records if r.name == "asyncpg.pool"]
    assert [r.exc_info[0] for r in pool_records if r.exc_info] == [RuntimeError]
