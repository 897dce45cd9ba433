"""One log line when a background loop's dependency goes down, a reminder now and then while it
stays down, and one line when it is back: never a line (or a traceback) per retry."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from stockkeeper.domain import StockkeeperError

REMINDER_S = 30.0

KNOWN_FAULTS: tuple[type[BaseException], ...] = (
    StockkeeperError,  # Unavailable, Busy, ...: the stores turn their drivers' faults into these
    OSError,  # refused, reset, unreachable host
    TimeoutError,
)
"""Faults that are logged without a traceback: the message says all there is to say. A driver's
own exception reaching a loop is a bug in its store, and keeps its traceback."""


def is_known_fault(error: BaseException) -> bool:
    return isinstance(error, KNOWN_FAULTS)


class OutageLog:
    """The log of one loop's failures: `failed(error)` after each failed attempt, `recovered()`
    after each successful one. Logs a WARNING at the first failure, at most one reminder per
    `reminder_s` while failures continue, and one line at the first success after them. Known
    faults (KNOWN_FAULTS) get no traceback; anything else gets one, as rate-limited."""

    def __init__(
        self,
        what: str,
        log: logging.Logger,
        reminder_s: float = REMINDER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self._log = log
        self._reminder_s = reminder_s
        self._clock = clock
        self._down_since_s: float | None = None
        self._logged_at_s = 0.0
        self.failures = 0
        """Failures since the last success."""

    @property
    def down(self) -> bool:
        return self._down_since_s is not None

    def failed(self, error: BaseException) -> None:
        now_s = self._clock()
        self.failures += 1
        known = is_known_fault(error)
        detail = str(error) if known else repr(error)
        if self._down_since_s is None:
            self._down_since_s = now_s
            message = f"{self.what}: {detail}; retrying (a reminder every {self._reminder_s:g} s)"
        elif now_s - self._logged_at_s >= self._reminder_s:
            down_s = now_s - self._down_since_s
            message = f"{self.what}: still failing after {down_s:.0f} s: {detail}"
        else:
            return
        self._logged_at_s = now_s
        self._log.warning(message, exc_info=None if known else error)

    def recovered(self) -> None:
        if self._down_since_s is None:
            return
        down_s = self._clock() - self._down_since_s
        self._log.warning(
            "%s: working again after %.0f s (%d failed attempts)",
            self.what,
            down_s,
            self.failures,
        )
        self._down_since_s = None
        self.failures = 0
