from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.distributed.cluster import Cluster, running_cluster
from tests.distributed.redis_server import RedisServer, running_redis

SERVERS = 4


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[Cluster]:
    """The distributed setup: servers on one PostgreSQL and one (private) Redis."""
    tmp = tmp_path_factory.mktemp("cluster")
    with running_cluster(tmp, SERVERS, cache_url=redis_server.url) as started:
        yield started
