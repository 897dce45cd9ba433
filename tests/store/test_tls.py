"""PostgreSQL over TLS: libpq's `sslmode` and `sslrootcert` in the database URL, against a
private server with ssl=on that takes TLS connections only (tls_postgres), and the shared one,
which has ssl=off. `serve` running on it is tests/test_cli_tls.py's."""

from __future__ import annotations

import asyncpg
import pytest

from stockkeeper.domain import Unavailable
from stockkeeper.store import open_store
from tests.conftest import POSTGRES_URL
from tests.distributed.postgres_server import PostgresServer
from tests.tls import OTHER_HOST, Pki, postgres_url


async def test_verify_full_checks_the_host_name_and_verify_ca_does_not(
    tls_postgres: PostgresServer, pki: Pki
) -> None:
    """OTHER_HOST reaches the same server, but its certificate does not name it."""
    full = postgres_url(tls_postgres.port, pki.ca, host=OTHER_HOST)
    with pytest.raises(Unavailable) as refused:
        await open_store(full)
    assert str(refused.value) == (
        f"database unreachable at {full}: TLS: certificate verify failed: IP address mismatch, "
        f"certificate is not valid for '{OTHER_HOST}'."
    )
    store = await open_store(postgres_url(tls_postgres.port, pki.ca, "verify-ca", OTHER_HOST))
    await store.close()


async def test_a_wrong_ca_is_a_clear_error(tls_postgres: PostgresServer, pki: Pki) -> None:
    """OpenSSL's reason, without the library tag and C source line Python adds."""
    url = postgres_url(tls_postgres.port, pki.other_ca)
    with pytest.raises(Unavailable) as refused:
        await open_store(url)
    assert str(refused.value) == (
        f"database unreachable at {url}: TLS: certificate verify failed: "
        "unable to get local issuer certificate"
    )


async def test_require_never_falls_back_to_plain_text() -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        ssl = await conn.fetchval("SHOW ssl")
    finally:
        await conn.close()
    if ssl != "off":
        pytest.skip("needs the shared PostgreSQL with ssl=off")
    with pytest.raises(Unavailable, match="rejected SSL upgrade"):
        await open_store(f"{POSTGRES_URL}?sslmode=require")
