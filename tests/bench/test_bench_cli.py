"""`stockkeeper bench` as a first-time user meets it: each scenario's help says what it starts,
what it needs and how long it takes, and `--quick` runs each for real in seconds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import POSTGRES_URL
from tests.processes import STOCKKEEPER

RUN_TIMEOUT_S = 300
NEEDS = {
    "oversell": ("PostgreSQL", "redis-server", "wrk"),
    "stampede": ("PostgreSQL", "redis-server"),
    "mixed": ("PostgreSQL", "redis-server", "wrk"),
}
QUICK = {
    "oversell": "--attempts 500 --stock 20 --servers 2",
    "stampede": "--keys 5 --reads 100 --servers 2",
    "mixed": "--rate 200 --seconds 2 --warmup 0.5 --connections 4 --skus 100",
}
needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)"
)


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STOCKKEEPER, "bench", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def help_text(*args: str) -> str:
    """The help, its lines joined: click wraps it, also after a hyphen (redis-|server)."""
    done = bench(*args, "--help")
    assert done.returncode == 0, done.stderr
    return " ".join(re.sub(r"-\n\s*", "-", done.stdout).split())


@pytest.mark.parametrize("scenario", sorted(NEEDS))
def test_each_scenario_says_what_it_starts_needs_and_takes(scenario: str) -> None:
    text = help_text(scenario)
    assert "Starts --servers" in text and "`stockkeeper serve`" in text
    for need in NEEDS[scenario]:
        assert need in text, need
    assert re.search(
        r"the defaults take about \d+ (s|minutes?), --quick about \d+ (s|minutes?)", text
    )
    assert f"--quick A small run (see the timings above): {QUICK[scenario]}." in text
    for option in ("--admin-token", "--clerk-token", "--servers", "--workers"):
        described = re.search(rf"{option} (TEXT|INTEGER RANGE) (\S+)", text)
        assert described is not None and not described[2].startswith("-"), f"{option} has no help"


def test_the_bench_group_names_what_the_scenarios_need() -> None:
    text = help_text()
    for need in ("PostgreSQL", "redis-server", "wrk", "--quick", "--url"):
        assert need in text, need


@pytest.mark.parametrize(
    ("given", "says"),
    [
        (("--stock", "600"), "fewer attempts (500) than stock (600)"),
        (("--attempts", "10"), "fewer attempts (10) than stock (20)"),
    ],
    ids=["preset-attempts", "given-attempts"],
)
def test_options_given_explicitly_override_the_quick_preset(
    given: tuple[str, ...], says: str
) -> None:
    done = bench("oversell", "--quick", *given)
    assert done.returncode == 2
    assert says in done.stderr


def quick_run(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run `bench ... --quick` on its own cluster; its JSON result, after a CORRECT verdict."""
    path = tmp_path / "result.json"
    done = bench(*args, "--quick", "--database", POSTGRES_URL, "--json", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^verdict:? +CORRECT", done.stdout, re.MULTILINE), done.stdout
    result: dict[str, Any] = json.loads(path.read_text())
    return result


@pytest.mark.distributed
@needs_wrk
def test_oversell_quick_sells_exactly_its_stock(tmp_path: Path) -> None:
    result = quick_run(tmp_path, "oversell")
    assert (result["attempts"], result["stock"], len(result["urls"])) == (500, 20, 2)
    assert result["outcomes"] == {"200": 20, "409 insufficient_stock": 480}
    assert result["verdict"] == "CORRECT"


@pytest.mark.distributed
def test_stampede_quick_reads_each_cold_key_at_most_once_per_server(tmp_path: Path) -> None:
    result = quick_run(tmp_path, "stampede")
    assert (result["keys"], result["reads_per_key"]) == (5, 100)
    assert len(result["db_reads_per_server"]) == 2
    assert result["verdict"] == "CORRECT"


@pytest.mark.distributed
@needs_wrk
def test_mixed_quick_runs_its_small_load(tmp_path: Path) -> None:
    result = quick_run(tmp_path, "mixed", "--systems", "coherent")
    assert result["servers"] == 2
    options = result["options"]
    assert (options["rate_per_s"], options["window_s"], options["warmup_s"]) == (200, 2, 0.5)
    assert (options["connections"], options["skus"]) == (4, 100)
    (system,) = result["systems"]
    assert system["system"] == "coherent" and system["verdict"] == "CORRECT"
