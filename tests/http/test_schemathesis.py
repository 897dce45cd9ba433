"""Schemathesis over every /v1 endpoint of a real `stockkeeper serve`, on both backends.

Every answer to a generated request, valid or not, must be one /openapi.json declares for
that operation (status, media type, headers, body schema), never a 5xx, and invalid input
must be refused. The generated SKUs and hold ids are steered, some of the time, to stocked
items and to holds that exist, so purchases, orders, confirms, extends and releases run on
real stock and real holds too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from stockkeeper.domain import Role
from stockkeeper.holds import HOLD_ID_PATTERN
from stockkeeper.http.openapi import SPEC
from stockkeeper.service import Inventory
from tests.processes import STOCKKEEPER, free_port, serving

# An unknown query parameter is ignored, as HTTP APIs do (a cache-busting `?_=…` must not
# break a read), so it is not generated as invalid data.
CONFIG = SchemathesisConfig.from_dict({"generation": {"allow-extra-parameters": False}})
SCHEMA = schemathesis.openapi.from_dict(SPEC, config=CONFIG).include(path_regex=r"^/v1/")
STOCKED = ("SCHEMA-A", "SCHEMA-B", "SCHEMA-C")
SKU_PATTERN = SPEC["components"]["schemas"]["Sku"]["pattern"]
EXAMPLES_PER_OPERATION = 60


@dataclass
class Served:
    url: str
    headers: dict[str, str]
    hold_ids: list[str] = field(default_factory=list)  # holds the server created
    keys_sent: set[object] = field(default_factory=set)  # Idempotency-Key values sent


def _pick(value: object, valid: str, choices: tuple[str, ...] | list[str]) -> str | None:
    """One of `choices` for three valid generated values in four (a stable choice per value),
    so the run mixes real items and holds with unknown ones; an invalid value stays, as the
    negative case it is."""
    digest = hashlib.sha256(repr(value).encode()).digest()
    if not isinstance(value, str) or not re.fullmatch(valid, value):
        return None
    if not choices or digest[0] % 4 == 0:
        return None
    return choices[digest[1] % len(choices)]


SERVED: list[Served] = []  # the running server of the current test, for the hooks


def _skus(body: Any) -> list[object] | None:
    if not isinstance(body, dict) or not isinstance(body.get("lines"), list):
        return None
    return [line.get("sku") for line in body["lines"] if isinstance(line, dict)]


def _breaks_a_prose_rule(body: Any) -> bool:
    """The rules the schemas state in prose only, as JSON Schema cannot: each SKU once in a
    hold, and integers written as integers (to JSON Schema, 5.0 is an integer)."""
    skus = _skus(body) or []
    return len(skus) != len(set(map(repr, skus))) or _has_integral_float(body)


def _has_integral_float(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(_has_integral_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_integral_float(v) for v in value)
    return False


@SCHEMA.hook
def map_body(context: Any, body: Any) -> Any:
    skus = _skus(body)
    if skus:
        sku = _pick(skus[0], SKU_PATTERN, STOCKED)
        if sku is not None and sku not in skus:
            body["lines"][0]["sku"] = sku
    return body


@SCHEMA.hook
def map_path_parameters(context: Any, path_parameters: Any) -> Any:
    if not isinstance(path_parameters, dict):
        return path_parameters
    if "sku" in path_parameters:
        sku = _pick(path_parameters["sku"], SKU_PATTERN, STOCKED)
        if sku is not None:
            path_parameters["sku"] = sku
    if SERVED and "hold_id" in path_parameters:
        hold_id = _pick(path_parameters["hold_id"], HOLD_ID_PATTERN, SERVED[-1].hold_ids)
        if hold_id is not None:
            path_parameters["hold_id"] = hold_id
    return path_parameters


@pytest.fixture
async def served(database_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    async with await Inventory.open(database_url) as inventory:
        token = await inventory.create_token("schemathesis", Role.ADMIN)  # every route
        for sku in STOCKED:
            await inventory.set_stock(sku, 1_000_000, user="admin")
    port = free_port()
    argv = [STOCKKEEPER, "serve", "--database", database_url, "--port", str(port)]
    argv += ["--drain-grace-ms", "0"]
    with serving(argv, port, tmp_path) as server:
        SERVED.append(Served(server.url, {"Authorization": f"Bearer {token}"}))
        try:
            yield SERVED[-1]
        finally:
            SERVED.clear()


@SCHEMA.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,  # CI runs the same cases every time; a failure reproduces
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_answer_is_one_the_spec_declares(case: schemathesis.Case, served: Served) -> None:
    key = case.headers.get("Idempotency-Key") if case.headers else None
    reused = key in served.keys_sent  # generated keys repeat, with other requests
    served.keys_sent.add(key)
    prose = _breaks_a_prose_rule(case.body)
    # A request valid to the schema may still be refused: by the prose rules, or as a reuse of
    # an earlier case's key (422 idempotency_key_reused); every answer must still conform.
    excluded = [schemathesis.checks.positive_data_acceptance] if prose or reused else []
    response = case.call_and_validate(
        base_url=served.url, headers=served.headers, excluded_checks=excluded
    )
    if prose:
        assert 400 <= response.status_code < 500, response.text
    if case.operation.path == "/v1/holds" and response.status_code == 201:
        served.hold_ids.append(response.json()["id"])
