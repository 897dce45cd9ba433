"""The OpenAPI 3.1 description of the HTTP API, served by `GET /openapi.json`.

Written by hand because the app is bare ASGI (see app.py): no framework could generate it.
tests/http/test_openapi.py keeps it true: its paths against `ROUTES`, its error codes against
`PROBLEMS`, and its schemas against real responses. Every shape and limit lives once in the small
constants below and is assembled by a few helpers, so a change is made in one place.

Its one server is relative, `/`: OpenAPI resolves it against the URL the document was fetched
from, so the same document is true at every host, port and scheme a server is reached by (behind
a proxy too), and stays one constant, with nothing taken from a request's Host header.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

from stockkeeper.domain import (
    AUDIT_PAGE_LIMIT_MAX,
    ON_HAND_MAX,
    ORDER_LINES_MAX,
    QUANTITY_MAX,
    TEXT_CHARS_MAX,
    Reason,
    Role,
)
from stockkeeper.holds import HOLD_ID_PATTERN, TTL_S_MAX, HoldState
from stockkeeper.http import cors
from stockkeeper.http.messages import BODY_BYTES_MAX
from stockkeeper.http.problems import PROBLEM_CONTENT_TYPE, PROBLEMS
from stockkeeper.service import READ_MANY_MAX, VERSION_MAX

Schema = dict[str, Any]

JSON_MEDIA = "application/json"
PROBLEM_MEDIA = PROBLEM_CONTENT_TYPE.decode()
SKU_PATTERN = "^[A-Za-z0-9._-]{1,64}$"
TEXT_PATTERN = f"^[ -~]{{1,{TEXT_CHARS_MAX}}}$"  # printable ASCII, as Checks.optional_text
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"
ETAG_PATTERN = '^"[0-9]+"$'
BEARER = "bearer"

# Raised by the router before any route matches, so no operation lists them.
ROUTER_CODES = ("not_found", "method_not_allowed")
# Extra fields a problem of that code always carries (beyond type, title, status, detail, code).
PROBLEM_EXTRAS: dict[str, list[str]] = {
    "unknown_sku": ["sku"],
    "insufficient_stock": ["sku", "requested", "available"],
    "invalid_request": ["errors"],
    "method_not_allowed": ["allowed"],
    "hold_closed": ["state"],
}
BODY_CODES = ("malformed_json", "body_too_large", "invalid_request")


def _version() -> str:
    """The installed package's version, so the document never lags a release."""
    try:
        return metadata.version("stockkeeper")
    except metadata.PackageNotFoundError:
        return "0.0.0"


# --- schema helpers ----------------------------------------------------------------------


def _ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> Schema:
    return _ref("schemas", name)


def _integer(minimum: int, maximum: int | None = None, description: str = "") -> Schema:
    schema: Schema = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        schema["maximum"] = maximum
    if description:
        schema["description"] = description
    return schema


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _array(items: Schema, min_items: int = 0, max_items: int | None = None) -> Schema:
    schema: Schema = {"type": "array", "items": items}
    if min_items:
        schema["minItems"] = min_items
    if max_items is not None:
        schema["maxItems"] = max_items
    return schema


def _object(
    properties: Mapping[str, Schema], required: Iterable[str] | None = None, description: str = ""
) -> Schema:
    """A closed object: the app rejects unknown fields, and answers with none it does not list."""
    schema: Schema = {
        "type": "object",
        "additionalProperties": False,
        "required": list(properties if required is None else required),
        "properties": dict(properties),
    }
    if description:
        schema["description"] = description
    return schema


def _content(schema: Schema, media: str = JSON_MEDIA) -> Schema:
    return {media: {"schema": schema}}


# --- shared fields -----------------------------------------------------------------------

_SKU = _schema("Sku")
_QUANTITY = _schema("Quantity")
_VERSION = _schema("Version")
_TEXT = _schema("Text")
_ON_HAND = _integer(0, description="Units on hand; never negative.")
_HELD = _integer(0, description="Units set aside by active holds; never above on_hand.")
_AVAILABLE = _integer(
    0, description="on_hand - held: what purchases, orders and new holds may take."
)
_HELD_DELTA = {"type": "integer", "description": "held after minus before"}
_STRING: Schema = {"type": "string"}
_HOLD_STATE: Schema = {"enum": [state.value for state in HoldState]}
_AS_INTEGER = "Written as a JSON integer: 5.0 or 5e0 are rejected."
_TTL = {
    **_integer(1, TTL_S_MAX, f"Seconds from now, by the database's clock. {_AS_INTEGER}"),
    "default": 600,
}

