"""HTTP contract (API.md): every error, once per backend (SQLite, PostgreSQL).

Each error is checked for its status, `code`, problem+json shape and documented extra fields,
and for changing nothing: every item, every unknown SKU and every audit log read the same before
and after the failing request.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import pytest

from stockkeeper import failpoints
from stockkeeper.http.app import App
from stockkeeper.retry import RetryPolicy
from stockkeeper.service import Inventory
from stockkeeper.store import StoreOptions
from stockkeeper.store.postgres import PostgresStore
from tests.conftest import Api
from tests.http.test_api import (
    ADMIN,
    BODY_BYTES_MAX,
    CLERK,
    READER,
    Call,
    assert_applied,
    assert_problem,
    client,
    get,
    order,
    purchase,
    put,
    readyz_with_cache,
    restock,
    seed,
    send,
    snapshot,
)

STOCK = {"A-1": 5, "B-2": 3, "C-3": 10}
SKUS = (*STOCK, "NOPE")  # NOPE never exists: a failed request must not create it either
UNREACHABLE_POSTGRES = "postgresql://postgres@127.0.0.1:1/test"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


@dataclass(frozen=True)
class Case:
    call: Call
    status: int
    code: str
    extra: dict[str, Any] = field(default_factory=dict)  # exact values of problem fields
    fields: tuple[str, ...] = ()  # invalid_request: the fields its `errors` name
    allow: tuple[str, ...] = ()  # 405: the methods of the Allow header
    before: tuple[Call, ...] = ()  # successful requests sent before the snapshot


CASES: dict[str, Case] = {}


def case(name: str, call: Call, status: int, code: str, **more: Any) -> None:
    assert name not in CASES, name
    CASES[name] = Case(call, status, code, **more)


def invalid(name: str, call: Call, *fields: str) -> None:
    case(name, call, 422, "invalid_request", fields=fields)


def body(method: str, path: str, auth: Any, content: bytes, **more: Any) -> Call:
    return Call(method, path, auth, content=content, **more)


def padded(document: Any, size: int) -> bytes:
    """A valid JSON document of exactly `size` bytes (trailing whitespace)."""
    raw = orjson.dumps(document)
    return raw + b" " * (size - len(raw))


# Endpoints that take a body: (method, path, role, a valid body).
BODY_ENDPOINTS: dict[str, tuple[str, str, Any, Any]] = {
    "purchase": ("POST", "/v1/items/A-1/purchase", CLERK, {"quantity": 1}),
    "restock": ("POST", "/v1/items/A-1/restock", ADMIN, {"quantity": 1}),
    "put-existing": ("PUT", "/v1/items/A-1", ADMIN, {"on_hand": 1}),
    "put-new": ("PUT", "/v1/items/NOPE", ADMIN, {"on_hand": 1}),
    "order": ("POST", "/v1/orders", CLERK, {"lines": [{"sku": "A-1", "quantity": 1}]}),
}

# --- 400 malformed_json -------------------------------------------------------------------------

NOT_OBJECTS = {
    "not-json": b"not json",
    "array": b'[{"quantity": 1}]',
    "string": b'"quantity"',
    "number": b"1",
    "null": b"null",
    "empty": b"",
    "truncated": b'{"quantity": 1',
    "not-utf8": b'{"quantity": "\xff"}',
}
for endpoint, (method, path, role, _) in BODY_ENDPOINTS.items():
    for what, content in NOT_OBJECTS.items():
        case(f"400-{endpoint}-{what}", body(method, path, role, content), 400, "malformed_json")

# --- 401 unauthenticated ------------------------------------------------------------------------

BAD_AUTH = {
    "no-header": None,
    "unknown-token": "Bearer sk_not_a_token",
    "basic-scheme": "Basic {admin}",
    "token-scheme": "Token {admin}",
    "no-scheme": "{admin}",
    "bearer-no-token": "Bearer",
}
for what, auth in BAD_AUTH.items():
    case(f"401-purchase-{what}", purchase("A-1", auth=auth), 401, "unauthenticated")
for what in ("no-header", "unknown-token"):
    auth = BAD_AUTH[what]
    for name, call in {
        "get": get("/v1/items/A-1", auth),
        "put": put("A-1", 1, auth),
        "put-new": put("NOPE", 1, auth),
        "restock": restock("A-1", auth=auth),
        "order": order(("A-1", 1), auth=auth),
        "audit": get("/v1/items/A-1/audit", auth),
    }.items():
        case(f"401-{name}-{what}", call, 401, "unauthenticated")
case(
    "401-before-body-checks",
    body("POST", "/v1/items/A-1/purchase", None, b"not json"),
    401,
    "unauthenticated",
)

# --- 403 forbidden ------------------------------------------------------------------------------

for name, call in {
    "reader-purchasing": purchase("A-1", auth=READER),
    "reader-ordering": order(("A-1", 1), auth=READER),
    "reader-restocking": restock("A-1", auth=READER),
    "clerk-restocking": restock("A-1", auth=CLERK),
    "clerk-put": put("A-1", 1, CLERK),
    "clerk-put-new": put("NOPE", 1, CLERK),
    "reader-put": put("A-1", 1, READER),
    "clerk-audit": get("/v1/items/A-1/audit", CLERK),
    "reader-audit": get("/v1/items/A-1/audit", READER),
    "clerk-put-bad-body": body("PUT", "/v1/items/A-1", CLERK, b"not json"),
}.items():
    case(f"403-{name}", call, 403, "forbidden")

# --- 404 unknown_sku, not_found; 405 ------------------------------------------------------------

for name, call in {
    "get": get("/v1/items/NOPE"),
    "get-min-version": get("/v1/items/NOPE?min_version=1"),
    "purchase": purchase("NOPE"),
    "purchase-with-key": purchase("NOPE", key="k-404"),
    "restock": restock("NOPE"),
    "audit": get("/v1/items/NOPE/audit", ADMIN),
    "order-line": order(("A-1", 1), ("NOPE", 1)),
    "order-single-line": order(("NOPE", 1)),
}.items():
    case(f"404-unknown-sku-{name}", call, 404, "unknown_sku", extra={"sku": "NOPE"})
case(
    "404-order-of-100-lines-passes-validation",
    order(*((f"L-{i}", 1) for i in range(100))),
    404,
    "unknown_sku",
    extra={"sku": "L-0"},
)
for name, call in {
    "root": get("/", None),
    "unknown-path": get("/v1/nothing", READER),
    "under-item": get("/v1/items/A-1/extra", READER),
    "empty-sku": Call("PUT", "/v1/items/", ADMIN, {"on_hand": 1}),
    "items-collection-slash": get("/v1/items/", READER),
}.items():
    case(f"404-not-found-{name}", call, 404, "not_found")
for name, (call, allow) in {
    "delete-item": (Call("DELETE", "/v1/items/A-1"), ("GET", "PUT")),
    "post-item": (Call("POST", "/v1/items/A-1", json={"on_hand": 1}), ("GET", "PUT")),
    "get-purchase": (get("/v1/items/A-1/purchase"), ("POST",)),
    "put-restock": (Call("PUT", "/v1/items/A-1/restock", json={"quantity": 1}), ("POST",)),
    "get-orders": (get("/v1/orders"), ("POST",)),
    "delete-audit": (Call("DELETE", "/v1/items/A-1/audit"), ("GET",)),
    "post-healthz": (Call("POST", "/healthz", None), ("GET",)),
}.items():
    case(f"405-{name}", call, 405, "method_not_allowed", allow=allow)

# --- 409 insufficient_stock ---------------------------------------------------------------------

SHORT_B = {"sku": "B-2", "requested": 4, "available": 3}
SHORT_A = {"sku": "A-1", "requested": 6, "available": 5}
for name, (call, extra) in {
    "purchase": (purchase("A-1", 6), SHORT_A),
    "purchase-with-key": (purchase("A-1", 6, key="k-409"), SHORT_A),
    "purchase-max-quantity": (
        purchase("C-3", 1_000_000),
        {"sku": "C-3", "requested": 1_000_000, "available": 10},
    ),
    # Request order B-2, C-3, A-1: shortages follow it (not SKU order); C-3 is not applied.
    "order-two-short-lines": (
        order(("B-2", 4), ("C-3", 1), ("A-1", 6), key="k-409"),
        {"shortages": [SHORT_B, SHORT_A]},
    ),
    "order-single-line": (order(("A-1", 6)), {**SHORT_A, "shortages": [SHORT_A]}),
}.items():
    case(f"409-{name}", call, 409, "insufficient_stock", extra=extra)

# --- 413 body_too_large -------------------------------------------------------------------------

for endpoint, (method, path, role, valid) in BODY_ENDPOINTS.items():
    for size in (BODY_BYTES_MAX + 1, 1024 * 1024):
        content = padded(valid, size)
        case(f"413-{endpoint}-{size}", body(method, path, role, content), 413, "body_too_large")
        streamed = body(method, path, role, content, stream=True)
        case(f"413-{endpoint}-{size}-streamed", streamed, 413, "body_too_large")

# --- 422 invalid_request ------------------------------------------------------------------------

for what, quantity in {
    "0": 0,
    "-1": -1,
    "1000001": 1_000_001,
    "1.5": 1.5,
    "1.0": 1.0,
    "string": "3",
    "true": True,
    "null": None,
    "list": [1],
    "huge": 10**30,
}.items():
    invalid(f"422-purchase-quantity-{what}", purchase("A-1", quantity), "quantity")
    invalid(f"422-restock-quantity-{what}", restock("A-1", quantity), "quantity")
    invalid(f"422-order-quantity-{what}", order(("A-1", quantity)), "lines[0].quantity")
# Every error at once: unknown fields do not hide the errors of the known ones.
invalid("422-unknown-and-bad-quantity", purchase("A-1", 0, colour="red"), "colour", "quantity")
invalid("422-unknown-and-bad-key", restock("A-1", 1, key="", size=3), "size", "Idempotency-Key")
invalid("422-unknown-and-bad-line", order(("A-1", 0), note="x"), "note", "lines[0].quantity")
invalid("422-unknown-and-bad-on-hand", put("A-1", -1, extra=1), "extra", "on_hand")
P, R = "/v1/items/A-1/purchase", "/v1/items/A-1/restock"
for name, (call, fields) in {
    "purchase-missing-quantity": (Call("POST", P, CLERK, {}), ("quantity",)),
    "purchase-only-on-behalf": (Call("POST", P, CLERK, {"on_behalf_of": "s"}), ("quantity",)),
    "restock-missing-quantity": (Call("POST", R, ADMIN, {}), ("quantity",)),
    "purchase-unknown-field": (purchase("A-1", colour="red"), ("colour",)),
    "purchase-user-field": (purchase("A-1", user="mallory"), ("user",)),
    "restock-on-behalf-of": (restock("A-1", on_behalf_of="s"), ("on_behalf_of",)),
    "order-unknown-field": (order(("A-1", 1), priority=1), ("priority",)),
    "put-unknown-field": (Call("PUT", "/v1/items/A-1", ADMIN, {"on_hand": 1, "v": 2}), ("v",)),
    "put-missing-on-hand": (Call("PUT", "/v1/items/A-1", ADMIN, {}), ("on_hand",)),
    "put-on-hand-negative": (put("A-1", -1), ("on_hand",)),
    "put-new-on-hand-negative": (put("NOPE", -1), ("on_hand",)),
    "put-on-hand-string": (put("A-1", "5"), ("on_hand",)),
    "put-on-hand-float": (put("A-1", 2.5), ("on_hand",)),
    "put-on-hand-null": (put("NOPE", None), ("on_hand",)),
    "put-on-hand-true": (put("A-1", True), ("on_hand",)),
    # sku in the path: 65 characters, or a character outside A-Z a-z 0-9 . _ -
    "get-sku-65": (get(f"/v1/items/{'A' * 65}"), ("sku",)),
    "put-sku-65": (put("A" * 65, 1), ("sku",)),
    "purchase-sku-65": (purchase("A" * 65), ("sku",)),
    "restock-sku-65": (restock("B" * 65), ("sku",)),
    "audit-sku-65": (get(f"/v1/items/{'A' * 65}/audit", ADMIN), ("sku",)),
    "get-sku-dollar": (get("/v1/items/A%24B"), ("sku",)),
    "put-sku-dollar": (put("A%24B", 1), ("sku",)),
    "put-sku-space": (put("A%20B", 1), ("sku",)),
    "put-sku-non-ascii": (put("A%C3%A9", 1), ("sku",)),
    "purchase-sku-dollar": (purchase("A%24B"), ("sku",)),
    "audit-sku-dollar": (get("/v1/items/A%24B/audit", ADMIN), ("sku",)),
    # orders
    "order-0-lines": (order(), ("lines",)),
    "order-101-lines": (order(*((f"L-{i}", 1) for i in range(101))), ("lines",)),
    "order-duplicate-skus": (order(("A-1", 1), ("B-2", 1), ("A-1", 2)), ("lines[2].sku",)),
    "order-missing-lines": (Call("POST", "/v1/orders", CLERK, {"on_behalf_of": "s"}), ("lines",)),
    "order-lines-not-list": (Call("POST", "/v1/orders", CLERK, {"lines": "A-1"}), ("lines",)),
    "order-lines-object": (
        Call("POST", "/v1/orders", CLERK, {"lines": {"sku": "A-1", "quantity": 1}}),
        ("lines",),
    ),
    "order-line-not-object": (Call("POST", "/v1/orders", CLERK, {"lines": [5]}), ("lines[0]",)),
    "order-line-missing-quantity": (
        Call("POST", "/v1/orders", CLERK, {"lines": [{"sku": "A-1"}]}),
        ("lines[0].quantity",),
    ),
    "order-line-missing-sku": (
        Call(
            "POST", "/v1/orders", CLERK, {"lines": [{"sku": "A-1", "quantity": 1}, {"quantity": 1}]}
        ),
        ("lines[1].sku",),
    ),
    "order-line-bad-sku": (order(("A-1", 1), ("A$B", 1)), ("lines[1].sku",)),
    "order-line-sku-65": (order(("A" * 65, 1)), ("lines[0].sku",)),
    "order-line-unknown-field": (
        Call("POST", "/v1/orders", CLERK, {"lines": [{"sku": "A-1", "quantity": 1, "x": 1}]}),
        ("lines[0].x",),
    ),
    # on_behalf_of: 1-255 printable ASCII characters
    "purchase-on-behalf-number": (purchase("A-1", on_behalf_of=5), ("on_behalf_of",)),
    "purchase-on-behalf-list": (purchase("A-1", on_behalf_of=["s"]), ("on_behalf_of",)),
    "purchase-on-behalf-empty": (purchase("A-1", on_behalf_of=""), ("on_behalf_of",)),
    "purchase-on-behalf-256": (purchase("A-1", on_behalf_of="s" * 256), ("on_behalf_of",)),
    "purchase-on-behalf-newline": (purchase("A-1", on_behalf_of="a\nb"), ("on_behalf_of",)),
    "order-on-behalf-number": (order(("A-1", 1), on_behalf_of=7), ("on_behalf_of",)),
    "order-on-behalf-object": (order(("A-1", 1), on_behalf_of={"id": 1}), ("on_behalf_of",)),
    # Idempotency-Key: 1-255 printable ASCII characters
    "purchase-key-empty": (purchase("A-1", key=""), ("Idempotency-Key",)),
    "purchase-key-256": (purchase("A-1", key="k" * 256), ("Idempotency-Key",)),
    "purchase-key-bell": (purchase("A-1", key="a\x07b"), ("Idempotency-Key",)),
    "purchase-key-tab": (purchase("A-1", key="a\tb"), ("Idempotency-Key",)),
    "purchase-key-del": (purchase("A-1", key="a\x7fb"), ("Idempotency-Key",)),
    "purchase-key-latin1": (purchase("A-1", key=b"cl\xe9"), ("Idempotency-Key",)),
    "restock-key-empty": (restock("A-1", key=""), ("Idempotency-Key",)),
    "restock-key-256": (restock("A-1", key="k" * 256), ("Idempotency-Key",)),
    "order-key-empty": (order(("A-1", 1), key=""), ("Idempotency-Key",)),
    "order-key-bell": (order(("A-1", 1), key="a\x07b"), ("Idempotency-Key",)),
    # query parameters
    "get-min-version-abc": (get("/v1/items/A-1?min_version=abc"), ("min_version",)),
    "get-min-version-0": (get("/v1/items/A-1?min_version=0"), ("min_version",)),
    "get-min-version-negative": (get("/v1/items/A-1?min_version=-1"), ("min_version",)),
    "get-min-version-float": (get("/v1/items/A-1?min_version=1.5"), ("min_version",)),
    "get-min-version-blank": (get("/v1/items/A-1?min_version="), ("min_version",)),
    "audit-limit-blank": (get("/v1/items/A-1/audit?limit=", ADMIN), ("limit",)),
    "audit-limit-0": (get("/v1/items/A-1/audit?limit=0", ADMIN), ("limit",)),
    "audit-limit-1001": (get("/v1/items/A-1/audit?limit=1001", ADMIN), ("limit",)),
    "audit-limit-abc": (get("/v1/items/A-1/audit?limit=abc", ADMIN), ("limit",)),
    "audit-after-version-negative": (
        get("/v1/items/A-1/audit?after_version=-1", ADMIN),
        ("after_version",),
    ),
    "audit-after-version-abc": (
        get("/v1/items/A-1/audit?after_version=abc", ADMIN),
        ("after_version",),
    ),
    "audit-unknown-sku-bad-limit": (get("/v1/items/NOPE/audit?limit=0", ADMIN), ("limit",)),
    "batch-no-sku": (get("/v1/items"), ("sku",)),
    "batch-blank-sku": (get("/v1/items?sku="), ("sku",)),
    "batch-bad-sku": (get("/v1/items?sku=A-1&sku=a%20b"), ("sku",)),
    "batch-duplicate-sku": (get("/v1/items?sku=A-1&sku=A-1"), ("sku",)),
    "batch-101-skus": (get("/v1/items?" + "&".join(f"sku=X-{n}" for n in range(101))), ("sku",)),
    "batch-unknown-parameter": (get("/v1/items?sku=A-1&colour=red"), ("colour",)),
}.items():
    invalid(f"422-{name}", call, *fields)
# The answer's version must be >= min_version: a version the database never reached is refused.
invalid("422-get-min-version-ahead", get("/v1/items/A-1?min_version=2"), "min_version")
case(
    "422-restock-above-on-hand-max",
    restock("A-1", 1),
    422,
    "invalid_request",
    fields=("quantity",),
    before=(put("A-1", 10**12),),
)

# --- 422 idempotency_key_reused -----------------------------------------------------------------

for name, (first, again) in {
    "other-quantity": (purchase("A-1", 1, key="K"), purchase("A-1", 2, key="K")),
    "other-on-behalf-of": (
        purchase("A-1", 1, key="K", on_behalf_of="shopper-1"),
        purchase("A-1", 1, key="K", on_behalf_of="shopper-2"),
    ),
    "on-behalf-of-added": (
        purchase("A-1", 1, key="K"),
        purchase("A-1", 1, key="K", on_behalf_of="shopper-1"),
    ),
    "other-sku": (purchase("A-1", 1, key="K"), purchase("B-2", 1, key="K")),
    "other-endpoint": (restock("A-1", 1, key="K"), purchase("A-1", 1, key="K", auth=ADMIN)),
    "purchase-then-order": (purchase("A-1", 1, key="K"), order(("A-1", 1), key="K")),
    "order-other-quantity": (
        order(("A-1", 1), ("B-2", 1), key="K"),
        order(("A-1", 1), ("B-2", 2), key="K"),
    ),
    "order-fewer-lines": (order(("A-1", 1), ("B-2", 1), key="K"), order(("A-1", 1), key="K")),
    "other-body-would-be-short": (purchase("A-1", 1, key="K"), purchase("A-1", 99, key="K")),
}.items():
    case(f"422-key-reused-{name}", again, 422, "idempotency_key_reused", before=(first,))


# --- the table, run ------------------------------------------------------------------------------


async def seeded_snapshot(api: Api) -> dict[str, Any]:
    """The snapshot a failing request must leave as it is (and proof that it is not vacuous)."""
    state = await snapshot(api, *SKUS)
    assert [item_status for item_status, *_ in state.values()] == [200, 200, 200, 404]
    return state


@pytest.fixture
async def seeded(api: Api) -> Api:
    await seed(api, STOCK)
    return api


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_error_changes_nothing(seeded: Api, case: Case) -> None:
    for call in case.before:
        response = await send(seeded, call)
        assert response.is_success, response.text
    before = await seeded_snapshot(seeded)
    response = await send(seeded, case.call)
    problem = assert_problem(response, case.status, case.code, **case.extra)
    if case.code == "invalid_request":
        assert case.fields, "say which fields the errors must name"
        assert sorted(error["field"] for error in problem["errors"]) == sorted(case.fields)
    if case.status == 405:
        allowed = {method.strip() for method in response.headers["allow"].split(",")}
        assert allowed == set(case.allow)
    assert await snapshot(seeded, *SKUS) == before


# --- 500 and 503: the database fails under a write ----------------------------------------------

WRITES = {
    "purchase": purchase("A-1", 2, key="K-fail", on_behalf_of="shopper-1"),
    "restock": restock("A-1", 2, key="K-fail"),
    "order": order(("B-2", 1), ("A-1", 1), key="K-fail"),
    "put-existing": put("A-1", 9),
    "put-new": put("NOPE", 9),
}


def transient_fault(database_url: str) -> Callable[[], BaseException]:
    """An error the backend's retry loop treats as transient (busy / serialization failure)."""

    def sqlite_busy() -> BaseException:
        error = sqlite3.OperationalError("database is locked")
        error.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
        return error

    if database_url.startswith("sqlite"):
        return sqlite_busy
    return lambda: asyncpg.exceptions.SerializationError("could not serialize access")


