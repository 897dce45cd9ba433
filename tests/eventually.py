"""Waiting for a condition in a test, bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    """Whether `check` comes true within `timeout_s` (polled every 2 ms)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.002)
    return True