SCHEMAS: dict[str, Schema] = {
    "Sku": {
        "type": "string",
        "pattern": SKU_PATTERN,
        "description": "1-64 characters of A-Z a-z 0-9 . _ -",
    },
    "Quantity": _integer(1, QUANTITY_MAX, _AS_INTEGER),
    "Version": _integer(1, VERSION_MAX, "1 at creation, +1 with every committed change."),
    "Text": {
        "type": "string",
        "pattern": TEXT_PATTERN,
        "description": f"1-{TEXT_CHARS_MAX} printable ASCII characters",
    },
    "Item": _object(
        {
            "sku": _SKU,
            "on_hand": _ON_HAND,
            "held": _HELD,
            "available": _AVAILABLE,
            "version": _VERSION,
        }
    ),
    "Change": _object(
        {
            "sku": _SKU,
            "delta": {"type": "integer", "description": "on_hand after minus before"},
            "on_hand": _ON_HAND,
            "version": _VERSION,
            "audit_id": _integer(1, description="id of the change's audit entry"),
            "held_delta": _HELD_DELTA,
            "held": _HELD,
            "available": _AVAILABLE,
        }
    ),
    "Order": _object(
        {"lines": _array(_schema("Change"), 1, ORDER_LINES_MAX)},
        description="One change per line, in the request's order.",
    ),
    "AuditEntry": _object(
        {
            "id": _integer(1),
            "sku": _SKU,
            "version": _VERSION,
            "delta": {"type": "integer"},
            "on_hand": _ON_HAND,
            "held_delta": _HELD_DELTA,
            "held": _HELD,
            "hold_id": {**_nullable(_STRING), "description": "the hold this change is part of"},
            "user": _TEXT,
            "on_behalf_of": _nullable(_TEXT),
            "reason": {"enum": [reason.value for reason in Reason]},
            "idempotency_key": _nullable(_TEXT),
            "at": {
                "type": "string",
                "format": "date-time",
                "pattern": TIMESTAMP_PATTERN,
                "description": "the commit's database time, RFC 3339 UTC with microseconds",
            },
        }
    ),
    "AuditPage": _object(
        {
            "entries": _array(_schema("AuditEntry")),
            "next_after_version": {
                **_nullable(_VERSION),
                "description": "pass as after_version for the next page; null on the last",
            },
        },
        description="Entries oldest first.",
    ),
    "ItemBatch": _object(
        {"items": _array(_schema("Item"), 0, READ_MANY_MAX), "unknown": _array(_SKU)},
        description="Found items in the request's order, and the SKUs that name no item.",
    ),
    "SetStock": _object({"on_hand": _integer(0, ON_HAND_MAX, _AS_INTEGER)}),
    "Purchase": _object(
        {"quantity": _QUANTITY, "on_behalf_of": _nullable(_TEXT)}, required=["quantity"]
    ),
    "Restock": _object({"quantity": _QUANTITY}),
    "OrderLine": _object({"sku": _SKU, "quantity": _QUANTITY}),
    "OrderRequest": _object(
        {
            "lines": _array(_schema("OrderLine"), 1, ORDER_LINES_MAX),
            "on_behalf_of": _nullable(_TEXT),
        },
        required=["lines"],
        description="Each SKU may appear once (not expressible here; the server answers 422).",
    ),
    "HoldLine": _object(
        {
            "sku": _SKU,
            "quantity": _QUANTITY,
            "confirmed": _integer(0, QUANTITY_MAX, "what the confirm sold of this line"),
        },
        required=["sku", "quantity"],
    ),
    "Hold": _object(
        {
            "id": _schema("HoldId"),
            "state": _HOLD_STATE,
            "expires_at": {
                "type": "string",
                "format": "date-time",
                "pattern": TIMESTAMP_PATTERN,
                "description": "database time; from then on the hold is expired for every "
                "request, recorded or not",
            },
            "lines": _array(_schema("HoldLine"), 1, ORDER_LINES_MAX),
            "changes": _array(_schema("Change")),
        },
        description="`changes` are the item changes this request made, in line order.",
    ),
    "HoldId": {"type": "string", "pattern": HOLD_ID_PATTERN},
    "HoldRequest": _object(
        {
            "lines": _array(_schema("OrderLine"), 1, ORDER_LINES_MAX),
            "ttl_s": _TTL,
            "on_behalf_of": _nullable(_TEXT),
        },
        required=["lines"],
        description="Each SKU may appear once (not expressible here; the server answers 422).",
    ),
    "ConfirmRequest": _object(
        {"lines": _array(_schema("OrderLine"), 1, ORDER_LINES_MAX)},
        required=[],
        description="No body, or no lines, sells every line whole. With lines, each names a "
        "SKU of the hold and at most its held quantity; what is not confirmed is released.",
    ),
    "ExtendRequest": _object({"ttl_s": _TTL}),
    "Health": _object({"status": {"const": "up"}}),
    "Ready": _object({"status": {"const": "ready"}, "checked": _array(_STRING)}),
    "FieldError": _object({"field": _STRING, "message": _STRING}),
    "Shortage": _object({"sku": _SKU, "requested": _QUANTITY, "available": _ON_HAND}),
    "Problem": _object(
        {
            "type": {"type": "string", "format": "uri"},
            "title": _STRING,
            "status": _integer(400, 599),
            "detail": _STRING,
            "code": {"enum": list(PROBLEMS)},
            "sku": _SKU,
            "requested": _QUANTITY,
            "available": _ON_HAND,
            "shortages": _array(_schema("Shortage"), 1),
            "errors": _array(_schema("FieldError"), 1),
            "down": {"type": "object", "additionalProperties": _STRING},
            "state": _HOLD_STATE,
            "allowed": _array(_STRING, 1),
        },
        required=["type", "title", "status", "detail", "code"],
        description="RFC 9457 problem details with a stable machine-readable code.",
    ),
}


