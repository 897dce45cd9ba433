"""HTTP contract (API.md): the happy paths, once per backend (SQLite, PostgreSQL).

The helpers at the top (`Call`, `send`, `snapshot`, `assert_problem`, …) are shared with
test_errors.py, so both files speak the same small request language.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stockkeeper.domain import Role
from stockkeeper.http.app import App
from stockkeeper.service import Inventory
from tests.conftest import Api

ADMIN, CLERK, READER = Role.ADMIN, Role.CLERK, Role.READER
AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
CHANGE_FIELDS = {
    "sku",
    "delta",
    "on_hand",
    "version",
    "audit_id",
    "held_delta",
    "held",
    "available",
}
AUDIT_FIELDS = {
    *("id", "sku", "version", "delta", "on_hand", "held_delta", "held", "hold_id", "user"),
    *("on_behalf_of", "reason", "idempotency_key", "at"),
}


def item_json(sku: str, on_hand: int, version: int, held: int = 0) -> dict[str, object]:
    """An item as the API answers it (held and available came with holds)."""
    return {
        "sku": sku,
        "on_hand": on_hand,
        "held": held,
        "available": on_hand - held,
        "version": version,
    }


BODY_BYTES_MAX = 64 * 1024
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"


# --- helpers shared with test_errors.py ---------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One HTTP request, described as data so tests can be parametrize tables.

    `auth` is a Role (that role's token), None (no Authorization header), or a raw
    Authorization value where `{admin}` stands for the admin token.
    """

    method: str
    path: str
    auth: Role | str | None = ADMIN
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str | bytes] = field(default_factory=dict)
    stream: bool = False


def _key(key: str | bytes | None) -> dict[str, str | bytes]:
    return {} if key is None else {"Idempotency-Key": key}


def get(path: str, auth: Role | str | None = READER) -> Call:
    return Call("GET", path, auth)


def put(sku: str, on_hand: Any, auth: Role | str | None = ADMIN, **body: Any) -> Call:
    return Call("PUT", f"/v1/items/{sku}", auth, {"on_hand": on_hand, **body})


def purchase(
    sku: str, quantity: Any = 1, *, auth: Role | str | None = CLERK, key: Any = None, **body: Any
) -> Call:
    json = {"quantity": quantity, **body}
    return Call("POST", f"/v1/items/{sku}/purchase", auth, json, headers=_key(key))


def restock(
    sku: str, quantity: Any = 1, *, auth: Role | str | None = ADMIN, key: Any = None, **body: Any
) -> Call:
    json = {"quantity": quantity, **body}
    return Call("POST", f"/v1/items/{sku}/restock", auth, json, headers=_key(key))


def order(
    *lines: tuple[str, Any], auth: Role | str | None = CLERK, key: Any = None, **body: Any
) -> Call:
    json = {"lines": [{"sku": sku, "quantity": q} for sku, q in lines], **body}
    return Call("POST", "/v1/orders", auth, json, headers=_key(key))


def authorization(api: Api, auth: Role | str | None) -> dict[str, str]:
    if auth is None:
        return {}
    if isinstance(auth, Role):
        return api.auth(auth)
    if "{admin}" in auth:
        auth = auth.replace("{admin}", api.tokens[ADMIN])
    return {"Authorization": auth}


async def _chunks(content: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for start in range(0, len(content), size):
        yield content[start : start + size]


async def send(api: Api, call: Call) -> httpx.Response:
    headers: dict[str, Any] = {**authorization(api, call.auth), **call.headers}
    body: dict[str, Any] = {}
    if call.content is not None:
        body["content"] = _chunks(call.content) if call.stream else call.content
    elif call.json is not None:
        body["json"] = call.json
    return await api.http.request(call.method, call.path, headers=headers, **body)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0].strip() == "application/json"
    return response.json()


async def audit_page(api: Api, sku: str, **params: int) -> dict[str, Any]:
    response = await api.http.get(f"/v1/items/{sku}/audit", params=params, headers=api.auth(ADMIN))
    return ok(response)


async def entries(api: Api, sku: str) -> list[dict[str, Any]]:
    return (await audit_page(api, sku, limit=1000))["entries"]