async def assert_failed_write_changes_nothing(
    api: Api, call: Call, point: str, action: failpoints.Action, status: int, code: str
) -> None:
    """With `point` armed the write fails with `status`/`code` and changes nothing; sent again
    once the fault is gone it applies (so the failed attempt kept no idempotency key)."""
    before = await seeded_snapshot(api)
    with failpoints.armed(point, action):
        response = await send(api, call)
    assert_problem(response, status, code)
    assert await snapshot(api, *SKUS) == before
    assert_applied(await send(api, call))


@pytest.mark.parametrize("call", list(WRITES.values()), ids=list(WRITES))
async def test_unavailable_after_retries_changes_nothing(
    seeded: Api, database_url: str, call: Call
) -> None:
    fault = transient_fault(database_url)
    attempts = 0

    async def always_transient() -> None:
        nonlocal attempts
        attempts += 1
        raise fault()

    point = "store.write.before_commit"
    await assert_failed_write_changes_nothing(
        seeded, call, point, always_transient, 503, "unavailable"
    )
    assert attempts == RetryPolicy().attempts_max


# The points before COMMIT: a crash at any of them must leave no trace.
WRITE_POINTS = sorted(p for p in failpoints.POINTS if p.startswith("store.write."))


@pytest.mark.parametrize("point", WRITE_POINTS)
@pytest.mark.parametrize("call", list(WRITES.values()), ids=list(WRITES))
async def test_crash_during_write_changes_nothing(seeded: Api, call: Call, point: str) -> None:
    await assert_failed_write_changes_nothing(seeded, call, point, "error", 500, "internal_error")