def _problem_name(code: str) -> str:
    return "".join(word.capitalize() for word in code.split("_")) + "Problem"


def _code_schema(code: str) -> Schema:
    """Problem narrowed to one code: its fixed type, title and status, and its extra fields."""
    status, title = PROBLEMS[code]
    schema: Schema = {
        "allOf": [_schema("Problem")],
        "properties": {
            "type": {"const": f"urn:stockkeeper:problem:{code}"},
            "title": {"const": title},
            "status": {"const": status},
            "code": {"const": code},
        },
    }
    if code in PROBLEM_EXTRAS:
        schema["required"] = PROBLEM_EXTRAS[code]
    return schema


SCHEMAS.update({_problem_name(code): _code_schema(code) for code in PROBLEMS})

# --- parameters and headers --------------------------------------------------------------


def _parameter(name: str, where: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema,
    }


PARAMETERS: dict[str, Schema] = {
    "Sku": _parameter("sku", "path", _SKU, "the item's SKU"),
    "Skus": {
        **_parameter(
            "sku",
            "query",
            _array(_SKU, 1, READ_MANY_MAX),
            f"1 to {READ_MANY_MAX} distinct SKUs: ?sku=A-1&sku=B-2",
        ),
        "required": True,
        "style": "form",
        "explode": True,
    },
    "HoldId": _parameter("hold_id", "path", _schema("HoldId"), "the hold's id"),
    "MinVersion": _parameter(
        "min_version", "query", _VERSION, "answer with a version at least this (monotonic reads)"
    ),
    "AfterVersion": _parameter(
        "after_version",
        "query",
        {**_integer(0, VERSION_MAX), "default": 0},
        "entries with a version above this",
    ),
    "Limit": _parameter(
        "limit", "query", {**_integer(1, AUDIT_PAGE_LIMIT_MAX), "default": 100}, "page size"
    ),
    "IdempotencyKey": _parameter(
        "Idempotency-Key",
        "header",
        _TEXT,
        "a repeat with the same key and body replays the first answer and changes nothing; "
        "the same key with another body is 422 idempotency_key_reused",
    ),
}


def _header(description: str, schema: Schema, required: bool = True) -> Schema:
    return {"description": description, "required": required, "schema": schema}


_ETAG_SCHEMA: Schema = {"type": "string", "pattern": ETAG_PATTERN}

