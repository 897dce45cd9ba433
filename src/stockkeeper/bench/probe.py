"""The visibility probe of `stockkeeper bench mixed`: while the load runs, restock one probe SKU
through a random server every PROBE_EVERY_S, then poll every server until each serves that
version. Lag = the last server's first fresh answer minus the write's acknowledgement: an upper
bound of commit-to-every-server (it includes one GET round trip, reported beside it)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stockkeeper.bench.oversell import call_json

if TYPE_CHECKING:
    import aiohttp

PROBE_SKU = "PROBE-VISIBILITY"
PROBE_EVERY_S = 0.05
POLL_EVERY_S = 0.001
GIVE_UP_S = 5.0


@dataclass
class ProbeResult:
    lags_s: list[float] = field(default_factory=list)
    get_round_trips_s: list[float] = field(default_factory=list)
    writes: int = 0
    write_errors: int = 0
    stale_polls: int = 0  # answers older than the acknowledged write: expected while it spreads
    not_visible: int = 0  # writes some server did not serve within GIVE_UP_S
    read_errors: int = 0


async def probe(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    admin_token: str,
    stop: asyncio.Event,
) -> ProbeResult:
    import aiohttp

    result = ProbeResult()

    async def first_served(url: str, version: int, give_up: float) -> float | None:
        while time.monotonic() < give_up:
            sent = time.monotonic()
            try:
                status, body = await call_json(
                    session, "GET", f"{url}/v1/items/{PROBE_SKU}", admin_token
                )
            except (OSError, TimeoutError, aiohttp.ClientError):
                status, body = 0, None
            arrived = time.monotonic()
            result.get_round_trips_s.append(arrived - sent)
            if status != 200:
                result.read_errors += 1
            elif int(body["version"]) >= version:
                return arrived
            else:
                result.stale_polls += 1
            await asyncio.sleep(POLL_EVERY_S)
        return None

    while not stop.is_set():
        started = time.monotonic()
        url = random.choice(urls)
        try:
            status, body = await call_json(
                session, "POST", f"{url}/v1/items/{PROBE_SKU}/restock", admin_token, {"quantity": 1}
            )
        except (OSError, TimeoutError, aiohttp.ClientError):
            status, body = 0, None
        acked = time.monotonic()
        if status != 200:
            result.write_errors += 1
        else:
            result.writes += 1
            version = int(body["version"])
            seen = await asyncio.gather(
                *(first_served(u, version, acked + GIVE_UP_S) for u in urls)
            )
            arrivals = [s for s in seen if s is not None]
            if len(arrivals) < len(seen):
                result.not_visible += 1
            else:
                result.lags_s.append(max(arrivals) - acked)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, started + PROBE_EVERY_S - time.monotonic())):
                await stop.wait()
    return result
