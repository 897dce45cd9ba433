"""A bounded storm of concurrent attempts, and the no-oversell verdict on its outcomes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx

from tests.distributed.cluster import Cluster

OK = "ok"
SHORT = "insufficient_stock"


async def storm(attempt: Callable[[int], Awaitable[str]], attempts: int, concurrency: int) -> Counter[str]:
    """Run attempt(0..attempts-1), at most `concurrency` at once; count their outcomes."""
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int) -> str:
        async with gate:
            return await attempt(n)

    return Counter(await asyncio.gather(*(one(n) for n in range(attempts))))


def oversell_verdict(outcomes: Counter[str], stock: int, attempts: int) -> list[str]:
    """Every way the outcomes break "exactly `stock` sales, every other attempt cleanly refused"."""
    problems = []
    if outcomes[OK] != stock:
        problems.append(f"{outcomes[OK]} sales of {stock} items")
    if outcomes[SHORT] != attempts - stock:
        problems.append(f"{outcomes[SHORT]} clean refusals, expected {attempts - stock}")
    others = {k: v for k, v in outcomes.items() if k not in (OK, SHORT)}
    if others:
        problems.append(f"other outcomes: {others}")
    return problems


def http_client(concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, timeout=60)


def http_purchase(client: httpx.AsyncClient, cluster: Cluster, sku: str) -> Callable[[int], Awaitable[str]]:
    """An attempt that buys one `sku` over HTTP, from the servers in turn."""
    headers = cluster.headers(cluster.clerk_token)

    async def attempt(n: int) -> str:
        url = cluster.urls[n % len(cluster.urls)]
        response = await client.post(f"{url}/v1/items/{sku}/purchase", json={"quantity": 1}, headers=headers)
        if response.status_code == 200:
            return OK
        return str(response.json().get("code", response.status_code))

    return attempt
