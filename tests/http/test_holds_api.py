"""The holds endpoints over HTTP, on both backends: each answer's status and body, and every
error of shared/API.md's holds section as its status and code, changing nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from stockkeeper.domain import Role
from stockkeeper.service import Inventory
from tests.conftest import Api
from tests.http.test_openapi import assert_matches_spec
from tests.store.test_hold_writes import make_overdue

HOLDS = "/v1/holds"
LINES = [{"sku": "A", "quantity": 3}, {"sku": "B", "quantity": 2}]


@pytest.fixture
async def stocked_api(api: Api) -> Api:
    for sku, on_hand in (("A", 10), ("B", 5)):
        response = await api.http.put(
            f"/v1/items/{sku}", json={"on_hand": on_hand}, headers=api.auth(Role.ADMIN)
        )
        assert response.status_code == 201
    return api


async def call(
    api: Api, method: str, path: str, template: str, expect: int, **kwargs: Any
) -> httpx.Response:
    kwargs.setdefault("headers", api.auth(Role.CLERK))
    response = await api.http.request(method, path, **kwargs)
    assert response.status_code == expect, response.text
    assert_matches_spec(response, template)
    return response


async def create(api: Api, lines: list[dict[str, Any]] = LINES, **kwargs: Any) -> dict[str, Any]:
    response = await call(api, "POST", HOLDS, HOLDS, 201, json={"lines": lines, **kwargs})
    return dict(response.json())


async def item(api: Api, sku: str) -> dict[str, Any]:
    response = await api.http.get(f"/v1/items/{sku}", headers=api.auth(Role.READER))
    return dict(response.json())


async def test_a_hold_is_created_read_and_confirmed(stocked_api: Api) -> None:
    api = stocked_api
    hold = await create(api, ttl_s=120, on_behalf_of="shopper-1")
    assert hold["state"] == "active" and hold["lines"] == LINES
    assert [c["held_delta"] for c in hold["changes"]] == [3, 2]
    assert await item(api, "A") == {
        "sku": "A",
        "on_hand": 10,
        "held": 3,
        "available": 7,
        "version": 2,
    }
    path = f"{HOLDS}/{hold['id']}"
    got = (await call(api, "GET", path, "/v1/holds/{hold_id}", 200)).json()
    assert got == {**hold, "changes": []}
    confirmed = (
        await call(api, "POST", f"{path}/confirm", "/v1/holds/{hold_id}/confirm", 200)
    ).json()
    assert confirmed["state"] == "confirmed"
    assert [line["confirmed"] for line in confirmed["lines"]] == [3, 2]
    assert (await item(api, "A"))["on_hand"] == 7


async def test_a_partial_confirm_an_extend_and_a_release(stocked_api: Api) -> None:
    api = stocked_api
    hold = await create(api)
    path = f"{HOLDS}/{hold['id']}"
    extended = await call(
        api, "POST", f"{path}/extend", "/v1/holds/{hold_id}/extend", 200, json={"ttl_s": 3600}
    )
    assert extended.json()["expires_at"] > hold["expires_at"]
    partial = await call(
        api,
        "POST",
        f"{path}/confirm",
        "/v1/holds/{hold_id}/confirm",
        200,
        json={"lines": [{"sku": "B", "quantity": 1}]},
    )
    assert [line["confirmed"] for line in partial.json()["lines"]] == [0, 1]
    other = await create(api, [{"sku": "A", "quantity": 1}])
    released = await call(api, "DELETE", f"{HOLDS}/{other['id']}", "/v1/holds/{hold_id}", 200)
    assert released.json()["state"] == "released"
    assert await item(api, "A") == {
        "sku": "A",
        "on_hand": 10,
        "held": 0,
        "available": 10,
        "version": 5,
    }


async def test_a_keyed_create_replays_with_the_header(stocked_api: Api) -> None:
    api = stocked_api
    keyed = {**api.auth(Role.CLERK), "Idempotency-Key": "cart-1"}
    first = await call(api, "POST", HOLDS, HOLDS, 201, headers=keyed, json={"lines": LINES})
    again = await call(api, "POST", HOLDS, HOLDS, 201, headers=keyed, json={"lines": LINES})
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    reused = await call(api, "POST", HOLDS, HOLDS, 422, headers=keyed, json={"lines": LINES[:1]})
    assert reused.json()["code"] == "idempotency_key_reused"
    path = f"{HOLDS}/{first.json()['id']}"
    keyed = {**api.auth(Role.CLERK), "Idempotency-Key": "release-1"}
    for replayed in (False, True):
        response = await call(api, "DELETE", path, "/v1/holds/{hold_id}", 200, headers=keyed)
        assert ("idempotent-replayed" in response.headers) is replayed


async def test_every_holds_error_has_its_status_and_code_and_changes_nothing(
    stocked_api: Api, inventory: Inventory, database_url: str
) -> None:
    api = stocked_api
    hold = await create(api)
    path = f"{HOLDS}/{hold['id']}"
    one = "/v1/holds/{hold_id}"
    confirm, extend = f"{path}/confirm", f"{path}/extend"
    confirm_t, extend_t = "/v1/holds/{hold_id}/confirm", "/v1/holds/{hold_id}/extend"
    before = [await item(api, sku) for sku in ("A", "B")]

    async def refused(
        method: str, url: str, template: str, status: int, code: str, **kw: Any
    ) -> dict[str, Any]:
        body = (await call(api, method, url, template, status, **kw)).json()
        assert body["code"] == code, body
        return dict(body)

    await refused(
        "POST",
        HOLDS,
        HOLDS,
        409,
        "insufficient_stock",
        json={"lines": [{"sku": "A", "quantity": 8}]},
    )
    await refused(
        "POST", HOLDS, HOLDS, 404, "unknown_sku", json={"lines": [{"sku": "Z", "quantity": 1}]}
    )
    await refused("POST", HOLDS, HOLDS, 422, "invalid_request", json={"lines": LINES, "ttl_s": 0})
    await refused("POST", HOLDS, HOLDS, 422, "invalid_request", json={"lines": LINES, "user": "x"})
    await refused("POST", HOLDS, HOLDS, 400, "malformed_json", content=b"[")
    for method, url, template in (
        ("GET", f"{HOLDS}/h-nope", one),
        ("DELETE", f"{HOLDS}/h-nope", one),
        ("POST", f"{HOLDS}/h-nope/confirm", confirm_t),
    ):
        await refused(method, url, template, 404, "unknown_hold")
    await refused(
        "POST", f"{HOLDS}/h-nope/extend", extend_t, 404, "unknown_hold", json={"ttl_s": 5}
    )
    await refused(
        "POST",
        confirm,
        confirm_t,
        422,
        "invalid_request",
        json={"lines": [{"sku": "C", "quantity": 1}]},
    )
    await refused(
        "POST",
        confirm,
        confirm_t,
        422,
        "invalid_request",
        json={"lines": [{"sku": "A", "quantity": 4}]},
    )
    await refused("POST", extend, extend_t, 422, "invalid_request", json={})
    await refused("POST", extend, extend_t, 422, "invalid_request", json={"ttl_s": 3601})
    await refused("GET", path, one, 403, "forbidden", headers=api.auth(Role.READER))
    assert [await item(api, sku) for sku in ("A", "B")] == before

    await make_overdue(database_url, hold["id"])
    assert (await call(api, "GET", path, one, 200)).json()["state"] == "expired"
    await refused("POST", confirm, confirm_t, 409, "hold_expired")
    await refused("POST", extend, extend_t, 409, "hold_expired", json={"ttl_s": 60})
    closed = await refused("DELETE", path, one, 409, "hold_closed")
    assert closed["state"] == "expired"
    assert [await item(api, sku) for sku in ("A", "B")] == before

    other = await create(api)
    other_path = f"{HOLDS}/{other['id']}"
    await call(api, "DELETE", other_path, one, 200)
    after_release = [await item(api, sku) for sku in ("A", "B")]
    for method, url, template in (
        ("DELETE", other_path, one),
        ("POST", f"{other_path}/confirm", confirm_t),
    ):
        assert (await refused(method, url, template, 409, "hold_closed"))["state"] == "released"
    assert [await item(api, sku) for sku in ("A", "B")] == after_release
    assert await inventory.held_drift() == []
