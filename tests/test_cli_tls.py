"""`stockkeeper serve` on a TLS PostgreSQL and a TLS Redis, as an operator runs it: a purchase
and a cached read over HTTP; and every TLS setup that cannot work stops the start with one
line that names the URL (never its password) and the reason."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from stockkeeper.bench.cluster import fresh_schema
from tests.cache.conftest import REDIS_URL
from tests.distributed.cluster import running_servers
from tests.distributed.postgres_server import PostgresServer
from tests.distributed.redis_server import RedisServer
from tests.processes import free_port
from tests.test_cli import assert_one_line_error, run
from tests.tls import Pki, postgres_url

PLAIN_TEXT_REDIS = "rediss" + REDIS_URL.removeprefix("redis")
HIT_WAIT_S = 10.0  # a worker whose first connect timed out trips, then reconnects


def test_serve_over_tls_to_postgres_and_redis(
    tmp_path: Path, tls_postgres: PostgresServer, tls_redis: RedisServer, pki: Pki
) -> None:
    """Both servers take TLS only, so the start (schema, first admin token), the token made by
    `token create`, the purchase and the cache hit all went over TLS, verified."""
    database = postgres_url(tls_postgres.port, pki.ca)
    cache = f"{tls_redis.url}?ssl_ca_certs={pki.ca}"
    with (
        fresh_schema(database) as database_url,
        running_servers(tmp_path, database_url, 1, cache_url=cache) as cluster,
        httpx.Client(base_url=cluster.urls[0], timeout=10) as http,
    ):
        admin = {"Authorization": f"Bearer {cluster.admin_token}"}
        clerk = {"Authorization": f"Bearer {cluster.clerk_token}"}
        assert http.get("/readyz").status_code == 200
        assert http.put("/v1/items/TLS-1", headers=admin, json={"on_hand": 5}).status_code == 201
        bought = http.post("/v1/items/TLS-1/purchase", headers=clerk, json={"quantity": 2})
        assert bought.json()["on_hand"] == 3, bought.text
        deadline = time.monotonic() + HIT_WAIT_S
        while (read := http.get("/v1/items/TLS-1", headers=clerk)).headers["X-Cache"] != "hit":
            assert time.monotonic() < deadline, "no cache hit"
            time.sleep(0.05)
        assert (read.json()["on_hand"], read.json()["version"]) == (3, 2)


BAD_STARTS = {
    "cache-wrong-ca": (
        "cache",
        "{tls_redis}?ssl_ca_certs={pki.other_ca}",
        "TLS: certificate verify failed: (unable to get local issuer|self-signed) certificate",
    ),
    "cache-expired": (
        "cache",
        "{expired_redis}?ssl_ca_certs={pki.ca}",
        "TLS: certificate verify failed: certificate has expired",
    ),
    "cache-plain-text": (
        "cache",
        "{plain_text_redis}?ssl_ca_certs={pki.ca}",
        r"no answer to the TLS handshake within \d+ ms \(a plain-text port\?\)",
    ),
    "database-wrong-ca": (
        "database",
        "{tls_postgres}&sslrootcert={pki.other_ca}",
        "TLS: certificate verify failed: unable to get local issuer certificate",
    ),
}


@pytest.mark.parametrize(("which", "url", "says"), BAD_STARTS.values(), ids=BAD_STARTS.keys())
async def test_a_tls_setup_that_cannot_work_stops_the_start_with_one_line(
    tmp_path: Path,
    tls_postgres: PostgresServer,
    tls_redis: RedisServer,
    expired_redis: RedisServer,
    pki: Pki,
    which: str,
    url: str,
    says: str,
) -> None:
    """A password in the URL stays out of the line; nothing falls back to plain text."""
    url = url.format(
        tls_redis=tls_redis.url.replace("rediss://", "rediss://:hunter2@"),
        expired_redis=expired_redis.url,
        plain_text_redis=PLAIN_TEXT_REDIS,
        tls_postgres=postgres_url(tls_postgres.port, None).replace(
            "postgres@", "postgres:hunter2@"
        ),
        pki=pki,
    )
    database = url if which == "database" else f"sqlite:///{tmp_path / 'tls.db'}"
    cache = url if which == "cache" else "memory://"
    result = await run(
        "serve", "--port", str(free_port()), "--database", database, "--cache", cache, cwd=tmp_path
    )
    line = assert_one_line_error(result)
    assert "hunter2" not in line
    shown = url.replace(":hunter2@", "@").replace("//@", "//")
    assert line.startswith(f"Error: {which} "), line
    assert f" {shown}: " in line, line
    assert re.search(says, line), line
