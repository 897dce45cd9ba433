"""Tokens across real servers: a token made by the CLI works at once everywhere, a revoked one
is refused by every server within 1 s, and the hourly key purge runs once per cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.distributed.checks import put_stock
from tests.distributed.cluster import Cluster, running_cluster
from tests.distributed.storm import Client
from tests.processes import STOCKKEEPER

pytestmark = pytest.mark.distributed

SERVERS = 2
REVOKED_WITHIN_S = 1.0
POLL_S = 0.005
WAIT_S_MAX = 10.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("tokens"), SERVERS) as started:
        yield started


async def cli(cluster: Cluster, *args: str) -> str:
    """Run `stockkeeper ARGS --database …`; its stdout, after a zero exit."""
    proc = await asyncio.create_subprocess_exec(
        STOCKKEEPER,
        *args,
        "--database",
        cluster.database_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S_MAX)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def listed(cluster: Cluster, name: str) -> list[str]:
    """The `token list` row of the token named `name` (no spaces in it), cell by cell."""
    rows = [line.split() for line in (await cli(cluster, "token", "list")).splitlines()[1:]]
    (row,) = [row for row in rows if row[1] == name]
    return row


async def first_refusal_at(client: Client, url: str, token: str) -> float:
    """Poll GET with `token` until it is refused: the wall-clock time of the first 401 (every
    answer before it must be 200, and it must stay refused)."""
    deadline = time.monotonic() + WAIT_S_MAX
    while time.monotonic() < deadline:
        answer = await client.call("GET", f"{url}/v1/items/T-1", token)
        if answer.status == 401:
            refused_at = time.time()
            for _ in range(5):
                assert (await client.call("GET", f"{url}/v1/items/T-1", token)).status == 401
            return refused_at
        assert answer.status == 200, answer.body
        await asyncio.sleep(POLL_S)
    pytest.fail(f"{url} still accepted the revoked token after {WAIT_S_MAX} s")


async def test_a_cli_token_works_at_once_and_every_server_refuses_it_within_1_s_of_revoke(
    pair: Cluster,
) -> None:
    async with Client(8) as client:
        await put_stock(client, pair, "T-1", 3)
        token = (await cli(pair, "token", "create", "kiosk", "--role", "reader")).strip()
        for url in pair.urls:  # the servers have not seen it: their first request must work
            assert (await client.call("GET", f"{url}/v1/items/T-1", token)).status == 200
        token_id, *_, revoked = await listed(pair, "kiosk")
        assert revoked == "no"

        pollers = [asyncio.create_task(first_refusal_at(client, u, token)) for u in pair.urls]
        assert (await cli(pair, "token", "revoke", token_id)).startswith(
            f"revoked token {token_id}"
        )
        refused_at = await asyncio.gather(*pollers)

        # The database's clock at the start of the revoking transaction: before its commit.
        *_, revoked = await listed(pair, "kiosk")
        revoked_at = datetime.fromisoformat(revoked).timestamp()
        delays_s = [at - revoked_at for at in refused_at]
        assert all(delay < REVOKED_WITHIN_S for delay in delays_s), delays_s
        # Everyone else is unaffected.
        for url in pair.urls:
            answer = await client.call("GET", f"{url}/v1/items/T-1", pair.clerk_token)
            assert answer.status == 200


def purges(metrics_text: str) -> dict[str, float]:
    return {
        sample.labels["result"]: sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "stockkeeper_idempotency_key_purges_total"
    }


async def test_the_key_purge_runs_on_one_server_of_the_cluster(pair: Cluster) -> None:
    """Every server asks for the purge as it starts; one of them runs it."""
    deadline = time.monotonic() + WAIT_S_MAX
    async with Client(2) as client:
        while True:
            seen = [purges(await client.text(f"{url}/metrics")) for url in pair.urls]
            if all(sum(counts.values()) >= 1 for counts in seen):
                break
            assert time.monotonic() < deadline, f"not every server asked for the purge: {seen}"
            await asyncio.sleep(0.1)
    assert sum(counts.get("ran", 0) for counts in seen) == 1, seen
