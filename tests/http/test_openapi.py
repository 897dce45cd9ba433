"""Keeps /openapi.json true to the app: routes, roles, problem codes, and real answers.

The spec is written by hand, so nothing but these tests stops it drifting from `ROUTES`,
`PROBLEMS` and the handlers' actual bodies and headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from stockkeeper import failpoints
from stockkeeper.domain import ON_HAND_MAX, ORDER_LINES_MAX, QUANTITY_MAX, Busy, Role
from stockkeeper.http.app import App
from stockkeeper.http.messages import BODY_BYTES_MAX
from stockkeeper.http.openapi import ROUTER_CODES, SPEC
from stockkeeper.http.problems import PROBLEM_CONTENT_TYPE, PROBLEMS
from stockkeeper.http.routes import ROUTES, Route
from stockkeeper.service import Inventory
from tests.conftest import Api

SPEC_URI = "urn:stockkeeper:openapi"
REGISTRY: Registry[Any] = Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(SPEC))
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
PROBLEM_MEDIA = PROBLEM_CONTENT_TYPE.decode()
PROBLEM_STATUSES = {status for status, _ in PROBLEMS.values()}
PROTECTED = [route for route in ROUTES if route.role is not None]

ITEM = "/v1/items/{sku}"
PURCHASE = "/v1/items/{sku}/purchase"
RESTOCK = "/v1/items/{sku}/restock"
AUDIT = "/v1/items/{sku}/audit"
ORDERS = "/v1/orders"
BEARER_NOPE = {"Authorization": "Bearer nope"}
# Headers the app sends on some answers: each must be declared where it is sent.
APP_HEADERS = (
    "etag",
    "x-cache",
    "idempotent-replayed",
    "www-authenticate",
    "retry-after",
    "allow",
    "vary",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
)


# --- reading the spec --------------------------------------------------------------------


def _pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` (parameters, headers, schemas) to what it names."""
    while "$ref" in node:
        node = REGISTRY.resolver(SPEC_URI).lookup(SPEC_URI + node["$ref"]).contents
    return node


def _validator(*parts: str) -> Draft202012Validator:
    """A validator for the schema at that place in the spec, its `$ref`s resolved in the spec."""
    return Draft202012Validator({"$ref": SPEC_URI + "#" + _pointer(*parts)}, registry=REGISTRY)


def _content_validator(method: str, template: str, media: str, *where: str) -> Draft202012Validator:
    """The schema of a request body (`where` = requestBody) or response (responses, status)."""
    return _validator("paths", template, method.lower(), *where, "content", media, "schema")


def _inline_validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for a schema that lives in no fixed place (a resolved header or parameter):
    it carries the spec's components along, so its `#/components/...` refs still resolve."""
    return Draft202012Validator({"allOf": [schema], "components": SPEC["components"]})


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


def _operation(method: str, template: str) -> dict[str, Any]:
    return SPEC["paths"][template][method.lower()]


def _codes(schema: dict[str, Any]) -> set[str]:
    """The problem codes a response schema admits: the `code` consts reachable from it."""
    schema = _resolve(schema)
    code = schema.get("properties", {}).get("code", {})
    found = {code["const"]} if "const" in code else set()
    for key in ("allOf", "oneOf", "anyOf"):
        for sub in schema.get(key, []):
            found |= _codes(sub)
    return found


def _declared_codes(operation: dict[str, Any]) -> dict[int, set[str]]:
    return {
        int(status): _codes(response["content"][PROBLEM_MEDIA]["schema"])
        for status, response in operation["responses"].items()
        if int(status) >= 400
    }


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def assert_matches_spec(response: httpx.Response, template: str) -> None:
    """The status is declared for the route, and the body and headers match its schemas; every
    header of APP_HEADERS it carries is declared for it."""
    method = response.request.method
    responses = _operation(method, template)["responses"]
    status = str(response.status_code)
    where = f"{method} {template} {status}"
    assert status in responses, f"{method} {template} answered undeclared {status}"
    declared = responses[status]
    if "content" not in declared:
        assert response.content == b"" and "content-type" not in response.headers, where
    else:
        media = response.headers["content-type"].split(";")[0].strip()
        assert media in declared["content"], f"{where}: undeclared {media}"
        if media in (PROBLEM_MEDIA, "application/json"):
            validator = _content_validator(method, template, media, "responses", status)
            errors = [error.message for error in validator.iter_errors(response.json())]
            assert not errors, f"{where}: {errors} in {response.json()}"
    headers = declared.get("headers", {})
    sent = {name for name in APP_HEADERS if name in response.headers}
    assert sent <= {name.lower() for name in headers}, f"{where}: undeclared headers"
    for name, header in headers.items():
        header = _resolve(header)
        value = response.headers.get(name)
        if value is None:
            assert not header.get("required"), f"{where}: no {name} header"
            continue
        schema = header["schema"]
        # A header's schema describes its value as a client reads it: an integer is digits.
        instance = int(value) if schema.get("type") == "integer" and value.isdigit() else value
        assert _inline_validator(schema).is_valid(instance), f"{where}: {name}: {value!r}"


