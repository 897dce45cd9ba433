"""Stopping background tasks at shutdown."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel each task and wait until all have ended. How each ended (cancelled, or an error
    on its way out) is not the caller's to see; the caller's own cancellation is, and
    `suppress(CancelledError)` around `await task` would swallow it, leaving a shutdown that
    was told to stop running on."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    if not running:
        return
    await asyncio.wait(running)
    for task in running:
        if not task.cancelled():
            task.exception()  # retrieved: an error on the way out is not logged as lost
