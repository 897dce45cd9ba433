"""Each process's snapshot of live tokens: revocations reach it within a second, unknown tokens
cost no query each, and the callers it knows keep working while the database is down."""

from __future__ import annotations

import asyncio
import inspect
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import httpx
import pytest

from stockkeeper import metrics
from stockkeeper.domain import Principal, Role, Unauthenticated, Unavailable
from stockkeeper.http.app import App
from stockkeeper.live_tokens import LiveTokens, RefreshLimits
from stockkeeper.service import Inventory
from stockkeeper.store import Store, open_store
from tests.conftest import WITH_PGBOUNCER

REVOKED_WITHIN_S = 1.0
FLOOD = 2_000
FLOOD_CONCURRENCY = 200
# Refreshes start at least 50 ms apart: at most 20 a second, each one or two queries.
REFRESHES_PER_S_MAX = 20


class WatchedStore:
    """A real store that counts the queries asked of it, and can play dead (raise Unavailable)
    or hang (never answer)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()
        self.down = False
        self.hanging = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        # token_key is read once and then kept by the store: no query, down or not.
        if name in ("token_key", "close") or not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if self.down:
                raise Unavailable("database down (test)")
            if self.hanging:
                await asyncio.Event().wait()
            return await attr(*args, **kwargs)

        return call

    def queries(self) -> int:
        return sum(self.calls.values())


@pytest.fixture
async def watched(database_url: str) -> AsyncIterator[tuple[Inventory, WatchedStore]]:
    """An Inventory over a watched store, as a server opens it (migrated, started)."""
    store = await open_store(database_url)
    await store.migrate()
    watch = WatchedStore(store)
    inventory = Inventory(cast(Store, watch))
    await inventory.start()
    try:
        yield inventory, watch
    finally:
        await inventory.close()


@pytest.fixture
async def elsewhere(database_url: str) -> AsyncIterator[Inventory]:
    """Another process on the same database: the CLI, or another server."""
    async with await Inventory.open(database_url) as other:
        yield other


async def refused_after_s(authenticate: Callable[[], Awaitable[Principal]]) -> float:
    """Seconds until `authenticate` is refused (polled every 10 ms), up to 5 s."""
    started = time.monotonic()
    while time.monotonic() - started < 5:
        try:
            await authenticate()
        except Unauthenticated:
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    pytest.fail("the revoked token was still accepted after 5 s")


@pytest.mark.parametrize("database_url", WITH_PGBOUNCER, indirect=True)
async def test_a_token_made_elsewhere_works_at_once_and_its_revocation_arrives_within_1_s(
    watched: tuple[Inventory, WatchedStore], elsewhere: Inventory
) -> None:
    ours, _ = watched
    await ours.authenticate(await elsewhere.create_token("first", Role.READER))  # loaded
    token = await elsewhere.create_token("till", Role.CLERK)
    # Not yet in our snapshot: the first request waits for one refresh instead of failing.
    assert await ours.authenticate(token) == Principal("till", Role.CLERK)
    (info,) = [t for t in await elsewhere.list_tokens() if t.name == "till"]
    await elsewhere.revoke_token(info.id)
    assert await refused_after_s(lambda: ours.authenticate(token)) < REVOKED_WITHIN_S


@pytest.mark.parametrize("database_url", WITH_PGBOUNCER, indirect=True)
async def test_a_token_revoked_through_this_inventory_is_refused_at_once(
    watched: tuple[Inventory, WatchedStore], elsewhere: Inventory
) -> None:
    ours, _ = watched
    token = await elsewhere.create_token("till", Role.CLERK)
    assert await ours.authenticate(token) == Principal("till", Role.CLERK)
    (info,) = await ours.list_tokens()
    revoked = await ours.revoke_token(info.id)
    assert revoked.id == info.id and revoked.revoked_at is not None
    with pytest.raises(Unauthenticated):
        await ours.authenticate(token)


async def test_a_flood_of_unknown_tokens_costs_a_few_queries_not_one_each(
    watched: tuple[Inventory, WatchedStore],
) -> None:
    inventory, watch = watched
    good = await inventory.create_token("shop", Role.CLERK)
    await inventory.set_stock("F-1", 3, user="t")
    transport = httpx.ASGITransport(app=App.for_inventory(inventory))
    gate = asyncio.Semaphore(FLOOD_CONCURRENCY)

    async with httpx.AsyncClient(transport=transport, base_url="http://stockkeeper") as http:

        async def get(token: str) -> int:
            async with gate:
                headers = {"Authorization": f"Bearer {token}"}
                return (await http.get("/v1/items/F-1", headers=headers)).status_code

        checks_before = metrics.TOKEN_SNAPSHOT_CHECKS._value.get()
        loads_before = metrics.TOKEN_SNAPSHOT_LOADS._value.get()
        watch.calls.clear()
        started = time.monotonic()
        randoms = [get(f"sk_{secrets.token_urlsafe(32)}") for _ in range(FLOOD)]
        statuses = await asyncio.gather(*randoms, get(good))
        elapsed_s = time.monotonic() - started

    assert statuses[:-1] == [401] * FLOOD and statuses[-1] == 200
    token_queries = watch.queries() - watch.calls["get_item"]
    refreshes_max = REFRESHES_PER_S_MAX * elapsed_s + 2
    assert token_queries <= refreshes_max, (watch.calls, elapsed_s)
    assert watch.calls["live_tokens"] <= 1, "nothing changed: the table is not read again"
    assert (
        metrics.TOKEN_SNAPSHOT_CHECKS._value.get() - checks_before
        == watch.calls["token_generation"]
    )
    assert metrics.TOKEN_SNAPSHOT_LOADS._value.get() - loads_before == watch.calls["live_tokens"]


async def test_known_tokens_keep_working_while_the_database_is_down(
    watched: tuple[Inventory, WatchedStore], elsewhere: Inventory
) -> None:
    ours, watch = watched
    used = await elsewhere.create_token("used", Role.CLERK)
    unused = await elsewhere.create_token("unused", Role.READER)
    own = await ours.create_token("own", Role.ADMIN)
    assert await ours.authenticate(used) == Principal("used", Role.CLERK)
    watch.down = True
    await asyncio.sleep(1.2)  # background refreshes fail meanwhile; the snapshot stays
    assert watch.calls["token_generation"] >= 2, "the background kept trying"
    # Never asked for before, yet known: it came with the snapshot.
    assert await ours.authenticate(unused) == Principal("unused", Role.READER)
    assert await ours.authenticate(used) == Principal("used", Role.CLERK)
    assert await ours.authenticate(own) == Principal("own", Role.ADMIN)
    with pytest.raises(Unavailable):  # an unknown token can only be settled by the database
        await ours.authenticate("sk_unknown")
    watch.down = False
    with pytest.raises(Unauthenticated):
        await ours.authenticate("sk_unknown")


async def test_a_token_made_by_this_inventory_needs_no_refresh(database_url: str) -> None:
    store = await open_store(database_url)
    await store.migrate()
    watch = WatchedStore(store)
    async with Inventory(cast(Store, watch)) as inventory:
        token = await inventory.create_token("own", Role.CLERK)
        watch.down = True
        assert await inventory.authenticate(token) == Principal("own", Role.CLERK)


async def test_first_admin_token_needs_no_refresh(database_url: str) -> None:
    store = await open_store(database_url)
    await store.migrate()
    watch = WatchedStore(store)
    async with Inventory(cast(Store, watch)) as inventory:
        first = await inventory.create_first_admin_token()
        assert first is not None
        watch.down = True
        assert await inventory.authenticate(first) == Principal("admin", Role.ADMIN)


async def test_a_hanging_database_delays_an_unknown_token_only_up_to_the_limit(
    database_url: str, elsewhere: Inventory
) -> None:
    known = await elsewhere.create_token("known", Role.READER)
    store = await open_store(database_url)
    watch = WatchedStore(store)
    limits = RefreshLimits(refresh_ms_max=200, unknown_wait_ms_max=300)
    tokens = LiveTokens(cast(Store, watch), limits)
    try:
        assert await tokens.find(known) == Principal("known", Role.READER)
        watch.hanging = True
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await tokens.find("sk_unknown")
        assert time.monotonic() - started < 0.3 + 0.1
        started = time.monotonic()
        assert await tokens.find(known) == Principal("known", Role.READER)
        assert time.monotonic() - started < 0.01, "a known token waits for nothing"
    finally:
        await tokens.close()
        await store.close()
