"""The benchmark's baseline servers, each started by the real cluster launcher on the real
PostgreSQL and a private Redis, as the benchmark starts them."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from stockkeeper.bench.baselines import HELLO_BODY
from stockkeeper.bench.cluster import baseline_command, local_cluster
from tests.conftest import POSTGRES_URL

pytestmark = [pytest.mark.distributed, pytest.mark.postgres]

TIMEOUT_S = 10.0


def metric(text: str, name: str) -> float:
    """One sample's value in a Prometheus exposition (0 when absent)."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_the_naive_baseline_is_cache_aside_with_delete_on_write() -> None:
    with local_cluster(1, database_url=POSTGRES_URL, command=baseline_command("naive")) as cluster:
        sku = f"B-{uuid.uuid4().hex[:12]}"
        admin = {"Authorization": f"Bearer {cluster.admin_token}"}
        clerk = {"Authorization": f"Bearer {cluster.clerk_token}"}
        with httpx.Client(base_url=cluster.urls[0], timeout=TIMEOUT_S) as http:

            def get() -> tuple[str, dict[str, int]]:
                response = http.get(f"/v1/items/{sku}", headers=clerk)
                assert response.status_code == 200, response.text
                body = response.json()
                return response.headers["x-cache"], {k: body[k] for k in ("on_hand", "version")}

            put = http.put(f"/v1/items/{sku}", json={"on_hand": 5}, headers=admin)
            assert put.status_code == 201, put.text
            assert get() == ("miss", {"on_hand": 5, "version": 1})
            assert get() == ("hit", {"on_hand": 5, "version": 1})

            bought = http.post(f"/v1/items/{sku}/purchase", json={"quantity": 2}, headers=clerk)
            assert bought.status_code == 200, bought.text
            assert get() == ("miss", {"on_hand": 3, "version": 2})
            assert get() == ("hit", {"on_hand": 3, "version": 2})

            exposition = http.get("/metrics").text
            hits = 'stockkeeper_cache_requests_total{result="hit"}'
            misses = 'stockkeeper_cache_requests_total{result="miss"}'
            assert metric(exposition, hits) == 2
            assert metric(exposition, misses) == 2
            assert metric(exposition, "stockkeeper_item_database_reads_total") == 2


def test_the_hello_baseline_answers_everything_with_one_item() -> None:
    requests = [
        ("GET", "/v1/items/ANY", None),
        ("POST", "/v1/items/ANY/purchase", b'{"quantity": 1}'),
        ("PUT", "/no/such/path?x=1", b"x" * 100_000),
        ("DELETE", "/", None),
    ]
    with (
        local_cluster(1, database_url=POSTGRES_URL, command=baseline_command("hello")) as cluster,
        httpx.Client(base_url=cluster.urls[0], timeout=TIMEOUT_S) as http,
    ):
        for method, path, body in requests:
            response = http.request(method, path, content=body)
            assert response.status_code == 200, (method, path)
            assert response.content == HELLO_BODY
            assert response.headers["content-type"] == "application/json"
            assert response.headers["etag"] == '"1"'
