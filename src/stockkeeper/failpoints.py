"""Named failpoints, after RocksDB's SyncPoint and TiKV's fail-rs.

Code marks the moments where an interleaving or a crash matters with `await hit("name")`.
Unarmed (always, in production) a hit is one dict lookup. Tests arm a point in-process with
`armed(...)`, or in a server process through STOCKKEEPER_FAILPOINTS, e.g.
`store.write.before_audit=error;store.write.before_commit=sleep(50)`.

Actions: `error` raises FailpointError; `sleep(ms)` waits; a callable (in-process only) is
awaited, so a test can hold a transaction at a point until it lets it go. A `P%` prefix fires
the action at each hit with probability P (`30%error`), as fail-rs does, so a stress run can
fail some writes of a server and not all of them.

A stress run changes a running server's points through a file: when STOCKKEEPER_FAILPOINTS_FILE
names one, `follow_file` re-arms the points from it (same syntax, on top of the environment's)
whenever it changes. Unset, nothing polls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_VAR = "STOCKKEEPER_FAILPOINTS"
FILE_ENV_VAR = "STOCKKEEPER_FAILPOINTS_FILE"
SLEEP_MS_MAX = 60_000
FILE_POLL_S = 0.05

Action = str | Callable[[], Awaitable[None]]

# The points the product marks. Arming any other name is a typo, and fails loudly. A write that
# is one statement (PostgreSQL, no idempotency key) has no inside: only before_change marks it.
POINTS = frozenset(
    {
        "store.write.before_change",
        "store.write.before_audit",
        "store.write.before_commit",
        "store.hold.locked",
        "store.hold.before_commit",
        "store.expire.before_audit",
        "store.migrate.before_ddl",
        "service.read.after_fetch",
        "cache.push.before",
        "cache.reset.after_delete",
        "cache.read_mode.before_switch",
        "cache.read_mode.before_activate",
        "cache.read_mode.before_catch_up",
    }
)

_armed: dict[str, tuple[float, Action]] = {}  # name -> (probability, action)
_SLEEP = re.compile(r"sleep\((\d+)\)")
_PERCENT = re.compile(r"(\d{1,3})%(.*)")
log = logging.getLogger(__name__)


class FailpointError(RuntimeError):
    """Raised by a failpoint armed with `error`: stands for any crash at that point."""


def _parse(name: str, action: Action) -> tuple[float, Action]:
    """(probability, action) for a valid point and action; ValueError otherwise."""
    if name not in POINTS:
        raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(sorted(POINTS))}")
    if callable(action):
        return 1.0, action
    probability, plain = 1.0, action
    percent = _PERCENT.fullmatch(action)
    if percent is not None and int(percent.group(1)) <= 100:
        probability, plain = int(percent.group(1)) / 100, percent.group(2)
    if plain != "error":
        match = _SLEEP.fullmatch(plain)
        if match is None or int(match.group(1)) > SLEEP_MS_MAX:
            raise ValueError(
                f"failpoint action {action!r}: use [P%]error or [P%]sleep(ms<={SLEEP_MS_MAX})"
            )
    return probability, plain


def arm(name: str, action: Action) -> None:
    _armed[name] = _parse(name, action)


def disarm(name: str) -> None:
    _armed.pop(name, None)


@contextmanager
def armed(name: str, action: Action) -> Iterator[None]:
    arm(name, action)
    try:
        yield
    finally:
        disarm(name)


def arm_spec(spec: str) -> None:
    """Arm every `name=action` of a `;`-separated spec; all or none (a bad part arms nothing)."""
    parsed = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, _, action = part.partition("=")
        parsed[name.strip()] = _parse(name.strip(), action.strip())
    _armed.update(parsed)


def arm_from_env(environ: dict[str, str] | None = None) -> None:
    arm_spec((environ if environ is not None else os.environ).get(ENV_VAR, ""))


def _read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


async def follow_file(path: str, poll_s: float = FILE_POLL_S) -> None:
    """Re-arm from `path` whenever its contents change: its points, on top of those of
    STOCKKEEPER_FAILPOINTS, replace every armed one. A missing file arms none; a bad spec is
    logged and arms none of its points, so a typo never leaves an older fault armed."""
    seen: str | None = None
    while True:
        spec = await asyncio.to_thread(_read_or_empty, Path(path))
        if spec != seen:
            seen = spec
            _armed.clear()
            arm_from_env()
            try:
                arm_spec(spec)
            except ValueError as error:
                log.error("failpoints file %s: %s; every point disarmed", path, error)
        await asyncio.sleep(poll_s)


async def hit(name: str) -> None:
    armed_ = _armed.get(name)
    if armed_ is None:
        return
    probability, action = armed_
    if probability < 1.0 and random.random() >= probability:
        return
    if callable(action):
        await action()
    elif action == "error":
        raise FailpointError(f"failpoint {name} fired")
    else:
        match = _SLEEP.fullmatch(action)
        assert match is not None, "arm() admits only error or sleep(ms)"
        await asyncio.sleep(int(match.group(1)) / 1000)
