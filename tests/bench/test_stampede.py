"""`stockkeeper bench stampede`: its verdict, and the command on a cluster with the coherent
cache (correct) and on one without a cache (every read a database read: wrong)."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stockkeeper.bench.stampede import verdict
from tests.conftest import POSTGRES_URL
from tests.processes import STOCKKEEPER

RUN_TIMEOUT_S = 180


def test_at_most_one_database_read_per_key_per_server_is_correct() -> None:
    assert verdict(20, Counter({"200": 8000}), 0, [20, 0, 3, 19]) == []


def test_a_server_reading_a_key_twice_is_wrong() -> None:
    (problem,) = verdict(20, Counter({"200": 8000}), 0, [21, 0, 0, 0])
    assert "server 0 read the database 21 times for 20 keys" in problem


def test_failed_and_wrong_reads_are_wrong() -> None:
    problems = verdict(2, Counter({"200": 98, "503 unavailable": 2}), 1, [1, 1])
    assert problems == [
        "2 reads answered 503 unavailable",
        "1 reads answered another state than the one written",
    ]


def run_bench(tmp_path: Path, cache: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    path = tmp_path / "stampede.json"
    size = ("--servers", "2", "--keys", "5", "--reads", "200")
    where = ("--database", POSTGRES_URL, "--cache", cache, "--json", str(path))
    done = subprocess.run(
        [STOCKKEEPER, "bench", "stampede", *size, *where],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    return done, json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.distributed
def test_the_coherent_cache_reads_each_cold_key_once_per_server(tmp_path: Path) -> None:
    done, result = run_bench(tmp_path, "redis-private")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict: CORRECT" in done.stdout
    assert result["outcomes"] == {"200": 1000} and result["wrong_answers"] == 0
    assert all(reads <= 5 for reads in result["db_reads_per_server"])


@pytest.mark.distributed
def test_without_a_cache_the_stampede_is_judged_wrong(tmp_path: Path) -> None:
    """`memory://` on PostgreSQL caches nothing: 500 database reads per server for 5 keys."""
    done, result = run_bench(tmp_path, "memory://")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "verdict: WRONG" in done.stdout
    assert result["db_reads_per_server"] == [500, 500]
