"""Every store test that takes `database_url` runs through PgBouncer too: the store is where a
transaction pooler's limits (no session state, no kept prepared statements) would show."""

from __future__ import annotations

import pytest

from tests.conftest import WITH_PGBOUNCER, backend_url


@pytest.fixture(params=WITH_PGBOUNCER)
def database_url(request: pytest.FixtureRequest) -> str:
    return backend_url(request)
