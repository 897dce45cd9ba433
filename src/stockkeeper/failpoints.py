"""Named failpoints, after RocksDB's SyncPoint and TiKV's fail-rs.

Code marks the moments where an interleaving or a crash matters with `await hit("name")`.
Unarmed (always, in production) a hit is one dict lookup. Tests arm a point in-process with
`armed(...)`, or in a server process through STOCKKEEPER_FAILPOINTS, e.g.
`store.write.before_audit=error;store.write.before_commit=sleep(50)`.

Actions: `error` raises FailpointError; `sleep(ms)` waits; a callable (in-process only) is
awaited, so a test can hold a transaction at a point until it lets it go.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

ENV_VAR = "STOCKKEEPER_FAILPOINTS"
SLEEP_MS_MAX = 60_000

Action = str | Callable[[], Awaitable[None]]

# The points the product marks. Arming any other name is a typo, and fails loudly. A write that
# is one statement (PostgreSQL, no idempotency key) has no inside: only before_change marks it.
POINTS = frozenset(
    {
        "store.write.before_change",
        "store.write.before_audit",
        "store.write.before_commit",
        "service.read.after_fetch",
        "cache.push.before",
        "cache.reset.after_delete",
        "cache.read_mode.before_switch",
        "cache.read_mode.before_activate",
        "cache.read_mode.before_catch_up",
    }
)

_armed: dict[str, Action] = {}
_SLEEP = re.compile(r"sleep\((\d+)\)")


class FailpointError(RuntimeError):
    """Raised by a failpoint armed with `error`: stands for any crash at that point."""


def _check(name: str, action: Action) -> None:
    if name not in POINTS:
        raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(sorted(POINTS))}")
    if isinstance(action, str) and action != "error":
        match = _SLEEP.fullmatch(action)
        if match is None or int(match.group(1)) > SLEEP_MS_MAX:
            raise ValueError(f"failpoint action {action!r}: use error or sleep(ms<={SLEEP_MS_MAX})")


def arm(name: str, action: Action) -> None:
    _check(name, action)
    _armed[name] = action


def disarm(name: str) -> None:
    _armed.pop(name, None)


@contextmanager
def armed(name: str, action: Action) -> Iterator[None]:
    arm(name, action)
    try:
        yield
    finally:
        disarm(name)


def arm_from_env(environ: dict[str, str] | None = None) -> None:
    spec = (environ if environ is not None else os.environ).get(ENV_VAR, "")
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, _, action = part.partition("=")
        arm(name.strip(), action.strip())


async def hit(name: str) -> None:
    action = _armed.get(name)
    if action is None:
        return
    if callable(action):
        await action()
    elif action == "error":
        raise FailpointError(f"failpoint {name} fired")
    else:
        match = _SLEEP.fullmatch(action)
        assert match is not None, "arm() admits only error or sleep(ms)"
        await asyncio.sleep(int(match.group(1)) / 1000)