# --- the spec against ROUTES and PROBLEMS --------------------------------------------------


def test_paths_are_exactly_the_routes() -> None:
    spec_routes = {(method, path) for method, path, _ in _operations()}
    app_routes = {(route.method, route.template) for route in ROUTES}
    assert spec_routes - app_routes == set(), "documented but not routed"
    assert app_routes - spec_routes == set(), "routed but not documented"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.template}")
def test_security_follows_the_route_role(route: Route) -> None:
    operation = _operation(route.method, route.template)
    if route.role is None:
        assert "security" not in operation and "x-required-role" not in operation
    else:
        scheme = SPEC["components"]["securitySchemes"]["bearer"]
        assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
        assert operation["security"] == [{"bearer": []}]
        assert operation["x-required-role"] == route.role.name.lower()
    assert "security" not in SPEC, "a global requirement would cover the public routes too"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.template}")
def test_path_parameters_match_the_template(route: Route) -> None:
    parameters = [
        _resolve(p) for p in _operation(route.method, route.template).get("parameters", [])
    ]
    in_path = {p["name"] for p in parameters if p["in"] == "path"}
    assert in_path == set(re.findall(r"\{(\w+)\}", route.template))
    assert all(p["required"] for p in parameters if p["in"] == "path")


@pytest.mark.parametrize("name", sorted(SPEC["components"]["schemas"]))
def test_component_schema_is_valid_json_schema(name: str) -> None:
    Draft202012Validator.check_schema(SPEC["components"]["schemas"][name])


def test_every_ref_resolves() -> None:
    resolver = REGISTRY.resolver(SPEC_URI)
    for ref in set(_refs(SPEC)):
        assert ref.startswith("#/components/"), ref
        resolver.lookup(SPEC_URI + ref)


def test_every_status_is_a_success_or_a_problem_with_matching_codes() -> None:
    for method, path, operation in _operations():
        for status, response in operation["responses"].items():
            where = f"{method} {path} {status}"
            if 200 <= int(status) < 300:
                assert PROBLEM_MEDIA not in response.get("content", {}), where
                continue
            assert int(status) in PROBLEM_STATUSES, f"{where}: no problem has this status"
            assert set(response["content"]) == {PROBLEM_MEDIA}, where
            codes = _codes(response["content"][PROBLEM_MEDIA]["schema"])
            assert codes, f"{where}: names no code"
            assert {PROBLEMS[code][0] for code in codes} == {int(status)}, where


def test_every_problem_code_is_documented() -> None:
    problem = SPEC["components"]["schemas"]["Problem"]
    assert set(problem["properties"]["code"]["enum"]) == set(PROBLEMS)
    by_operations = set().union(
        *(codes for _, _, op in _operations() for codes in _declared_codes(op).values())
    )
    assert by_operations | set(ROUTER_CODES) == set(PROBLEMS)
    assert by_operations.isdisjoint(ROUTER_CODES), "the router's codes are no route's answer"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.template}")
def test_route_declares_the_problems_its_role_and_body_imply(route: Route) -> None:
    operation = _operation(route.method, route.template)
    codes = _declared_codes(operation)
    assert "internal_error" in codes[500]
    if route.role is not None:
        assert "unauthenticated" in codes[401] and "unavailable" in codes[503]
        assert ("forbidden" in codes.get(403, set())) == (route.role > Role.READER)
    if "requestBody" in operation:
        for code in ("malformed_json", "body_too_large", "invalid_request"):
            assert code in codes[PROBLEMS[code][0]], code
    if "{sku}" in route.template:
        assert "invalid_request" in codes[422], "a malformed sku is 422"
        # PUT creates a missing item; every other sku route answers 404 for one.
        assert ("unknown_sku" in codes.get(404, set())) == (route.method != "PUT")


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(SPEC)