async def snapshot(api: Api, *skus: str) -> dict[str, Any]:
    """Everything a failed request must leave alone: each item (or its 404) and its audit log."""
    state: dict[str, Any] = {}
    for sku in skus:
        item = await api.http.get(f"/v1/items/{sku}", headers=api.auth(ADMIN))
        log = await api.http.get(
            f"/v1/items/{sku}/audit", params={"limit": 1000}, headers=api.auth(ADMIN)
        )
        state[sku] = (item.status_code, item.json(), log.status_code, log.json())
    return state


def assert_problem(response: httpx.Response, status: int, code: str, **extra: Any) -> Any:
    """An RFC 9457 problem of API.md: status, code, the standard fields, and the documented
    extra fields of its code (plus the exact values in `extra`)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0].strip() == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    for name in ("type", "title", "detail"):
        assert isinstance(body[name], str) and body[name].strip(), name
    if status == 401:
        assert response.headers["www-authenticate"].lower().startswith("bearer")
    if code == "unknown_sku":
        assert isinstance(body["sku"], str)
    if code == "insufficient_stock":
        shortage = {name: body[name] for name in ("sku", "requested", "available")}
        assert isinstance(shortage["requested"], int) and isinstance(shortage["available"], int)
        assert shortage["requested"] > shortage["available"] >= 0
        if "shortages" in body:
            assert shortage in body["shortages"]
    if code == "invalid_request":
        assert body["errors"], "an invalid request names at least one field"
        for error in body["errors"]:
            assert set(error) == {"field", "message"}
            assert isinstance(error["field"], str) and error["field"]
            assert isinstance(error["message"], str) and error["message"]
    for name, value in extra.items():
        assert body[name] == value, name
    return body


def assert_replay(response: httpx.Response, original: httpx.Response) -> None:
    assert response.status_code == original.status_code == 200
    assert response.content == original.content
    assert response.headers["idempotent-replayed"] == "true"


def assert_applied(response: httpx.Response) -> None:
    """A success that did the work now (not a replay of an earlier answer)."""
    assert response.is_success, response.text
    assert response.headers.get("idempotent-replayed") != "true"


def client(app: App) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sk")


async def readyz_with_cache(database_url: str, cache_url: str) -> httpx.Response:
    """GET /readyz from a started app (lifespan and all) whose cache is at `cache_url`."""

    async def open_inventory() -> Inventory:
        return await Inventory.open(database_url, cache_url=cache_url)

    app = App(open_inventory)
    await app.startup()
    try:
        async with client(app) as http:
            return await http.get("/readyz")
    finally:
        await app.shutdown()


async def seed(api: Api, stock: dict[str, int]) -> None:
    for sku, on_hand in stock.items():
        ok(await send(api, put(sku, on_hand)), 201)


# --- items: PUT and GET -------------------------------------------------------------------------


async def test_put_creates_then_sets(api: Api) -> None:
    previous: int | None = None
    for version, on_hand in enumerate([7, 3, 3, 0, 12], start=1):
        response = await send(api, put("A-1", on_hand))
        change = ok(response, 201 if previous is None else 200)
        assert (change["sku"], change["on_hand"], change["version"]) == ("A-1", on_hand, version)
        entry = (await entries(api, "A-1"))[-1]
        assert entry["version"] == version
        assert entry["delta"] == on_hand - (previous or 0)
        assert (entry["on_hand"], entry["reason"], entry["user"]) == (on_hand, "set", "admin")
        assert (entry["on_behalf_of"], entry["idempotency_key"]) == (None, None)
        previous = on_hand


@pytest.mark.parametrize("role", list(Role), ids=lambda role: role.name.lower())
async def test_get_item(api: Api, role: Role) -> None:
    await seed(api, {"A-1": 4})
    ok(await send(api, purchase("A-1", 1)))
    response = await send(api, get("/v1/items/A-1", role))
    assert ok(response) == item_json("A-1", 3, 2)
    assert response.headers["etag"] == '"2"'
    assert response.headers["x-cache"] in ("hit", "miss")


@pytest.mark.parametrize("min_version", [1, 2, 3])
async def test_get_item_min_version(api: Api, min_version: int) -> None:
    await seed(api, {"A-1": 4})
    ok(await send(api, restock("A-1", 1)))
    ok(await send(api, restock("A-1", 1)))
    response = await send(api, get(f"/v1/items/A-1?min_version={min_version}"))
    item = ok(response)
    assert item == item_json("A-1", 6, 3)
    assert item["version"] >= min_version
    assert response.headers["etag"] == f'"{item["version"]}"'


async def test_an_unknown_query_parameter_is_ignored(api: Api) -> None:
    """README, "Where this differs": a cache-busting `?_=…` does not break a read."""
    await seed(api, {"A-1": 4})
    response = await send(api, get("/v1/items/A-1?_=1733140000&min_version=1"))
    assert ok(response) == item_json("A-1", 4, 1)


async def test_get_items_in_the_requests_order_with_the_unknown(api: Api) -> None:
    await seed(api, {"A-1": 4, "B-2": 0, "C-3": 7})
    ok(await send(api, purchase("A-1", 1)))
    response = await send(api, get("/v1/items?sku=C-3&sku=NOPE&sku=A-1&sku=B-2"))
    assert ok(response) == {
        "items": [
            item_json("C-3", 7, 1),
            item_json("A-1", 3, 2),
            item_json("B-2", 0, 1),
        ],
        "unknown": ["NOPE"],
    }
    assert response.headers["x-cache"] == "miss"  # NOPE needed a database read


async def test_get_items_is_a_hit_once_every_item_is_cached(api: Api) -> None:
    """On the embedded cache (SQLite) the second batch needs no database read."""
    await seed(api, {"A-1": 4, "B-2": 5})
    ok(await send(api, get("/v1/items?sku=A-1&sku=B-2")))
    again = await send(api, get("/v1/items?sku=B-2&sku=A-1"))
    assert [item["sku"] for item in ok(again)["items"]] == ["B-2", "A-1"]
    caches = api.http._transport.app.inventory.cache  # type: ignore[attr-defined]
    from stockkeeper.cache.memory import ProvenMemoryCache

    assert again.headers["x-cache"] == ("hit" if isinstance(caches, ProvenMemoryCache) else "miss")


async def test_get_items_takes_100_skus(api: Api) -> None:
    await seed(api, {"A-1": 1})
    query = "&".join(f"sku=X-{n}" for n in range(99))
    body = ok(await send(api, get(f"/v1/items?sku=A-1&{query}")))
    assert len(body["items"]) == 1 and len(body["unknown"]) == 99


# --- single-SKU changes, orders, audit ----------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "delta", "reason", "on_behalf_of"),
    [
        pytest.param(purchase("A-1", 2), -2, "purchase", None, id="purchase-clerk"),
        pytest.param(
            purchase("A-1", 5, auth=ADMIN, on_behalf_of="shopper-42"),
            *(-5, "purchase", "shopper-42"),
            id="purchase-admin-all-on-behalf",
        ),
        pytest.param(restock("A-1", 4), 4, "restock", None, id="restock"),
        pytest.param(restock("A-1", 1_000_000), 1_000_000, "restock", None, id="restock-max"),
    ],
)
async def test_single_sku_change(
    api: Api, call: Call, delta: int, reason: str, on_behalf_of: str | None
) -> None:
    await seed(api, {"A-1": 5})
    change = ok(await send(api, call))
    assert set(change) == CHANGE_FIELDS
    assert change == {
        "sku": "A-1",
        "delta": delta,
        "on_hand": 5 + delta,
        "version": 2,
        "audit_id": change["audit_id"],
        "held_delta": 0,
        "held": 0,
        "available": 5 + delta,
    }
    entry = (await entries(api, "A-1"))[-1]
    assert entry["id"] == change["audit_id"]
    assert (entry["version"], entry["delta"], entry["on_hand"]) == (2, delta, 5 + delta)
    assert (entry["reason"], entry["on_behalf_of"]) == (reason, on_behalf_of)
    assert isinstance(call.auth, Role) and entry["user"] == call.auth.name.lower()
    assert ok(await send(api, get("/v1/items/A-1"))) == item_json("A-1", 5 + delta, 2)


async def test_order_success_lines_in_request_order(api: Api) -> None:
    await seed(api, {"A-1": 5, "B-2": 3, "C-3": 10})
    call = order(("C-3", 2), ("A-1", 5), ("B-2", 1), on_behalf_of="shopper-7", key="order-1")
    lines = ok(await send(api, call))["lines"]
    assert [(line["sku"], line["delta"], line["on_hand"], line["version"]) for line in lines] == [
        ("C-3", -2, 8, 2),
        ("A-1", -5, 0, 2),
        ("B-2", -1, 2, 2),
    ]
    assert all(set(line) == CHANGE_FIELDS for line in lines)
    assert len({line["audit_id"] for line in lines}) == 3
    for line in lines:
        entry = (await entries(api, line["sku"]))[-1]
        assert entry["id"] == line["audit_id"]
        assert (entry["reason"], entry["user"], entry["on_behalf_of"]) == (
            "order",
            "clerk",
            "shopper-7",
        )
        assert entry["idempotency_key"] == "order-1"
        item = ok(await send(api, get(f"/v1/items/{line['sku']}")))
        assert (item["on_hand"], item["version"]) == (line["on_hand"], line["version"])


async def test_order_of_100_lines(api: Api, inventory: Inventory) -> None:
    skus = [f"L-{i:03}" for i in range(100)]
    for sku in skus:
        await inventory.set_stock(sku, 1, user="setup")
    lines = ok(await send(api, order(*((sku, 1) for sku in reversed(skus)))))["lines"]
    assert [line["sku"] for line in lines] == list(reversed(skus))
    assert all(line["on_hand"] == 0 and line["version"] == 2 for line in lines)


async def test_audit_entry_has_every_field(api: Api) -> None:
    await seed(api, {"A-1": 5})
    call = purchase("A-1", 2, key="key-1", on_behalf_of="shopper-42")
    change = ok(await send(api, call))
    first, second = await entries(api, "A-1")
    for entry in (first, second):
        assert set(entry) == AUDIT_FIELDS
        assert AT.fullmatch(entry["at"]), entry["at"]
        at = datetime.strptime(entry["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs(datetime.now(UTC) - at) < timedelta(minutes=5)
    assert first["id"] < second["id"]
    assert {k: v for k, v in second.items() if k != "at"} == {
        "id": change["audit_id"],
        "sku": "A-1",
        "version": 2,
        "delta": -2,
        "on_hand": 3,
        "held_delta": 0,
        "held": 0,
        "hold_id": None,
        "user": "clerk",
        "on_behalf_of": "shopper-42",
        "reason": "purchase",
        "idempotency_key": "key-1",
    }


@pytest.mark.parametrize(
    ("changes", "limit"), [(7, 3), (6, 3), (1, 1), (2, 1), (5, 1000), (101, None)]
)
async def test_audit_paging(
    api: Api, inventory: Inventory, changes: int, limit: int | None
) -> None:
    await seed(api, {"A-1": 0})
    for _ in range(changes - 1):
        await inventory.increment_stock("A-1", 1, user="setup")
    params = {} if limit is None else {"limit": limit}
    page_size = limit or 100
    versions: list[int] = []
    after = 0
    for page_number in range(1, math.ceil(changes / page_size) + 1):
        page = await audit_page(api, "A-1", after_version=after, **params)
        assert set(page) == {"entries", "next_after_version"}
        page_versions = [entry["version"] for entry in page["entries"]]
        assert page_versions == list(range(after + 1, min(after + page_size, changes) + 1))
        versions += page_versions
        if page_number * page_size < changes:
            assert page["next_after_version"] == page_versions[-1]
            after = page["next_after_version"]
        else:
            assert page["next_after_version"] is None
    assert versions == list(range(1, changes + 1))


async def test_versions_gap_free_and_deltas_replay_to_on_hand(api: Api) -> None:
    await seed(api, {"B-2": 5})
    calls = [
        put("A-1", 10),
        purchase("A-1", 3),
        restock("A-1", 5),
        order(("B-2", 1), ("A-1", 2)),
        put("A-1", 4),
        purchase("A-1", 4, on_behalf_of="shopper-1"),
        restock("A-1", 1),
        put("A-1", 1),
    ]
    for call in calls:
        assert (await send(api, call)).is_success
    log = await entries(api, "A-1")
    assert [entry["version"] for entry in log] == list(range(1, len(calls) + 1))
    on_hand = 0
    for entry in log:
        on_hand += entry["delta"]
        assert entry["on_hand"] == on_hand, entry
    assert [entry["reason"] for entry in log] == [
        *("set", "purchase", "restock", "order"),
        *("set", "purchase", "restock", "set"),
    ]
    item = ok(await send(api, get("/v1/items/A-1")))
    assert (item["on_hand"], item["version"]) == (on_hand, len(calls)) == (1, 8)


# --- idempotency --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(purchase("A-1", 2, key="K-1", on_behalf_of="shopper-1"), id="purchase"),
        pytest.param(restock("A-1", 3, key="K-1"), id="restock"),
        pytest.param(order(("A-1", 1), ("B-2", 1), key="K-1"), id="order"),
    ],
)
async def test_idempotent_replay(api: Api, call: Call) -> None:
    await seed(api, {"A-1": 5, "B-2": 5})
    first = await send(api, call)
    assert_applied(first)
    ok(await send(api, purchase("A-1", 1)))  # the state moves on; the replay must not
    before = await snapshot(api, "A-1", "B-2")
    for _ in range(2):
        assert_replay(await send(api, call), first)
    assert await snapshot(api, "A-1", "B-2") == before


@pytest.mark.parametrize("other", ["admin", "clerk-2"])
async def test_idempotency_key_is_per_principal(api: Api, inventory: Inventory, other: str) -> None:
    await seed(api, {"A-1": 5})
    token = api.tokens[ADMIN] if other == "admin" else await inventory.create_token(other, CLERK)
    first = await send(api, purchase("A-1", 1, key="shared"))
    second = await send(api, purchase("A-1", 1, key="shared", auth=f"Bearer {token}"))
    assert ok(second)["version"] == ok(first)["version"] + 1 == 3
    assert_applied(second)
    third = await send(api, purchase("A-1", 2, key="shared", auth=f"Bearer {token}"))
    assert_problem(third, 422, "idempotency_key_reused")
    assert_replay(await send(api, purchase("A-1", 1, key="shared")), first)
    assert [entry["user"] for entry in await entries(api, "A-1")] == ["admin", "clerk", other]
    assert ok(await send(api, get("/v1/items/A-1")))["on_hand"] == 3


async def test_failed_request_does_not_keep_its_key(api: Api) -> None:
    await seed(api, {"A-1": 5})
    call = purchase("A-1", 8, key="retry-me")
    before = await snapshot(api, "A-1")
    assert_problem(await send(api, call), 409, "insufficient_stock", requested=8, available=5)
    assert await snapshot(api, "A-1") == before
    ok(await send(api, restock("A-1", 5)))
    retried = await send(api, call)
    change = ok(retried)
    assert (change["delta"], change["on_hand"], change["version"]) == (-8, 2, 3)
    assert_applied(retried)
    assert_replay(await send(api, call), retried)


# --- concurrency -------------------------------------------------------------------------------


async def test_concurrent_writes_never_oversell(api: Api) -> None:
    """Purchases and orders (in both SKU orders) race for 5 units of A-1: exactly 5 win."""
    await seed(api, {"A-1": 5, "B-2": 50})
    calls = [purchase("A-1", 1) for _ in range(10)]
    calls += [order(("A-1", 1), ("B-2", 1)), order(("B-2", 1), ("A-1", 1))] * 5
    responses = await asyncio.gather(*(send(api, call) for call in calls))
    assert sorted(response.status_code for response in responses) == [200] * 5 + [409] * 15
    orders_won = sum(
        1
        for call, r in zip(calls, responses, strict=True)
        if r.is_success and "orders" in call.path
    )
    for sku, on_hand, version in (("A-1", 0, 6), ("B-2", 50 - orders_won, 1 + orders_won)):
        assert ok(await send(api, get(f"/v1/items/{sku}"))) == item_json(sku, on_hand, version)
        log = await entries(api, sku)
        assert [entry["version"] for entry in log] == list(range(1, version + 1))
        assert sum(entry["delta"] for entry in log) == on_hand


async def test_concurrent_repeats_of_one_key_apply_once(api: Api) -> None:
    await seed(api, {"A-1": 10})
    call = purchase("A-1", 2, key="once")
    responses = await asyncio.gather(*(send(api, call) for _ in range(8)))
    assert len({response.content for response in responses}) == 1
    replayed = [response.headers.get("idempotent-replayed") for response in responses]
    assert all(response.status_code == 200 for response in responses)
    assert replayed.count("true") == 7
    assert ok(await send(api, get("/v1/items/A-1")))["on_hand"] == 8
    assert len(await entries(api, "A-1")) == 2


# --- boundaries that are still valid ------------------------------------------------------------

SKU_64 = ("aZ09._-" * 10)[:64]


PURCHASE_A1 = "/v1/items/A-1/purchase"
FULL_BODY = b'{"quantity":1}'.ljust(BODY_BYTES_MAX)  # valid JSON of exactly 64 KiB


@pytest.mark.parametrize(
    ("call", "status"),
    [
        pytest.param(put(SKU_64, 1), 201, id="sku-64-chars-every-class"),
        pytest.param(put("A-1", 0), 200, id="on-hand-zero"),
        pytest.param(purchase("A-1", 5), 200, id="purchase-everything"),
        pytest.param(purchase("A-1", key="k" * 255), 200, id="key-255-chars"),
        pytest.param(purchase("A-1", key="! ~"), 200, id="key-printable-edges"),
        pytest.param(purchase("A-1", on_behalf_of="s" * 255), 200, id="on-behalf-255"),
        pytest.param(Call("POST", PURCHASE_A1, CLERK, content=FULL_BODY), 200, id="body-64KiB"),
        pytest.param(
            Call("POST", PURCHASE_A1, CLERK, content=FULL_BODY, stream=True),
            *(200,),
            id="streamed-body-64KiB",
        ),
    ],
)
async def test_boundary_values_are_accepted(api: Api, call: Call, status: int) -> None:
    await seed(api, {"A-1": 5})
    response = await send(api, call)
    ok(response, status)
    log = await entries(api, call.path.split("/")[3])
    assert log[-1]["idempotency_key"] == call.headers.get("Idempotency-Key")


# --- operations endpoints -----------------------------------------------------------------------


async def test_healthz_and_readyz_need_no_token(api: Api) -> None:
    assert ok(await api.http.get("/healthz")) == {"status": "up"}
    ready = ok(await api.http.get("/readyz"))
    assert ready["status"] == "ready" and "database" in ready["checked"]


async def test_readyz_checks_a_live_cache(database_url: str) -> None:
    ready = ok(await readyz_with_cache(database_url, LOCAL_REDIS_URL))
    assert ready["checked"] == ["cache", "database"]


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics(api: Api) -> None:
    await seed(api, {"A-1": 5})
    before = _samples((await api.http.get("/metrics")).text)
    read = await send(api, get("/v1/items/A-1"))
    ok(read)
    ok(await send(api, purchase("A-1", 1)))
    assert (await send(api, purchase("A-1", 10))).status_code == 409
    response = await api.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    types = {family.name: family.type for family in text_string_to_metric_families(response.text)}
    assert types["stockkeeper_cache_requests"] == "counter"
    assert types["stockkeeper_stock_changes"] == "counter"
    assert types["stockkeeper_request_duration_seconds"] == "histogram"
    assert types["stockkeeper_visibility_lag_seconds"] == "histogram"
    after = _samples(response.text)

    def grew(name: str, by: float, **labels: str) -> bool:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0) - before.get(key, 0) == by

    assert grew("stockkeeper_cache_requests_total", 1, result=read.headers["x-cache"])
    assert grew("stockkeeper_stock_changes_total", 1, outcome="applied")
    assert grew("stockkeeper_stock_changes_total", 1, outcome="insufficient_stock")
    purchase_route = "/v1/items/{sku}/purchase"
    assert grew("stockkeeper_request_duration_seconds_count", 2, route=purchase_route)
    assert grew("stockkeeper_request_duration_seconds_count", 1, route="/v1/items/{sku}")
    assert ("stockkeeper_visibility_lag_seconds_count", frozenset()) in after
