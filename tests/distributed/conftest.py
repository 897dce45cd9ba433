from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.distributed.cluster import Cluster, running_cluster

SERVERS = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster"), SERVERS) as started:
        yield started
