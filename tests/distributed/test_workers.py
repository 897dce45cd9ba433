"""`serve --workers N`: N processes behind one port, reporting one set of metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.distributed.checks import put_stock
from tests.distributed.cluster import Cluster, running_cluster
from tests.distributed.storm import Client

pytestmark = pytest.mark.distributed

READS = 200


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("workers"), servers=1, workers=2) as started:
        yield started


def reads_counted(metrics_text: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if (
                sample.name == "stockkeeper_request_duration_seconds_count"
                and sample.labels["route"] == "/v1/items/{sku}"
            ):
                return sample.value
    return 0.0


async def test_metrics_add_up_every_workers_requests(two_workers: Cluster) -> None:
    """Each request lands on one worker; /metrics (answered by one) must count them all."""
    url = two_workers.urls[0]
    async with Client(16) as client:
        await put_stock(client, two_workers, "W-1", 5)
        before = reads_counted(await client.text(f"{url}/metrics"))
        for _ in range(READS):
            answer = await client.call("GET", f"{url}/v1/items/W-1", two_workers.clerk_token)
            assert answer.status == 200
        for _ in range(4):  # whichever worker answers /metrics, the total is the same
            assert reads_counted(await client.text(f"{url}/metrics")) - before == READS
