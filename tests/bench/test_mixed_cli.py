"""`stockkeeper bench mixed` end to end at CI size: its own clusters, baselines included, and
once against running servers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from stockkeeper.bench.cluster import local_cluster
from tests.bench.test_oversell import POSTGRES_URL, STOCKKEEPER

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)"),
]
SMALL = ("--rate", "400", "--seconds", "2", "--warmup", "0.5", "--connections", "4")
RUN_TIMEOUT_S = 300


def run_mixed(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STOCKKEEPER, "bench", "mixed", *SMALL, *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def test_the_systems_side_by_side_with_a_report(tmp_path: Path) -> None:
    done = run_mixed(
        *("--servers", "2", "--systems", "hello,naive,coherent", "--database", POSTGRES_URL),
        *("--report", str(tmp_path)),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    systems = {s["system"]: s for s in result["systems"]}
    assert list(systems) == ["hello", "naive", "coherent"]
    for system in systems.values():
        assert system["answered"] + system["unanswered"] == system["offered"] == 800
        assert system["statuses"]["get"].keys() == {"200"}
    coherent = systems["coherent"]
    assert coherent["verdict"] == "CORRECT"
    assert coherent["history"]["reads_checked"] > 500
    assert coherent["hit_rate"] > 0.5
    assert coherent["visibility_probe"]["writes"] > 10
    assert coherent["visibility_probe"]["not_visible"] == 0
    assert systems["hello"]["history"]["reads_checked"] == 0  # nothing to judge: fixed answers
    for plot in ("latency_percentiles.png", "visibility_lag.png", "throughput.png"):
        assert (tmp_path / plot).stat().st_size > 1000
    assert "targets (coherent):" in done.stdout


def test_running_servers_are_measured_and_judged(tmp_path: Path) -> None:
    with local_cluster(2, database_url=POSTGRES_URL, cache_url="memory://") as cluster:
        targets = [arg for url in cluster.urls for arg in ("--url", url)]
        tokens = ("--admin-token", cluster.admin_token, "--clerk-token", cluster.clerk_token)
        path = tmp_path / "mixed.json"
        done = run_mixed(*targets, *tokens, "--json", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    (system,) = json.loads(path.read_text())["systems"]
    assert system["system"] == "target" and system["verdict"] == "CORRECT"
    assert system["history"]["reads_checked"] > 500


def test_an_unknown_system_is_refused() -> None:
    done = run_mixed("--systems", "coherent,redis-only")
    assert done.returncode == 2
    assert "unknown systems ['redis-only']" in done.stderr
