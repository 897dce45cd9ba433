"""`stockkeeper verify` as a user runs it: a subprocess against running servers. It passes
against stockkeeper, fails against the naive cache-aside baseline naming the rule it breaks, and
exits 2 when it cannot run."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from stockkeeper.bench.cluster import STOCKKEEPER, baseline_command, free_port
from tests.distributed.cluster import Cluster, fresh_schema, running_servers
from tests.distributed.redis_server import running_redis

pytestmark = pytest.mark.distributed

# Every naive fill waits a little after its database read: a write landing then is overwritten
# by the older state it read, so the stale-set race the naive design has is hit every run.
SLOW_FILLS = {"STOCKKEEPER_FAILPOINTS": "service.read.after_fetch=sleep(20)"}


@pytest.fixture(params=["coherent", "naive"])
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Cluster]]:
    kind = str(request.param)
    command: Sequence[str] = (
        (STOCKKEEPER, "serve") if kind == "coherent" else baseline_command(kind)
    )
    env = {n: SLOW_FILLS for n in range(2)} if kind == "naive" else None
    with (
        running_redis() as redis,
        fresh_schema() as database_url,
        running_servers(
            tmp_path, database_url, 2, cache_url=redis.url, env=env, command=command
        ) as cluster,
    ):
        yield kind, cluster


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STOCKKEEPER, "verify", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_verify_passes_on_stockkeeper_and_catches_the_naive_cache(
    servers: tuple[str, Cluster],
) -> None:
    kind, cluster = servers
    urls = [arg for url in cluster.urls for arg in ("--url", url)]
    run = verify(*urls, "--token", cluster.admin_token, "--seconds", "4", "--seed", "7")
    print(run.stdout, run.stderr)
    assert "operations on 44 SKUs" in run.stdout
    if kind == "coherent":
        assert run.returncode == 0, run.stdout + run.stderr
        assert "verdict: CORRECT" in run.stdout
    else:
        assert run.returncode == 1, run.stdout + run.stderr
        assert "verdict: WRONG" in run.stdout
        broken = {line.split()[0] for line in run.stdout.splitlines() if line.startswith("  ")
                  and line.split()[-1].isdigit() and int(line.split()[-1]) > 0}  # fmt: skip
        assert broken & {"went_back", "stale"}, run.stdout


def test_verify_exits_2_when_it_cannot_run(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    run = verify("--url", nowhere, "--token", "x", "--seconds", "1")
    assert run.returncode == 2 and "cannot reach" in run.stderr, run.stderr
    run = verify("--token", "x")
    assert run.returncode == 2 and "--url" in run.stderr, run.stderr
    with fresh_schema() as database_url, running_servers(tmp_path, database_url, 1) as cluster:
        url = cluster.urls[0]
        run = verify("--url", url, "--token", "not-a-token", "--seconds", "1")
        assert run.returncode == 2 and "does not know this token" in run.stderr, run.stderr
        run = verify("--url", url, "--token", cluster.clerk_token, "--seconds", "1")
        assert run.returncode == 2 and "needs an admin token" in run.stderr, run.stderr
        interrupted = interrupt_after(
            2.0, "--url", url, "--token", cluster.admin_token, "--seconds", "60"
        )
        assert interrupted.returncode == 0, interrupted.stdout + interrupted.stderr
        assert "verdict: CORRECT" in interrupted.stdout


def interrupt_after(seconds: float, *args: str) -> subprocess.CompletedProcess[str]:
    """Ctrl-C stops the run early; what was recorded is judged all the same."""
    process = subprocess.Popen(
        [STOCKKEEPER, "verify", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(seconds)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
