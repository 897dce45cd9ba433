"""Network delay and reordering, injected for real: each server reaches Redis, or PostgreSQL,
through its own `FaultProxy`, which delays every chunk. A connection's bytes keep their order,
but chunks of different connections overtake each other, so a fill, a push or a delete sent by
one server can land after what another server sent later.

Servers are Inventories in this process (tests/cache/conftest.py), each with its own
connections, on the real PostgreSQL and Redis. Every read and write is recorded and judged by
`stockkeeper.verify.history.check` against the audit log: no read goes back, none is stale 100 ms
after a write was acknowledged, and so on. The log is checked without commit times: with
PostgreSQL delayed, an entry's time is taken before its COMMIT has crossed the slow link, so the
"stale" rule (against acknowledgements) is the one that holds the servers to 100 ms. At the end,
every server must serve what the database holds.

The forced scenario runs on the coherent cache, which must hold, and on the naive cache-aside
(tests/cache/naive.py), which must break. The random runs are the coherent cache's alone: whether
one breaks the naive cache is luck (it went back in 4 of 6 tries here).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import pytest

from stockkeeper.domain import AUDIT_PAGE_LIMIT_MAX, Item, ReadsRefused
from stockkeeper.faults.proxy import FaultProxy
from stockkeeper.verify.history import AuditEntry, Op, Verdict, check
from tests.cache.conftest import NO_FEED, REDIS_URL, OpenServer, Server
from tests.cache.naive import expect
from tests.cache.test_read_source import proxied
from tests.eventually import eventually
from tests.holds import held

FILL_DELAY_MS = 300.0
"""The delay of the late fill: long against what the other server does meanwhile (a few ms)."""
PATIENCE_S = 5.0
SERVERS = 3
DELAY_MS = 10.0
JITTER_MS = 10.0
"""Each chunk waits 0-20 ms: far below the cache's 500 ms timeout, well above the gap between
two servers' commands, so they arrive in another order than they were sent."""
RUN_S = 1.5
RUN_S_MAX = 10.0
"""A loaded machine runs on past RUN_S, up to this, until there is enough to judge."""
READS_MIN = 50
WRITES_MIN = 20
READERS_PER_SERVER = 2
STOCK = 1_000_000  # purchases never run out


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """PostgreSQL only: one scenario puts the network between the servers and the database."""
    return postgres_url


@dataclass
class History:
    """What the clients saw, as `Op`s on one monotonic clock. A read refused (503: no source
    was safe in time, as on an overloaded machine) is allowed, and not judged."""

    ops: list[Op] = field(default_factory=list)

    async def read(self, n: int, server: Server, sku: str) -> Item | None:
        started = time.monotonic()
        try:
            item = await server.read(sku)
        except ReadsRefused:
            self.ops.append(Op("read", sku, n, started, time.monotonic(), None, None, "refused"))
            return None
        self.ops.append(Op("read", sku, n, started, time.monotonic(), item.version, item.on_hand))
        return item

    async def write(self, kind: str, n: int, server: Server, sku: str) -> None:
        inventory = server.inventory
        started = time.monotonic()
        if kind == "purchase":
            receipt = await inventory.decrement_stock(sku, 1, user="t")
        elif kind == "restock":
            receipt = await inventory.increment_stock(sku, 1, user="t")
        else:
            receipt = await inventory.set_stock(sku, STOCK, user="t")
        change = receipt.change
        ended = time.monotonic()
        self.ops.append(
            Op(kind, sku, n, started, ended, change.version, change.on_hand, delta=change.delta)
        )

    def traffic(self) -> tuple[int, int, int]:
        """Reads answered, writes, and writes acknowledged after a newer one (the reordering a
        run is for: their pushes, or their commits' replies, were overtaken)."""
        ops = sorted(self.ops, key=lambda op: op.ended_s)
        acks = [op.version or 0 for op in ops if op.kind != "read"]
        overtaken = sum(earlier > later for earlier, later in itertools.pairwise(acks))
        reads = sum(op.kind == "read" and op.outcome == "ok" for op in ops)
        return reads, len(acks), overtaken

    def enough(self) -> bool:
        reads, writes, overtaken = self.traffic()
        return reads >= READS_MIN and writes >= WRITES_MIN and overtaken > 0


async def audit_log(server: Server, sku: str) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    after: int | None = 0
    while after is not None:
        page = await server.inventory.audit(sku, after_version=after, limit=AUDIT_PAGE_LIMIT_MAX)
        entries += [
            AuditEntry(sku, e.version, e.delta, e.on_hand, e.idempotency_key) for e in page.entries
        ]
        after = page.next_after_version
    return entries


