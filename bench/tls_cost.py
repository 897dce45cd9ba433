"""What TLS costs a cached read (bench/cached_reads.py) against two private redis-servers
started alike, one plain-text and one TLS-only (a throwaway CA), in the same run.

Usage (from the project folder; needs PostgreSQL, redis-server and the test extra):
    .venv/bin/python -m bench.tls_cost [gets=20000] [rounds=3]
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import uvloop
from tests.distributed.redis_server import RedisTls, running_redis
from tests.tls import make_pki

from bench.cached_reads import run
from stockkeeper.bench.cluster import fresh_schema

POSTGRES_URL = os.environ.get(
    "STOCKKEEPER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def main(gets: int = 20_000, rounds: int = 3) -> None:
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sk-tls-bench-")))
        pki = make_pki(folder)
        plain = stack.enter_context(running_redis())
        tls = stack.enter_context(running_redis(RedisTls(pki.server.cert, pki.server.key, pki.ca)))
        database_url = stack.enter_context(fresh_schema(POSTGRES_URL))
        cache_urls = {"plain": plain.url, "tls": f"{tls.url}?ssl_ca_certs={pki.ca}"}
        uvloop.run(run(database_url, cache_urls, gets, rounds))


if __name__ == "__main__":
    main(*(int(argument) for argument in sys.argv[1:3]))
