"""A bounded storm of concurrent attempts, and the no-oversell verdict on its outcomes.

Load goes through aiohttp: measured here, httpx's client pool topped out near 150 req/s at 32
connections, so it (not the servers) would have set the pace.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.distributed.cluster import Cluster

OK = "ok"
SHORT = "insufficient_stock"


async def storm(
    attempt: Callable[[int], Awaitable[str]], attempts: int, concurrency: int
) -> Counter[str]:
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


@dataclass
class Answer:
    status: int
    body: Any
    headers: Mapping[str, str]  # case-insensitive, as HTTP headers are


class Client:
    """A small JSON client over one aiohttp session, bounded to `concurrency` connections."""

    def __init__(self, concurrency: int) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=60),
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    async def call(
        self,
        method: str,
        url: str,
        token: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
        async with self._session.request(
            method, url, json=json, params=params, headers=all_headers
        ) as response:
            body = await response.json(content_type=None)
            return Answer(response.status, body, response.headers.copy())

    async def text(self, url: str) -> str:
        async with self._session.get(url) as response:
            return await response.text()


def http_purchase(client: Client, cluster: Cluster, sku: str) -> Callable[[int], Awaitable[str]]:
    """An attempt that buys one `sku` over HTTP, from the servers in turn."""

    async def attempt(n: int) -> str:
        url = cluster.urls[n % len(cluster.urls)]
        answer = await client.call(
            "POST", f"{url}/v1/items/{sku}/purchase", cluster.clerk_token, json={"quantity": 1}
        )
        return OK if answer.status == 200 else str(answer.body.get("code", answer.status))

    return attempt
