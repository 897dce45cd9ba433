"""STOCKKEEPER_FAILPOINTS_FILE in a real server: the stress run's `failpoint` fault only writes
the file, so without this test a server that ignored it would still count the fault as fired."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.distributed.checks import put_stock
from tests.distributed.cluster import Cluster, fresh_schema, running_servers
from tests.distributed.storm import Client
from tests.eventually import eventually

pytestmark = pytest.mark.distributed


def test_a_running_server_arms_and_disarms_what_its_failpoints_file_says(tmp_path: Path) -> None:
    spec = tmp_path / "failpoints"
    env = {0: {"STOCKKEEPER_FAILPOINTS_FILE": str(spec)}}
    with fresh_schema() as database_url, running_servers(tmp_path, database_url, 1, env=env) as c:
        asyncio.run(follows(c, spec))


async def follows(c: Cluster, spec: Path) -> None:
    async with Client(4) as client:
        await put_stock(client, c, "FP-1", 1000)
        n = [0]

        async def purchase_status() -> int:
            n[0] += 1  # a keyed purchase is a transaction: it passes before_audit
            answer = await client.call(
                "POST",
                f"{c.urls[0]}/v1/items/FP-1/purchase",
                c.clerk_token,
                json={"quantity": 1},
                headers={"Idempotency-Key": f"fp-{n[0]}"},
            )
            return answer.status

        assert await purchase_status() == 200
        await asyncio.to_thread(spec.write_text, "store.write.before_audit=error")

        async def failing() -> bool:
            return await purchase_status() >= 500

        assert await eventually(failing, 5), "armed from the file"
        await asyncio.to_thread(spec.write_text, "")

        async def working() -> bool:
            return await purchase_status() == 200

        assert await eventually(working, 5), "disarmed from the file"