HEADERS: dict[str, Schema] = {
    "ETag": _header("the item's version, quoted", _ETAG_SCHEMA),
    "X-Cache": _header(
        "hit when this server answered without reading the database",
        {"enum": ["hit", "miss"]},
    ),
    "Idempotent-Replayed": _header(
        "present (true) when this is the replay of an earlier answer",
        {"const": "true"},
        required=False,
    ),
    "WWW-Authenticate": _header("the scheme to authenticate with", {"const": "Bearer"}),
    "Retry-After": _header(
        "seconds to wait before trying again (here or on another server): sent with `busy` "
        "refusals (too many requests in flight on this worker, or no database connection free "
        "in time) and with reads this server could not serve safely in time",
        {"type": "integer", "minimum": 0},
        required=False,
    ),
    "Allow": _header("the methods of this path", {"const": cors.ALLOW.decode()}),
    "Access-Control-Allow-Origin": _header(
        "the request's Origin (or `*`) when `serve --docs-cors-origin` allows it",
        _STRING,
        required=False,
    ),
    "Vary": _header(
        "sent whenever docs CORS is on: the answer depends on the Origin",
        {"const": "Origin"},
        required=False,
    ),
    "Access-Control-Allow-Methods": _header(
        "granted to an allowed origin's preflight",
        {"const": cors.ALLOWED_METHODS.decode()},
        required=False,
    ),
    "Access-Control-Allow-Headers": _header(
        "the Access-Control-Request-Headers of an allowed origin's preflight, granted",
        _STRING,
        required=False,
    ),
    "Access-Control-Max-Age": _header(
        "seconds a browser may keep the preflight's grant",
        {"type": "integer", "const": cors.PREFLIGHT_MAX_AGE_S},
        required=False,
    ),
}

# --- responses and operations ------------------------------------------------------------


def _success(
    description: str,
    schema: Schema,
    headers: Mapping[str, Schema] | None = None,
    media: str = JSON_MEDIA,
) -> Schema:
    response: Schema = {"description": description, "content": _content(schema, media)}
    if headers:
        response["headers"] = dict(headers)
    return response


def _problems(codes: Iterable[str], refined: Mapping[str, Schema]) -> dict[str, Schema]:
    """One problem+json response per status, naming every code the route can raise with it."""
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):
        by_status.setdefault(PROBLEMS[code][0], []).append(code)
    responses: dict[str, Schema] = {}
    for status, group in sorted(by_status.items()):
        schemas = [refined.get(code, _schema(_problem_name(code))) for code in group]
        response: Schema = {
            "description": "; ".join(f"`{code}`: {PROBLEMS[code][1]}" for code in group),
            "content": _content(
                schemas[0] if len(schemas) == 1 else {"oneOf": schemas}, PROBLEM_MEDIA
            ),
        }
        if status == 401:
            response["headers"] = {"WWW-Authenticate": _ref("headers", "WWW-Authenticate")}
        if status == 503:
            response["headers"] = {"Retry-After": _ref("headers", "Retry-After")}
        responses[str(status)] = response
    return responses


def _operation(
    operation_id: str,
    summary: str,
    role: Role | None,
    success: Mapping[str, Schema],
    codes: Iterable[str] = (),
    parameters: Sequence[str] = (),
    body: str | None = None,
    refined: Mapping[str, Schema] | None = None,
    body_required: bool = True,
) -> Schema:
    """An operation with the problems its role, body and handler can produce, plus 500."""
    all_codes = list(codes)
    operation: Schema = {"operationId": operation_id, "summary": summary}
    if parameters:
        operation["parameters"] = [_ref("parameters", name) for name in parameters]
    if body is not None:
        operation["requestBody"] = {
            "required": body_required,
            "content": _content(_schema(body)),
        }
        all_codes[:0] = BODY_CODES
    if "IdempotencyKey" in parameters and "invalid_request" not in all_codes:
        all_codes.insert(0, "invalid_request")  # a malformed Idempotency-Key header
    if role is not None:
        operation["security"] = [{BEARER: []}]
        operation["x-required-role"] = role.name.lower()
        # Reader is the lowest role: any known token may call a reader route.
        all_codes += ["unauthenticated", "unavailable"] + (
            ["forbidden"] if role > Role.READER else []
        )
    operation["responses"] = {**success, **_problems([*all_codes, "internal_error"], refined or {})}
    return operation


