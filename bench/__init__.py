"""Measurements run by hand (each module says how); results in BENCHMARKS.md."""

import os

from stockkeeper.bench.cluster import LOCAL_POSTGRES_URL

POSTGRES_URL = os.environ.get("STOCKKEEPER_TEST_POSTGRES_URL", LOCAL_POSTGRES_URL)
"""Where the scripts make their fresh schemas: the tests' database unless told otherwise."""