def test_its_server_is_the_address_it_was_fetched_from() -> None:
    """Relative, so a client (Swagger UI on another origin, say) resolves it against the URL
    it loaded the document from: true behind any host, port, scheme or proxy."""
    (server,) = SPEC["servers"]
    assert server["url"] == "/"


def test_every_503_describes_retry_after() -> None:
    for method, path, operation in _operations():
        if "503" in operation["responses"]:
            headers = operation["responses"]["503"].get("headers", {})
            assert "Retry-After" in headers, f"{method} {path}"
            retry_after = _resolve(headers["Retry-After"])
            assert not retry_after["required"], "only busy refusals and refused reads carry it"
            assert retry_after["schema"]["type"] == "integer"


# --- the spec against the running app ------------------------------------------------------


async def test_openapi_json_serves_the_spec(api: Api) -> None:
    response = await api.http.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == SPEC
    assert_matches_spec(response, "/openapi.json")


async def _call(
    api: Api, method: str, template: str, expect: int, sku: str = "A-1", **kwargs: Any
) -> httpx.Response:
    response = await api.http.request(method, template.replace("{sku}", sku), **kwargs)
    assert response.status_code == expect, response.text
    assert_matches_spec(response, template)
    return response


async def test_real_answers_match_the_spec(api: Api) -> None:
    admin, clerk, reader = api.auth(Role.ADMIN), api.auth(Role.CLERK), api.auth(Role.READER)
    await _call(api, "PUT", ITEM, 201, headers=admin, json={"on_hand": 10})
    await _call(api, "PUT", ITEM, 200, headers=admin, json={"on_hand": 12})
    await _call(api, "PUT", ITEM, 201, "B-2", headers=admin, json={"on_hand": 3})
    got = await _call(api, "GET", ITEM, 200, headers=reader, params={"min_version": 2})
    assert got.json() == {"sku": "A-1", "on_hand": 12, "held": 0, "available": 12, "version": 2}

    keyed = {**clerk, "Idempotency-Key": "k-1"}
    body = {"quantity": 2, "on_behalf_of": "shopper-7"}
    await _call(api, "POST", PURCHASE, 200, headers=keyed, json=body)
    replay = await _call(api, "POST", PURCHASE, 200, headers=keyed, json=body)
    assert replay.headers["idempotent-replayed"] == "true"
    await _call(api, "POST", PURCHASE, 422, headers=keyed, json={"quantity": 3})
    await _call(api, "POST", RESTOCK, 200, headers=admin, json={"quantity": 5})
    lines = [{"sku": "A-1", "quantity": 1}, {"sku": "B-2", "quantity": 1}]
    await _call(api, "POST", ORDERS, 200, headers=clerk, json={"lines": lines})
    single = await _call(api, "POST", ORDERS, 200, headers=clerk, json={"lines": lines[:1]})
    assert "etag" in single.headers

    first = await _call(api, "GET", AUDIT, 200, headers=admin, params={"limit": 2})
    after = first.json()["next_after_version"]
    assert after == 2
    await _call(api, "GET", AUDIT, 200, headers=admin, params={"after_version": after})

    single_short = await _call(api, "POST", PURCHASE, 409, headers=clerk, json={"quantity": 1000})
    order_409 = _content_validator("POST", ORDERS, PROBLEM_MEDIA, "responses", "409")
    assert not order_409.is_valid(single_short.json()), "an order's 409 must carry shortages"
    short = [{"sku": "A-1", "quantity": 1000}]
    assert (await _call(api, "POST", ORDERS, 409, headers=clerk, json={"lines": short})).json()[
        "shortages"
    ] == [{"sku": "A-1", "requested": 1000, "available": 12 - 2 + 5 - 1 - 1}]
    for template in (ITEM, AUDIT):
        await _call(api, "GET", template, 404, "NOPE", headers=admin)
    await _call(api, "POST", PURCHASE, 404, "NOPE", headers=clerk, json={"quantity": 1})
    await _call(
        api, "POST", ORDERS, 404, headers=clerk, json={"lines": [{"sku": "NOPE", "quantity": 1}]}
    )
    await _call(api, "POST", PURCHASE, 422, headers=clerk, json={"quantity": 0})
    await _call(api, "GET", ITEM, 422, "bad sku!", headers=reader)
    await _call(api, "GET", ITEM, 422, headers=reader, params={"min_version": "x"})
    await _call(api, "GET", AUDIT, 422, headers=admin, params={"limit": 0})
    await _call(api, "PUT", ITEM, 400, headers=admin, content=b"{")
    await _call(api, "PUT", ITEM, 413, headers=admin, content=b" " * (BODY_BYTES_MAX + 1))

    for template in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        await _call(api, "GET", template, 200)