_SKU_PARAMS = ("Sku",)
_WRITE_PARAMS = ("Sku", "IdempotencyKey")
_ETAG = _ref("headers", "ETag")
_REPLAYED = _ref("headers", "Idempotent-Replayed")
_CHANGED = _success(
    "The committed change, or on a replay the original answer.",
    _schema("Change"),
    {"ETag": _ETAG, "Idempotent-Replayed": _REPLAYED},
)
_HOLD_PARAMS = ("HoldId", "IdempotencyKey")
_HOLD_CHANGED = _success(
    "The hold after the request, or on a replay the original answer.",
    _schema("Hold"),
    {"Idempotent-Replayed": _REPLAYED},
)
_SET = "Stock set outright; audited with reason `set` and delta new - old."
_DOCS_CORS = ("Access-Control-Allow-Origin", "Vary")
_PREFLIGHT = (
    "Allow",
    *_DOCS_CORS,
    "Access-Control-Allow-Methods",
    "Access-Control-Max-Age",
    "Access-Control-Allow-Headers",
)
_ORDER_SHORTAGES: Schema = {
    "allOf": [_schema(_problem_name("insufficient_stock"))],
    "required": ["shortages"],
}

PATHS: dict[str, dict[str, Schema]] = {
    "/v1/items": {
        "get": _operation(
            "getItems",
            "Read several items in one request",
            Role.READER,
            {
                "200": _success(
                    "Each item obeys the same freshness and monotonic-read rules as a single "
                    "read; X-Cache is hit only when no item needed a database read.",
                    _schema("ItemBatch"),
                    {"X-Cache": _ref("headers", "X-Cache")},
                )
            },
            ["invalid_request"],
            ("Skus",),
        ),
    },
    "/v1/items/{sku}": {
        "get": _operation(
            "getItem",
            "Read an item",
            Role.READER,
            {
                "200": _success(
                    "The item.",
                    _schema("Item"),
                    {"ETag": _ETAG, "X-Cache": _ref("headers", "X-Cache")},
                )
            },
            ["invalid_request", "unknown_sku"],
            ("Sku", "MinVersion"),
        ),
        "put": _operation(
            "setStock",
            "Create an item or set its stock",
            Role.ADMIN,
            {
                "200": _success(_SET, _schema("Change"), {"ETag": _ETAG}),
                "201": _success(
                    f"Created at version 1. {_SET}", _schema("Change"), {"ETag": _ETAG}
                ),
            },
            parameters=_SKU_PARAMS,
            body="SetStock",
        ),
    },
    "/v1/items/{sku}/purchase": {
        "post": _operation(
            "purchase",
            "Take stock of one item if that many are on hand",
            Role.CLERK,
            {"200": _CHANGED},
            ["unknown_sku", "insufficient_stock", "idempotency_key_reused"],
            _WRITE_PARAMS,
            "Purchase",
        ),
    },
    "/v1/items/{sku}/restock": {
        "post": _operation(
            "restock",
            "Add stock to one item",
            Role.ADMIN,
            {"200": _CHANGED},
            ["unknown_sku", "idempotency_key_reused"],
            _WRITE_PARAMS,
            "Restock",
        ),
    },
    "/v1/items/{sku}/audit": {
        "get": _operation(
            "audit",
            "Page through an item's audit log, oldest first",
            Role.ADMIN,
            {"200": _success("A page of audit entries.", _schema("AuditPage"))},
            ["invalid_request", "unknown_sku"],
            ("Sku", "AfterVersion", "Limit"),
        ),
    },
    "/v1/orders": {
        "post": _operation(
            "order",
            "Take every line of an order, or none",
            Role.CLERK,
            {
                "200": _success(
                    "Every line taken.",
                    _schema("Order"),
                    {
                        "ETag": _header("only when the order has one line", _ETAG_SCHEMA, False),
                        "Idempotent-Replayed": _REPLAYED,
                    },
                )
            },
            ["unknown_sku", "insufficient_stock", "idempotency_key_reused"],
            ("IdempotencyKey",),
            "OrderRequest",
            {"insufficient_stock": _ORDER_SHORTAGES},
        ),
    },
    "/v1/holds": {
        "post": _operation(
            "createHold",
            "Set every line aside for a checkout, or none",
            Role.CLERK,
            {
                "201": _success(
                    "The active hold, or on a replay the original answer.",
                    _schema("Hold"),
                    {"Idempotent-Replayed": _REPLAYED},
                )
            },
            ["unknown_sku", "insufficient_stock", "idempotency_key_reused"],
            ("IdempotencyKey",),
            "HoldRequest",
            {"insufficient_stock": _ORDER_SHORTAGES},
        ),
    },
    "/v1/holds/{hold_id}": {
        "get": _operation(
            "getHold",
            "Read a hold; one past its expires_at is expired, recorded or not",
            Role.CLERK,
            {"200": _success("The hold (its changes empty).", _schema("Hold"))},
            ["unknown_hold"],
            ("HoldId",),
        ),
        "delete": _operation(
            "releaseHold",
            "Give a hold's stock back",
            Role.CLERK,
            {"200": _HOLD_CHANGED},
            ["unknown_hold", "hold_closed", "idempotency_key_reused"],
            _HOLD_PARAMS,
        ),
    },
    "/v1/holds/{hold_id}/confirm": {
        "post": _operation(
            "confirmHold",
            "Sell what a hold holds (or less: the rest is released)",
            Role.CLERK,
            {"200": _HOLD_CHANGED},
            ["unknown_hold", "hold_expired", "hold_closed", "idempotency_key_reused"],
            _HOLD_PARAMS,
            "ConfirmRequest",
            body_required=False,
        ),
    },
    "/v1/holds/{hold_id}/extend": {
        "post": _operation(
            "extendHold",
            "Make a hold expire ttl_s from now",
            Role.CLERK,
            {"200": _HOLD_CHANGED},
            ["unknown_hold", "hold_expired", "hold_closed", "idempotency_key_reused"],
            _HOLD_PARAMS,
            "ExtendRequest",
        ),
    },
    "/healthz": {
        "get": _operation("healthz", "Liveness", None, {"200": _success("Up.", _schema("Health"))})
    },
    "/readyz": {
        "get": _operation(
            "readyz",
            "Readiness: database and cache answer",
            None,
            {"200": _success("Ready.", _schema("Ready"))},
            ["unavailable"],
        )
    },
    "/metrics": {
        "get": _operation(
            "metrics",
            "Prometheus metrics",
            None,
            {"200": _success("Prometheus text exposition format.", _STRING, media="text/plain")},
        )
    },
    "/openapi.json": {
        "get": _operation(
            "openapi",
            "This document",
            None,
            {
                "200": _success(
                    "OpenAPI 3.1.",
                    {"type": "object"},
                    {name: _ref("headers", name) for name in _DOCS_CORS},
                )
            },
        ),
        "options": _operation(
            "openapiPreflight",
            "CORS preflight for this document",
            None,
            {
                "204": {
                    "description": "The grant (Access-Control-Allow-*) only to the preflight "
                    "of an origin `serve --docs-cors-origin` allows; the API's own paths have "
                    "no CORS.",
                    "headers": {name: _ref("headers", name) for name in _PREFLIGHT},
                }
            },
        ),
    },
}

