"""The Redis Cluster harness on a real cluster: what it reports is what the nodes say after
each change it makes, so tests built on it start from the topology they believe."""

from __future__ import annotations

import pytest

from tests.distributed.redis_cluster import SLOTS, cli, running_redis_cluster

pytestmark = pytest.mark.distributed

MOVED_SLOTS = 100


def test_the_harness_creates_reshards_fails_over_and_survives_a_killed_primary() -> None:
    with running_redis_cluster(primaries=3, replicas=1, node_timeout_ms=1000) as cluster:
        primaries = cluster.primaries()
        assert len(primaries) == 3
        assert all(len(cluster.replicas_of(p)) == 1 for p in primaries)
        assert sorted(s for p in primaries for s in cluster.slots_of(p)) == list(range(SLOTS))
        assert cluster.seed_url == f"redis://127.0.0.1:{cluster.nodes[0].port}/0"

        assert cli(cluster.nodes[0], "-c", "set", "sku:1", "7") == "OK"
        slot = int(cli(cluster.nodes[0], "cluster", "keyslot", "sku:1"))
        owner = cluster.node_for_slot(slot)
        assert owner in primaries and cli(owner, "get", "sku:1") == "7"

        source, target = primaries[0], primaries[1]
        before = {p.node_id: len(cluster.slots_of(p)) for p in primaries}
        cluster.reshard(source, target, MOVED_SLOTS)
        assert len(cluster.slots_of(source)) == before[source.node_id] - MOVED_SLOTS
        assert len(cluster.slots_of(target)) == before[target.node_id] + MOVED_SLOTS

        demoted = primaries[2]
        (promoted,) = cluster.replicas_of(demoted)
        slots = cluster.slots_of(demoted)
        cluster.failover(promoted)
        assert promoted in cluster.primaries() and demoted not in cluster.primaries()
        assert cluster.replicas_of(promoted) == [demoted]
        assert cluster.slots_of(promoted) == slots

        dead = target
        (heir,) = cluster.replicas_of(dead)
        slots = cluster.slots_of(dead)
        cluster.kill(dead)
        cluster.wait_for_failover_of(dead)
        assert heir in cluster.primaries() and cluster.slots_of(heir) == slots
        assert cluster.slots_of(dead) == []
        assert cli(heir, "-c", "get", "sku:1") == "7"