@pytest.mark.parametrize("route", PROTECTED, ids=lambda r: f"{r.method} {r.template}")
async def test_auth_problems_match_the_spec(api: Api, route: Route) -> None:
    await _call(api, route.method, route.template, 401)
    await _call(api, route.method, route.template, 401, headers=BEARER_NOPE)
    if route.role is not None and route.role > Role.READER:
        await _call(api, route.method, route.template, 403, headers=api.auth(Role.READER))


async def test_unavailable_answers_match_the_spec(database_url: str) -> None:
    """503s need a dead dependency: an app not started yet, then one whose cache is down."""

    async def open_inventory() -> Inventory:
        return await Inventory.open(database_url, cache_url="redis://127.0.0.1:1/0")

    app = App(open_inventory)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stockkeeper") as http:
        for template in (ITEM, "/readyz"):
            response = await http.get(template.replace("{sku}", "A-1"), headers=BEARER_NOPE)
            assert response.status_code == 503
            assert_matches_spec(response, template)
        await app.startup()
        try:
            response = await http.get("/readyz")
        finally:
            await app.shutdown()
    assert response.status_code == 503 and set(response.json()["down"]) == {"cache"}
    assert_matches_spec(response, "/readyz")


async def test_a_draining_servers_answers_match_the_spec(inventory: Inventory) -> None:
    """After SIGTERM (stockkeeper.serving): /readyz refuses, naming the server itself, while the
    rest is served, each answer closing its connection."""
    app = App.for_inventory(inventory)
    app.drain()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stockkeeper") as http:
        ready = await http.get("/readyz")
        health = await http.get("/healthz")
    assert ready.status_code == 503 and ready.json()["down"] == {"server": "draining"}
    assert_matches_spec(ready, "/readyz")
    assert health.status_code == 200 and health.headers["connection"] == "close"


async def test_a_busy_refusal_and_its_retry_after_match_the_spec(api: Api) -> None:
    async def no_connection_free() -> None:
        raise Busy("busy: no database connection free within 3000 ms")

    with failpoints.armed("store.write.before_change", no_connection_free):
        refused = await _call(
            api, "PUT", ITEM, 503, headers=api.auth(Role.ADMIN), json={"on_hand": 1}
        )
    assert refused.headers["retry-after"] == "1"


async def test_router_problems_match_the_problem_schema(api: Api) -> None:
    problem = _validator("components", "schemas", "Problem")
    for method, path, status in (("GET", "/nowhere", 404), ("DELETE", ORDERS, 405)):
        response = await api.http.request(method, path)
        assert response.status_code == status
        assert response.headers["content-type"] == PROBLEM_MEDIA
        problem.validate(response.json())
        assert response.json()["code"] in ROUTER_CODES


# --- request schemas agree with the server's validation -------------------------------------

