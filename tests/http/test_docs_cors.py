"""Opt-in CORS for `/openapi.json` alone, so Swagger UI on another origin can load it: through
the app, and through `stockkeeper serve` (flag and environment). The API stays without CORS."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from stockkeeper.domain import Role
from stockkeeper.http.app import App
from stockkeeper.http.cors import DocsCors, parse_origin, parse_origins
from stockkeeper.service import Inventory
from tests.http.test_openapi import assert_matches_spec
from tests.processes import STOCKKEEPER, free_port, serving
from tests.test_cli import environment

SWAGGER = "https://swagger.example"
LOCAL_UI = "http://localhost:3000"
STRANGER = "https://stranger.example"
DOCS = "/openapi.json"


def preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-trace-id",
    }


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("access-")}


@pytest.fixture
async def docs_http(inventory: Inventory) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app whose document two origins may read."""
    app = App.for_inventory(inventory, docs_cors=DocsCors.of([SWAGGER, LOCAL_UI]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stockkeeper") as http:
        yield http


async def test_an_allowed_origin_gets_the_preflight_grant_and_the_document(
    docs_http: httpx.AsyncClient,
) -> None:
    answer = await docs_http.options(DOCS, headers=preflight(SWAGGER))
    assert answer.status_code == 204 and answer.content == b""
    assert "content-length" not in answer.headers and "content-type" not in answer.headers
    assert answer.headers["allow"] == "GET, OPTIONS"
    assert answer.headers["vary"] == "Origin"
    assert cors_headers(answer) == {
        "access-control-allow-origin": SWAGGER,
        "access-control-allow-methods": "GET",
        "access-control-allow-headers": "x-trace-id",
        "access-control-max-age": "600",
    }
    assert_matches_spec(answer, DOCS)

    document = await docs_http.get(DOCS, headers={"Origin": LOCAL_UI})
    assert document.status_code == 200
    assert document.headers["access-control-allow-origin"] == LOCAL_UI
    assert document.headers["vary"] == "Origin"
    assert_matches_spec(document, DOCS)
    validate(document.json())


async def test_another_origin_gets_no_grant(docs_http: httpx.AsyncClient) -> None:
    answer = await docs_http.options(DOCS, headers=preflight(STRANGER))
    assert answer.status_code == 204 and answer.headers["allow"] == "GET, OPTIONS"
    assert cors_headers(answer) == {}
    document = await docs_http.get(DOCS, headers={"Origin": STRANGER})
    assert document.status_code == 200 and cors_headers(document) == {}
    assert document.headers["vary"] == "Origin", "the answer depends on the Origin"
    plain = await docs_http.options(DOCS, headers={"Origin": SWAGGER})
    assert cors_headers(plain) == {"access-control-allow-origin": SWAGGER}, "no preflight: no grant"


async def test_the_api_itself_answers_no_origin(
    docs_http: httpx.AsyncClient, inventory: Inventory
) -> None:
    token = await inventory.create_token("reader", Role.READER)
    await inventory.set_stock("A-1", 3, user="t")
    read = await docs_http.get(
        "/v1/items/A-1", headers={"Origin": SWAGGER, "Authorization": f"Bearer {token}"}
    )
    assert read.status_code == 200 and cors_headers(read) == {}
    assert "vary" not in read.headers
    for path in ("/v1/items/A-1", "/v1/orders", "/healthz"):
        answer = await docs_http.options(path, headers=preflight(SWAGGER))
        assert answer.status_code == 405, path
        assert cors_headers(answer) == {}, path


async def test_docs_cors_is_off_by_default(inventory: Inventory) -> None:
    transport = httpx.ASGITransport(app=App.for_inventory(inventory))
    async with httpx.AsyncClient(transport=transport, base_url="http://stockkeeper") as http:
        answer = await http.options(DOCS, headers=preflight(SWAGGER))
        document = await http.get(DOCS, headers={"Origin": SWAGGER})
    assert answer.status_code == 204 and answer.headers["allow"] == "GET, OPTIONS"
    assert cors_headers(answer) == {} and cors_headers(document) == {}
    assert "vary" not in document.headers
    assert_matches_spec(answer, DOCS)


def test_origins_are_compared_as_browsers_send_them() -> None:
    assert parse_origins(" https://Swagger.Example , http://localhost:3000,") == {
        SWAGGER,
        LOCAL_UI,
    }
    anyone = DocsCors.of(["*"])
    assert anyone.get_headers({b"origin": b"https://x.example"}) == [
        (b"vary", b"Origin"),
        (b"access-control-allow-origin", b"*"),
    ]
    for bad in ("swagger.example", "https://swagger.example/docs", "ftp://x", ""):
        with pytest.raises(ValueError, match="not an origin"):
            parse_origin(bad)


def test_serve_grants_the_origins_its_flags_name_and_serves_a_valid_document(
    tmp_path: Path,
) -> None:
    port = free_port()
    database = f"sqlite:///{tmp_path / 'docs.db'}"
    argv = [STOCKKEEPER, "serve", "--port", str(port), "--database", database]
    argv += ["--docs-cors-origin", SWAGGER, "--docs-cors-origin", LOCAL_UI]
    with serving(argv, port, tmp_path, environment()) as server:
        answer = httpx.options(f"{server.url}{DOCS}", headers=preflight(LOCAL_UI))
        document = httpx.get(f"{server.url}{DOCS}", headers={"Origin": SWAGGER})
        stranger = httpx.get(f"{server.url}{DOCS}", headers={"Origin": STRANGER})
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == LOCAL_UI
    assert document.headers["access-control-allow-origin"] == SWAGGER
    assert "access-control-allow-origin" not in stranger.headers
    validate(document.json())


def test_serve_reads_the_origins_from_the_environment_and_refuses_a_bad_one(
    tmp_path: Path,
) -> None:
    port = free_port()
    database = f"sqlite:///{tmp_path / 'docs.db'}"
    argv = [STOCKKEEPER, "serve", "--port", str(port), "--database", database]
    env = environment(STOCKKEEPER_DOCS_CORS_ORIGINS=f"{LOCAL_UI}, {SWAGGER.upper()}")
    with serving(argv, port, tmp_path, env) as server:
        answers = [
            httpx.get(f"{server.url}{DOCS}", headers={"Origin": origin})
            for origin in (SWAGGER, LOCAL_UI)
        ]
    assert [a.headers.get("access-control-allow-origin") for a in answers] == [SWAGGER, LOCAL_UI]
    refused = subprocess.run(
        argv,
        env=environment(STOCKKEEPER_DOCS_CORS_ORIGINS="swagger.example"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 2
    assert "'swagger.example' is not an origin" in refused.stderr
