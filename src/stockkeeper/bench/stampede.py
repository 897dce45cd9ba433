"""`stockkeeper bench stampede`: KEYS cold items, each read READS times at once, spread over the
servers; how often each server went to the database for them, from its /metrics. Coalesced
misses and fill leases should make it at most once per key per server (docs/cache.md, G4)."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from stockkeeper.bench.oversell import REQUEST_TIMEOUT_S, Progress, call_json, outcome_key
from stockkeeper.bench.scrape import scrape, total
from stockkeeper.domain import Item

if TYPE_CHECKING:
    import aiohttp

DB_READS = "stockkeeper_item_database_reads_total"
ON_HAND = 7


@dataclass
class Result:
    keys: int
    reads_per_key: int
    concurrency: int
    urls: list[str]
    outcomes: dict[str, int]
    wrong_answers: int
    db_reads_per_server: list[float]
    wall_s: float
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "scenario": "stampede",
            "verdict": "CORRECT" if not self.problems else "WRONG",
            "db_reads_per_key": sum(self.db_reads_per_server) / self.keys,
        }


def verdict(
    keys: int,
    outcomes: Counter[str] | dict[str, int],
    wrong_answers: int,
    db_reads: Sequence[float],
) -> list[str]:
    """Every read answered 200 with the right item; no server read the database more than
    once per key."""
    problems = [f"{count} reads answered {key}" for key, count in outcomes.items() if key != "200"]
    if wrong_answers:
        problems.append(f"{wrong_answers} reads answered another state than the one written")
    problems += [
        f"server {n} read the database {reads:g} times for {keys} keys (more than once per key)"
        for n, reads in enumerate(db_reads)
        if reads > keys
    ]
    return problems


def report(result: Result) -> str:
    reads = result.keys * result.reads_per_key
    per_key = sum(result.db_reads_per_server) / result.keys
    lines = [
        f"stampede: {result.keys} cold keys x {result.reads_per_key} reads ({reads:,}) over "
        f"{len(result.urls)} servers, {result.concurrency} in flight",
        f"  database reads per server  {[round(r) for r in result.db_reads_per_server]}",
        f"  database reads per key     {per_key:.2f} (all servers; at most {len(result.urls)})",
        f"  wall time                  {result.wall_s:.2f} s",
        f"verdict: {'CORRECT' if not result.problems else 'WRONG'}",
    ]
    return "\n".join(lines + [f"  - {problem}" for problem in result.problems])


async def _db_reads(session: aiohttp.ClientSession, url: str) -> float:
    return total(await scrape(session, url), DB_READS)


async def run_stampede(
    urls: Sequence[str],
    admin_token: str,
    reader_token: str,
    keys: int,
    reads_per_key: int,
    concurrency: int,
    progress_stream: TextIO = sys.stderr,
) -> Result:
    """Create `keys` new items (writes never fill a cache), then read key n % keys on server
    n // keys % K for n < keys x reads_per_key, `concurrency` at once."""
    import aiohttp

    prefix = f"BENCH-COLD-{uuid.uuid4().hex[:8]}"
    skus = [f"{prefix}-{n}" for n in range(keys)]
    all_reads = keys * reads_per_key
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=concurrency + len(urls))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for sku in skus:
            status, body = await call_json(
                session, "PUT", f"{urls[0]}/v1/items/{sku}", admin_token, {"on_hand": ON_HAND}
            )
            if status != 201:
                raise RuntimeError(f"PUT {sku} answered {status} {body}")
        before = [await _db_reads(session, url) for url in urls]
        outcomes: Counter[str] = Counter()
        wrong = 0
        numbers = iter(range(all_reads))
        progress = Progress(all_reads, progress_stream)

        async def reader() -> None:
            nonlocal wrong
            for n in numbers:
                sku, url = skus[n % keys], urls[n // keys % len(urls)]
                try:
                    status, body = await call_json(
                        session, "GET", f"{url}/v1/items/{sku}", reader_token
                    )
                    outcomes[outcome_key(status, body)] += 1
                    wrong += status == 200 and body != Item(sku, ON_HAND, 1).to_json()
                except (OSError, TimeoutError, aiohttp.ClientError) as error:
                    outcomes[f"transport {type(error).__name__}"] += 1
                progress.done += 1

        ticker = asyncio.create_task(progress.run())
        started = time.perf_counter()
        try:
            await asyncio.gather(*(reader() for _ in range(min(concurrency, all_reads))))
        finally:
            wall_s = time.perf_counter() - started
            ticker.cancel()
            progress.finish()
        after = [await _db_reads(session, url) for url in urls]
    db_reads = [a - b for a, b in zip(after, before, strict=True)]
    result = Result(
        keys, reads_per_key, concurrency, list(urls), dict(outcomes), wrong, db_reads, wall_s
    )
    result.problems = verdict(keys, outcomes, wrong, db_reads)
    return result
