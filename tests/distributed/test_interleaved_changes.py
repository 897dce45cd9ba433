"""Issue 17's catalogue across real `stockkeeper serve` processes (the module's 4 servers on one
PostgreSQL and one private Redis): purchases and restocks of one SKU interleaved over every
server, with every server read throughout. Each run is recorded as `Op`s on the wall clock the
audit's `at` is stamped with, and judged by `stockkeeper.verify.history.check`.

The same seeded load runs from two clients: one that sends each change as a delta (purchase,
restock: one conditional statement in the database), which must hold, and a naive
read-modify-write client (GET on_hand, then PUT on_hand + delta), which must lose updates.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from stockkeeper.verify.history import AuditEntry, Op, check
from tests.cache.naive import expect
from tests.distributed.checks import assert_every_server_sees, full_audit
from tests.distributed.cluster import Cluster
from tests.distributed.storm import OK, SHORT, Answer, Client, storm

pytestmark = pytest.mark.distributed

CHANGES = 300
CONCURRENCY = 16
INITIAL_ON_HAND = 10  # low enough that some purchases find too little and are refused
QUANTITY_MAX = 5
READ_PAUSE_S = 0.005  # between one watcher's reads of its server
VISIBLE_S_MAX = 0.1  # G2; the watchers read on past it after the last change
SEED = 17


@dataclass
class Recording:
    """Every request on one SKU as its client saw it, timed on the wall clock (the audit's `at`
    is the database's, on this host), with the deltas of the acknowledged changes."""

    client: Client
    cluster: Cluster
    sku: str
    ops: list[Op] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)

    async def call(
        self,
        kind: str,
        server: int,
        method: str,
        token: str,
        path: str = "",
        json: Any = None,
        delta: int | None = None,
    ) -> Answer:
        """`kind` is "read" or the write's kind; `delta` the change the caller meant, which
        `check` compares with the audit entry of the acknowledged version."""
        url = f"{self.cluster.urls[server]}/v1/items/{self.sku}{path}"
        started_s = time.time()
        answer = await self.client.call(method, url, token, json=json)
        ok = answer.status in (200, 201)
        body = answer.body if ok else {}
        outcome = "ok" if ok else "refused" if answer.status < 500 else "indeterminate"
        state = (body.get("version"), body.get("on_hand"))
        self.ops.append(Op(kind, self.sku, server, started_s, time.time(), *state, outcome, delta))
        return answer

    def outcome(self, answer: Answer, delta: int) -> str:
        """A change's outcome for the storm; an acknowledged one's delta is kept."""
        if answer.status != 200:
            return str(answer.body.get("code", answer.status))
        self.acknowledged.append(delta)
        return OK

    async def read(self, server: int) -> Answer:
        return await self.call("read", server, "GET", self.cluster.clerk_token)

    async def watch(self, server: int, stop: asyncio.Event) -> None:
        """Read `server` over and over until `stop`."""
        while not stop.is_set():
            await self.read(server)
            await asyncio.sleep(READ_PAUSE_S)


Change = Callable[[Recording, int, int], Awaitable[str]]


async def by_delta(rec: Recording, server: int, delta: int) -> str:
    """The product's way: a purchase or a restock, applied to whatever is on hand."""
    kind, token = ("restock", rec.cluster.admin_token)
    if delta < 0:
        kind, token = ("purchase", rec.cluster.clerk_token)
    json = {"quantity": abs(delta)}
    answer = await rec.call(kind, server, "POST", token, f"/{kind}", json, delta)
    return rec.outcome(answer, delta)


async def read_modify_write(rec: Recording, server: int, delta: int) -> str:
    """The naive way: read on_hand, then set it to what was read plus the delta. A change that
    commits between the two is overwritten: lost, though every request was answered 200."""
    read = await rec.read(server)
    on_hand = read.body["on_hand"] + delta
    if on_hand < 0:
        return SHORT
    json = {"on_hand": on_hand}
    answer = await rec.call("set", server, "PUT", rec.cluster.admin_token, "", json, delta)
    return rec.outcome(answer, delta)


CLIENTS: dict[str, Change] = {"coherent": by_delta, "naive": read_modify_write}


def audit_entries(entries: list[dict[str, Any]]) -> list[AuditEntry]:
    """With their commit times, so that `check` judges staleness against every commit too."""
    return [
        AuditEntry(
            e["sku"],
            e["version"],
            e["delta"],
            e["on_hand"],
            e["idempotency_key"],
            datetime.fromisoformat(e["at"]).timestamp(),
        )
        for e in entries
    ]


@pytest.mark.parametrize("kind", ["coherent", "naive"])
async def test_purchases_and_restocks_interleaved_over_servers_replay_exactly(
    cluster: Cluster, kind: str
) -> None:
    """CHANGES seeded deltas (±1..5) on one SKU, CONCURRENCY at a time, each to the next server,
    while a watcher per server reads it. The audit must replay: versions 1..n without a gap,
    each on_hand the previous plus its delta, never negative, one entry per acknowledged change
    and nothing else; every answer a state of the audit, no read going back or staler than
    100 ms after a commit; every server serves the final state. And the final on_hand must be
    the initial one plus the acknowledged deltas.

    By delta, each change is one conditional statement in the database: nothing in between. The
    naive client's GET and PUT are two requests, and with CONCURRENCY in flight others commit
    between them: each such PUT writes a total that ignores them. The server records every PUT
    faithfully (the audit still replays), but the entry of such a PUT is not the change its
    client was told it made (`check`: ack_missing, nearly every PUT here), and the final on_hand
    misses what was overwritten. That sum alone may nearly cancel (deltas of either sign, stock
    kept near zero: +1 in one of ten runs); the per-change rule breaks every time."""
    sku, rng = f"MIX-{kind}", random.Random(SEED)
    deltas = [rng.choice((-1, 1)) * rng.randint(1, QUANTITY_MAX) for _ in range(CHANGES)]
    change = CLIENTS[kind]
    servers = range(len(cluster.urls))
    async with Client(CONCURRENCY + len(servers)) as client:
        rec = Recording(client, cluster, sku)
        json = {"on_hand": INITIAL_ON_HAND}
        first = await rec.call("set", 0, "PUT", cluster.admin_token, json=json)
        assert first.status == 201, first.body
        stop = asyncio.Event()
        watchers = [asyncio.create_task(rec.watch(server, stop)) for server in servers]

        async def attempt(n: int) -> str:
            return await change(rec, n % len(servers), deltas[n])

        started_s = time.monotonic()
        outcomes = await storm(attempt, CHANGES, CONCURRENCY)
        took_s = time.monotonic() - started_s
        await asyncio.sleep(2 * VISIBLE_S_MAX)
        stop.set()
        await asyncio.gather(*watchers)
        entries = await full_audit(client, cluster, sku)
        final = entries[-1]
        await assert_every_server_sees(client, cluster, sku, final["on_hand"], final["version"])
    reads = sum(op.kind == "read" for op in rec.ops)
    print(f"\n{kind}: {dict(outcomes)} in {took_s:.2f} s, {reads} reads; final {final}")
    assert set(outcomes) <= {OK, SHORT}, outcomes
    assert len(entries) == 1 + len(rec.acknowledged)
    verdict = check(rec.ops, audit_entries(entries), complete_writers=True)
    lost = final["on_hand"] - (INITIAL_ON_HAND + sum(rec.acknowledged))
    print(f"{kind}: on_hand {lost:+d} against the acknowledged deltas; {verdict}")
    expect(kind, verdict.ok and lost == 0)
