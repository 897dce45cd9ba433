"""What Redis Cluster costs a cached read (bench/cached_reads.py): one private redis-server
against a private 3-primary cluster with a replica each (tests/distributed/redis_cluster.py),
the same machine, the same run. On the cluster each read is routed: the key's slot (CRC16), the
node's own connection.

Usage (from the project folder; needs PostgreSQL, redis-server and the test extra):
    .venv/bin/python -m bench.cluster_cost [gets=20000] [rounds=3]
"""

from __future__ import annotations

import sys
from contextlib import ExitStack

from tests.distributed.redis_cluster import running_redis_cluster
from tests.distributed.redis_server import running_redis

from bench.cached_reads import compare


def single_and_cluster(stack: ExitStack) -> dict[str, str]:
    single = stack.enter_context(running_redis())
    cluster = stack.enter_context(running_redis_cluster())
    return {"single": single.url, "cluster": cluster.seed_url}


def main(gets: int = 20_000, rounds: int = 3) -> None:
    compare(single_and_cluster, gets, rounds)


if __name__ == "__main__":
    main(*(int(argument) for argument in sys.argv[1:3]))
