"""What TLS costs a cached read (bench/cached_reads.py) against two private redis-servers
started alike, one plain-text and one TLS-only (a throwaway CA), in the same run.

Usage (from the project folder; needs PostgreSQL, redis-server and the test extra):
    .venv/bin/python -m bench.tls_cost [gets=20000] [rounds=3]
"""

from __future__ import annotations

import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from tests.distributed.redis_server import RedisTls, running_redis
from tests.tls import make_pki

from bench.cached_reads import compare


def plain_and_tls(stack: ExitStack) -> dict[str, str]:
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sk-tls-bench-")))
    pki = make_pki(folder)
    plain = stack.enter_context(running_redis())
    tls = stack.enter_context(running_redis(RedisTls(pki.server.cert, pki.server.key, pki.ca)))
    return {"plain": plain.url, "tls": f"{tls.url}?ssl_ca_certs={pki.ca}"}


def main(gets: int = 20_000, rounds: int = 3) -> None:
    compare(plain_and_tls, gets, rounds)


if __name__ == "__main__":
    main(*(int(argument) for argument in sys.argv[1:3]))
