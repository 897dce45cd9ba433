"""Bounded, jittered retries of transient database faults (deadlock, serialization, busy)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from stockkeeper import metrics
from stockkeeper.domain import Unavailable

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts_max: int = 6
    backoff_ms_base: float = 2.0
    backoff_ms_max: float = 200.0

    def backoff_s(self, attempt: int) -> float:
        """Full jitter (AWS architecture blog): spreads retries that collided once."""
        ceiling_ms = min(self.backoff_ms_max, self.backoff_ms_base * 2**attempt)
        return random.uniform(0, ceiling_ms) / 1000


async def retrying(
    op: Callable[[], Awaitable[T]],
    transient: Callable[[BaseException], str | None],
    policy: RetryPolicy,
) -> T:
    """Run `op`; after a fault `transient` names, again, up to attempts_max times in all."""
    for attempt in range(policy.attempts_max):
        try:
            return await op()
        except Exception as error:
            reason = transient(error)
            if reason is None:
                raise
            if attempt + 1 == policy.attempts_max:
                raise Unavailable(
                    f"gave up after {policy.attempts_max} attempts ({reason})"
                ) from error
            metrics.TRANSACTION_RETRIES.labels(reason=reason).inc()
            await asyncio.sleep(policy.backoff_s(attempt))
    raise AssertionError("unreachable: the loop returns or raises")