LINE = {"sku": "A-1", "quantity": 1}
# (route, body, whether the body is valid): the spec and the server must both agree.
BODIES: list[tuple[str, Any, bool]] = [
    (ITEM, {"on_hand": 0}, True),
    (ITEM, {"on_hand": ON_HAND_MAX}, True),
    (ITEM, {"on_hand": -1}, False),
    (ITEM, {"on_hand": ON_HAND_MAX + 1}, False),
    (ITEM, {"on_hand": 1.5}, False),
    (ITEM, {"on_hand": "3"}, False),
    (ITEM, {"on_hand": 3, "quantity": 1}, False),
    (ITEM, [], False),
    (PURCHASE, {"quantity": 1}, True),
    (PURCHASE, {"quantity": QUANTITY_MAX, "on_behalf_of": "shopper 7"}, True),
    (PURCHASE, {"quantity": 1, "on_behalf_of": None}, True),
    (PURCHASE, {"quantity": 0}, False),
    (PURCHASE, {"quantity": QUANTITY_MAX + 1}, False),
    (PURCHASE, {"quantity": True}, False),
    (PURCHASE, {"quantity": None}, False),
    (PURCHASE, {}, False),
    (PURCHASE, {"quantity": 1, "on_behalf_of": ""}, False),
    (PURCHASE, {"quantity": 1, "on_behalf_of": "x" * 256}, False),
    (PURCHASE, {"quantity": 1, "on_behalf_of": "café"}, False),
    (PURCHASE, {"quantity": 1, "user": "mallory"}, False),
    (RESTOCK, {"quantity": 7}, True),
    (RESTOCK, {"quantity": 1, "on_behalf_of": "x"}, False),
    (RESTOCK, {"quantity": -1}, False),
    (ORDERS, {"lines": [LINE]}, True),
    (ORDERS, {"lines": [{"sku": "NOPE", "quantity": 1}], "on_behalf_of": "s"}, True),
    (ORDERS, {"lines": []}, False),
    (ORDERS, {"lines": LINE}, False),
    (
        ORDERS,
        {"lines": [{"sku": f"S{i}", "quantity": 1} for i in range(ORDER_LINES_MAX + 1)]},
        False,
    ),
    (ORDERS, {"lines": [{"sku": "A-1"}]}, False),
    (ORDERS, {"lines": [{**LINE, "price": 3}]}, False),
    (ORDERS, {"lines": [{"sku": "a b", "quantity": 1}]}, False),
    (ORDERS, {"lines": [{"sku": "x" * 65, "quantity": 1}]}, False),
    (ORDERS, {"lines": [{"sku": "Az09._-" + "x" * 57, "quantity": 1}]}, True),
    (ORDERS, {}, False),
]
METHOD = {ITEM: "PUT", PURCHASE: "POST", RESTOCK: "POST", ORDERS: "POST"}


async def test_request_schemas_agree_with_the_server(api: Api) -> None:
    admin = api.auth(Role.ADMIN)
    await _call(api, "PUT", ITEM, 201, headers=admin, json={"on_hand": 5})
    for template, body, valid in BODIES:
        method = METHOD[template]
        schema = _content_validator(method, template, "application/json", "requestBody")
        assert schema.is_valid(body) == valid, f"spec on {template} {body}"
        response = await api.http.request(
            method, template.replace("{sku}", "A-1"), headers=admin, json=body
        )
        assert (response.status_code not in (400, 422)) == valid, (
            f"server on {template} {body}: {response.text}"
        )
        assert_matches_spec(response, template)


PARAMETER_VALUES: list[tuple[str, str, str, str, bool]] = [
    ("GET", ITEM, "min_version", "1", True),
    ("GET", ITEM, "min_version", "0", False),
    ("GET", ITEM, "min_version", "x", False),
    ("GET", AUDIT, "limit", "1000", True),
    ("GET", AUDIT, "limit", "1001", False),
    ("GET", AUDIT, "after_version", "0", True),
    ("GET", AUDIT, "after_version", "-1", False),
    ("POST", PURCHASE, "Idempotency-Key", "k 1~", True),
    ("POST", PURCHASE, "Idempotency-Key", "k" * 256, False),
    ("POST", PURCHASE, "Idempotency-Key", "", False),
    ("POST", PURCHASE, "Idempotency-Key", "clé", False),
]


async def test_parameter_schemas_agree_with_the_server(api: Api) -> None:
    admin = api.auth(Role.ADMIN)
    await _call(api, "PUT", ITEM, 201, headers=admin, json={"on_hand": 5})
    for method, template, name, raw, valid in PARAMETER_VALUES:
        parameters = [_resolve(p) for p in _operation(method, template)["parameters"]]
        (declared,) = [p for p in parameters if p["name"] == name]
        value: Any = int(raw) if re.fullmatch(r"-?\d+", raw) else raw
        assert _inline_validator(declared["schema"]).is_valid(value) == valid, (
            f"spec on {name}={raw!r}"
        )
        request: dict[str, Any] = {"headers": dict(admin)}
        if declared["in"] == "query":
            request["params"] = {name: raw}
        else:
            request["headers"][name] = raw.encode("latin-1")
            request["json"] = {"quantity": 1}
        response = await api.http.request(method, template.replace("{sku}", "A-1"), **request)
        assert (response.status_code != 422) == valid, f"server on {name}={raw!r}: {response.text}"
        assert_matches_spec(response, template)
