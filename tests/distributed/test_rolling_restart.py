"""A rolling restart behind a load balancer fails no request: a real HAProxy running the shipped
deploy/haproxy.cfg (health checks on /readyz, `retries 0`) in front of 4 `stockkeeper serve`
processes with their default settings, on one PostgreSQL schema and a private Redis. Mixed
load runs through it on keep-alive connections while each server in turn gets SIGTERM (to its
main process, as the shipped systemd unit sends it), exits, and is started again on its port.

Every answer must be a success or a clean 409, with no connection error, and every answer is
judged against the audit log (stockkeeper.verify.history). Before the drain, each server
stopped accepting at SIGTERM, before HAProxy's next check: its requests got HAProxy's 503."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stockkeeper.bench.cluster import TOKEN, Server, create_token, stop_all
from stockkeeper.bench.oversell import read_audit
from stockkeeper.verify.history import AuditEntry, Op, check
from tests.distributed.cluster import fresh_schema
from tests.distributed.haproxy import HAProxy, running_haproxy
from tests.distributed.redis_server import running_redis
from tests.processes import free_port

pytestmark = pytest.mark.distributed

SERVERS = 4
CLIENTS = 16
SKUS = [f"R-{n}" for n in range(8)]
INITIAL_STOCK = 1_000
UP_S_MAX = 30.0  # after its start: HAProxy's `rise 2` checks, 1 s apart
EXIT_S_MAX = 20.0  # the unit's TimeoutStopSec
SETTLE_S = 1.0  # load before the first restart and after the last
OK_STATUSES = (200, 201, 409)


@dataclass
class History:
    """What the clients saw: each answer as an operation for the checker, and every failure."""

    ops: list[Op] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    requests: int = 0


class LoadClient:
    """One client of a mix of reads, purchases (half of them keyed), restocks and orders,
    through the load balancer on keep-alive connections, recording everything it sees."""

    def __init__(self, session: aiohttp.ClientSession, url: str, clerk: str, admin: str) -> None:
        self._session = session
        self._url = url
        self._clerk = {"Authorization": f"Bearer {clerk}"}
        self._admin = {"Authorization": f"Bearer {admin}"}
        self._rng = random.Random()
        self._keys = 0

    async def run(self, history: History, stop: asyncio.Event) -> None:
        while not stop.is_set():
            roll, sku = self._rng.random(), self._rng.choice(SKUS)
            if roll < 0.6:
                await self._call(history, "read", [sku], "GET", f"/v1/items/{sku}")
            elif roll < 0.85:
                quantity = self._rng.randint(1, 3)
                body = {"quantity": quantity}
                await self._call(
                    history, "purchase", [sku], "POST", f"/v1/items/{sku}/purchase", body,
                    key=self._key(), deltas=[-quantity],
                )  # fmt: skip
            elif roll < 0.95:
                quantity = self._rng.randint(1, 5)
                await self._call(
                    history, "restock", [sku], "POST", f"/v1/items/{sku}/restock",
                    {"quantity": quantity}, deltas=[quantity], admin=True,
                )  # fmt: skip
            else:
                skus = self._rng.sample(SKUS, 2)
                lines = [{"sku": line, "quantity": 1} for line in skus]
                await self._call(
                    history, "order", skus, "POST", "/v1/orders", {"lines": lines},
                    key=self._key(), deltas=[-1, -1],
                )  # fmt: skip

    async def set_stock(self, history: History, sku: str, on_hand: int) -> None:
        body = {"on_hand": on_hand}
        await self._call(history, "set", [sku], "PUT", f"/v1/items/{sku}", body, admin=True)

    def _key(self) -> str | None:
        self._keys += 1
        return f"roll-{id(self)}-{self._keys}" if self._rng.random() < 0.5 else None

    async def _call(
        self,
        history: History,
        kind: str,
        skus: list[str],
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        deltas: list[int] | None = None,
        admin: bool = False,
    ) -> None:
        headers = dict(self._admin if admin else self._clerk)
        if key is not None:
            headers["Idempotency-Key"] = key
        started = time.monotonic()
        history.requests += 1
        try:
            async with self._session.request(
                method, self._url + path, json=body, headers=headers
            ) as response:
                status, raw = response.status, await response.read()
            answer = json.loads(raw)
        except ValueError:  # not JSON: the load balancer's own error page
            answer = raw.decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as error:
            history.failures[type(error).__name__] += 1
            status, answer = 0, None
        ended = time.monotonic()
        if status not in OK_STATUSES:
            if status:
                history.failures[f"{status} {answer}"[:100]] += 1
            outcome, states = "indeterminate", [None] * len(skus)
        elif status == 409:
            outcome, states = "refused", [None] * len(skus)
        else:
            outcome, states = "ok", answer["lines"] if kind == "order" else [answer]
        for n, (sku, state) in enumerate(zip(skus, states, strict=True)):
            history.ops.append(
                Op(
                    kind, sku, 0, started, ended,
                    None if state is None else state["version"],
                    None if state is None else state["on_hand"],
                    outcome,
                    None if deltas is None else deltas[n],
                    key,
                )
            )  # fmt: skip


async def restart_each(
    specs: list[Server], processes: list[subprocess.Popen[bytes]], balancer: HAProxy
) -> list[float]:
    """SIGTERM each server's main process in turn, wait for its exit (status 0), start it
    again on its port and wait until the balancer sees it UP; how long each was out."""
    out_s = []
    for n, spec in enumerate(specs):
        started = time.monotonic()
        processes[n].send_signal(signal.SIGTERM)
        status = await asyncio.to_thread(processes[n].wait, EXIT_S_MAX)
        assert status == 0, f"server {n} exited with {status}"
        processes[n] = await asyncio.to_thread(spec.start)
        deadline = time.monotonic() + UP_S_MAX
        while balancer.states()[f"sk{n + 1}"] != "UP":
            assert time.monotonic() < deadline, balancer.log()
            await asyncio.sleep(0.05)
        out_s.append(time.monotonic() - started)
    return out_s


async def rolling_restart(
    balancer: HAProxy,
    specs: list[Server],
    processes: list[subprocess.Popen[bytes]],
    admin: str,
    clerk: str,
) -> tuple[History, list[AuditEntry], list[float]]:
    connector = aiohttp.TCPConnector(limit=CLIENTS)  # keep-alive: aiohttp's default
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        history = History()
        clients = [LoadClient(session, balancer.url, clerk, admin) for _ in range(CLIENTS)]
        for sku in SKUS:
            await clients[0].set_stock(history, sku, INITIAL_STOCK)
        assert not history.failures, history.failures
        stop_load = asyncio.Event()
        running = [asyncio.create_task(client.run(history, stop_load)) for client in clients]
        try:
            await asyncio.sleep(SETTLE_S)
            out_s = await restart_each(specs, processes, balancer)
            await asyncio.sleep(SETTLE_S)
        finally:
            stop_load.set()
            await asyncio.gather(*running)
        entries = [
            AuditEntry(sku, e["version"], e["delta"], e["on_hand"], e["idempotency_key"])
            for sku in SKUS
            for e in await read_audit(session, balancer.url, admin, sku)
        ]
    return history, entries, out_s


def test_a_rolling_restart_under_load_fails_no_request(tmp_path: Path) -> None:
    with fresh_schema() as database_url, running_redis() as redis:
        specs = [
            Server(free_port(), database_url, redis.url, tmp_path / f"server-{n}")
            for n in range(SERVERS)
        ]
        processes: list[subprocess.Popen[bytes]] = []
        try:
            for spec in specs:
                processes.append(spec.start())
            (admin,) = TOKEN.findall(specs[0].out.read_text())
            clerk = create_token(database_url, "shop", "clerk")
            with running_haproxy(tmp_path / "haproxy", [spec.port for spec in specs]) as lb:
                history, entries, out_s = asyncio.run(
                    rolling_restart(lb, specs, processes, admin, clerk)
                )
        finally:
            stop_all(processes, group=True)
    verdict = check(history.ops, entries, complete_writers=True)
    wrong = sum(verdict.counts.values())
    print(
        f"rolling restart of {SERVERS} servers: {history.requests} requests, "
        f"{sum(history.failures.values())} failed, {wrong} wrong answers; "
        f"each server out {min(out_s):.1f}-{max(out_s):.1f} s"
    )
    assert not history.failures, history.failures.most_common(10)
    assert verdict.ok, verdict
    assert history.requests > 1_000, "too little load to show anything"