# --- 503: the database or the cache is down -----------------------------------------------------


async def test_readyz_names_the_database_when_it_is_down(database_url: str) -> None:
    inventory = await Inventory.open(database_url)
    app = App.for_inventory(inventory)
    await inventory.close()
    async with client(app) as http:
        problem = assert_problem(await http.get("/readyz"), 503, "unavailable")
        assert (await http.get("/healthz")).status_code == 200
    assert "database" in problem["detail"] and "cache" not in problem["detail"]


async def test_readyz_names_the_cache_when_it_is_down(database_url: str) -> None:
    response = await readyz_with_cache(database_url, UNREACHABLE_REDIS)
    problem = assert_problem(response, 503, "unavailable")
    assert "cache" in problem["detail"] and "database" not in problem["detail"]


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(get("/v1/items/A-1", "Bearer sk_any"), id="get"),
        pytest.param(purchase("A-1", auth="Bearer sk_any", key="k"), id="purchase"),
        pytest.param(order(("A-1", 1), auth="Bearer sk_any"), id="order"),
        pytest.param(get("/readyz", None), id="readyz"),
    ],
)
async def test_unreachable_database_answers_503(call: Call) -> None:
    """A server whose PostgreSQL does not answer (nothing listens on port 1)."""
    pool = await asyncpg.create_pool(UNREACHABLE_POSTGRES, min_size=0, max_size=1, timeout=2)
    inventory = Inventory(PostgresStore(pool, StoreOptions()))
    async with inventory, client(App.for_inventory(inventory)) as http:
        problem = assert_problem(await send(Api(http, {}), call), 503, "unavailable")
        assert (await http.get("/healthz")).status_code == 200
    if call.path == "/readyz":
        assert "database" in problem["detail"]


async def test_not_started_app_answers_503() -> None:
    async def never_opened() -> Inventory:
        raise AssertionError("the app is never started here")

    async with client(App(never_opened)) as http:
        api = Api(http, {})
        assert_problem(await send(api, get("/v1/items/A-1", "Bearer sk_any")), 503, "unavailable")
        assert_problem(await http.get("/readyz"), 503, "unavailable")
        assert (await http.get("/healthz")).status_code == 200