DESCRIPTION = f"""Inventory that never oversells, with a same-transaction audit log.

Roles: `reader` (GET items) < `clerk` (+ purchase, orders, holds) < `admin` (everything); the
role an operation needs is its `x-required-role`. A missing or unknown token is 401, a too-low
role 403.

Bodies are JSON objects of at most {BODY_BYTES_MAX} bytes; integers must be written as JSON
integers. Errors are RFC 9457 problem details with a stable `code`. Besides the problems each
operation lists, the router answers `not_found` (404) for an unknown path and
`method_not_allowed` (405, with `allowed` and an `Allow` header) for a known path's other methods.
A request that fails changes nothing. A 503 with `Retry-After` may be retried after that many
seconds.

The server is `/`: this document's own address. Only this document may be read from another
origin (Swagger UI, say), and only from those `serve --docs-cors-origin` names; the API sends no
CORS headers, so a browser refuses "Try it out" from another origin."""

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "stockkeeper", "version": _version(), "description": DESCRIPTION},
    "servers": [
        {"url": "/", "description": "the server that served this document, at the same address"}
    ],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "parameters": PARAMETERS,
        "headers": HEADERS,
        "securitySchemes": {
            BEARER: {
                "type": "http",
                "scheme": "bearer",
                "description": "a token from `token create`",
            }
        },
    },
}