async def judge(kind: str, history: History, servers: list[Server], sku: str) -> Verdict:
    """Every server reads once more, then the history is checked; the coherent cache must pass
    and serve the database's state everywhere, the naive one must fail."""
    finals = [await history.read(n, server, sku) for n, server in enumerate(servers)]
    truth = await servers[0].store.get_item(sku)
    verdict = check(history.ops, await audit_log(servers[0], sku), complete_writers=True)
    refused = sum(op.outcome == "refused" for op in history.ops)
    print(f"{kind}: {verdict}; {refused} reads refused")  # shown if the test fails
    print(f"  served at the end {finals}, the database holds {truth}")
    assert verdict.counts["not_in_history"] == 0, verdict
    expect(kind, verdict.ok and all(item == truth for item in finals))
    return verdict


@pytest.mark.parametrize("kind", ["coherent", "naive"])
async def test_a_fill_overtaken_by_a_write_on_a_faster_link_never_goes_back(
    open_server: OpenServer, sku: str, kind: str
) -> None:
    """Forced: A misses and reads v1 from the database (service.read.after_fetch); from then
    on A's link to Redis delays each chunk FILL_DELAY_MS, and A sends its fill of v1. While it
    is on the wire, B, on an undelayed link, commits v2, tells Redis (naive: DEL; coherent:
    a versioned push) and serves v2 (naive: a miss that SETs v2). Only then does A's fill land.
    The naive SET is unversioned and puts v1 back over v2: every later read, on either server,
    goes back to v1 and stays stale until the TTL. The coherent fill finds v2 and installs
    nothing older."""
    with proxied(REDIS_URL) as (proxy, a_url):
        a = await open_server(kind, redis_url=a_url, **NO_FEED)
        b = await open_server(kind, **NO_FEED)
        history = History()
        await history.write("set", 1, b, sku)
        async with held("service.read.after_fetch") as fetched:
            late = asyncio.create_task(history.read(0, a, sku))
            await fetched.reached()
            proxy.delay(FILL_DELAY_MS)
            fetched.release()

            async def on_the_wire() -> bool:
                return proxy.bytes_held > 0

            assert await eventually(on_the_wire, PATIENCE_S)
            forwarded = proxy.bytes_forwarded
            await history.write("purchase", 1, b, sku)
            assert await history.read(1, b, sku) == Item(sku, STOCK - 1, 2)
            assert proxy.bytes_forwarded == forwarded, "A's fill landed before B was done"
            await late
        proxy.delay(0)
        verdict = await judge(kind, history, [a, b], sku)
    if kind == "naive":
        assert verdict.counts["went_back"] and verdict.counts["stale"], verdict


@pytest.mark.parametrize("link", ["redis", "postgresql"])
async def test_random_delay_and_reordering_break_no_guarantee(
    open_server: OpenServer, database_url: str, sku: str, link: str
) -> None:
    """Random: SERVERS servers each reach `link` through their own proxy, every chunk delayed
    DELAY_MS ± JITTER_MS (seeded per server), so pushes, fills and the change feed's pushes
    (Redis), or writes, COMMITs, fills' database reads, feed polls and read mode leases
    (PostgreSQL), arrive in an order other than the one they were sent in. On every server a
    writer buys and restocks the same SKU while readers read it, for RUN_S (on a loaded machine
    until there is enough to judge). The coherent cache passes the checker and ends serving the
    database's state everywhere."""
    proxies: list[FaultProxy] = []
    async with AsyncExitStack() as stack:
        servers = []
        for _ in range(SERVERS):
            proxy, url = stack.enter_context(
                proxied(REDIS_URL if link == "redis" else database_url)
            )
            routes = {"redis_url": url} if link == "redis" else {"database_url": url}
            servers.append(await open_server(**routes))
            proxies.append(proxy)
        for n, proxy in enumerate(proxies):  # once started: a migration is many round trips
            proxy.delay(DELAY_MS, JITTER_MS, seed=n)
        history = History()
        await history.write("set", 0, servers[0], sku)
        started = time.monotonic()

        def running() -> bool:
            elapsed_s = time.monotonic() - started
            return elapsed_s < RUN_S or (elapsed_s < RUN_S_MAX and not history.enough())

        async def writer(n: int) -> None:
            rng = random.Random(n)
            while running():
                await history.write(rng.choice(["purchase", "restock"]), n, servers[n], sku)

        async def reader(n: int) -> None:
            while running():
                await history.read(n, servers[n], sku)

        tasks = [writer(n) for n in range(SERVERS)]
        tasks += [reader(n) for n in range(SERVERS) for _ in range(READERS_PER_SERVER)]
        await asyncio.gather(*tasks)
        await judge("coherent", history, servers, sku)
    reads, writes, overtaken = history.traffic()
    assert history.enough(), f"{reads} reads, {writes} writes, {overtaken} overtaken: too few"
