"""`stockkeeper bench oversell`: its verdict on correct and wrong runs (pure), and the real
command end to end at a size CI can afford."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stockkeeper.bench.cluster import local_cluster
from stockkeeper.bench.oversell import (
    EXIT_CORRECT,
    EXIT_WRONG,
    OK,
    SHORT,
    Result,
    Served,
    exit_code,
    outcome_key,
    report,
    verdict,
)
from tests.conftest import POSTGRES_URL
from tests.processes import STOCKKEEPER

STOCK = 5
ATTEMPTS = 20
URLS = ["http://a", "http://b"]
RUN_TIMEOUT_S = 300.0


def correct_audit(stock: int) -> list[dict[str, Any]]:
    entries = [{"version": 1, "delta": stock, "on_hand": stock, "reason": "set"}]
    for version in range(2, stock + 2):
        on_hand = stock - version + 1
        entries.append({"version": version, "delta": -1, "on_hand": on_hand, "reason": "purchase"})
    return entries


def correct_run() -> tuple[Counter[str], list[Served], list[dict[str, Any]]]:
    outcomes = Counter({OK: STOCK, SHORT: ATTEMPTS - STOCK})
    served = [Served(url, on_hand=0, version=STOCK + 1) for url in URLS]
    return outcomes, served, correct_audit(STOCK)


def test_a_correct_run_has_no_problems() -> None:
    outcomes, served, audit = correct_run()
    assert verdict(STOCK, ATTEMPTS, outcomes, served, audit) == []
    assert exit_code([]) == EXIT_CORRECT == 0


def test_one_sale_too_many_is_wrong() -> None:
    outcomes, served, audit = correct_run()
    outcomes[OK] += 1
    outcomes[SHORT] -= 1
    problems = verdict(STOCK, ATTEMPTS, outcomes, served, audit)
    assert f"{STOCK + 1} purchases succeeded for {STOCK} items" in problems
    assert exit_code(problems) == EXIT_WRONG != 0


def test_a_503_among_the_outcomes_is_wrong() -> None:
    """Even with exactly the stock sold: every other attempt must be a clean refusal."""
    outcomes, served, audit = correct_run()
    outcomes[SHORT] -= 1
    outcomes[outcome_key(503, {"code": "unavailable"})] += 1
    problems = verdict(STOCK, ATTEMPTS, outcomes, served, audit)
    assert any("503 unavailable" in p for p in problems), problems
    assert any("clean refusals" in p for p in problems), problems


def test_a_transport_error_is_an_other_outcome() -> None:
    outcomes, served, audit = correct_run()
    outcomes[SHORT] -= 1
    outcomes["transport ServerDisconnectedError"] += 1
    problems = verdict(STOCK, ATTEMPTS, outcomes, served, audit)
    assert any("transport ServerDisconnectedError" in p for p in problems), problems


def test_missing_outcomes_are_wrong() -> None:
    outcomes, served, audit = correct_run()
    outcomes[SHORT] -= 3
    problems = verdict(STOCK, ATTEMPTS, outcomes, served, audit)
    assert f"{ATTEMPTS - 3} outcomes for {ATTEMPTS} attempts" in problems


def test_a_server_serving_a_stale_version_is_wrong() -> None:
    outcomes, served, audit = correct_run()
    served[1] = Served(URLS[1], on_hand=1, version=STOCK)
    problems = verdict(STOCK, ATTEMPTS, outcomes, served, audit)
    assert problems == [
        f"http://b serves on_hand 1 at version {STOCK}, expected 0 at version {STOCK + 1}"
    ]


def test_a_server_that_cannot_answer_is_wrong() -> None:
    outcomes, served, audit = correct_run()
    served[0] = Served(URLS[0], error="503 unavailable")
    assert verdict(STOCK, ATTEMPTS, outcomes, served, audit) == [
        "http://a did not serve the item: 503 unavailable"
    ]


def test_an_audit_gap_is_wrong() -> None:
    outcomes, served, audit = correct_run()
    for entry in audit[3:]:
        entry["version"] += 1
    problems = verdict(STOCK, ATTEMPTS, outcomes, served, audit)
    assert f"audit versions are not 1..{STOCK + 1} without a gap" in problems


def test_a_missing_purchase_entry_is_wrong() -> None:
    outcomes, served, audit = correct_run()
    del audit[-1]
    problems = verdict(STOCK, ATTEMPTS, outcomes, served, audit)
    assert f"{STOCK - 1} purchase entries in the audit, expected {STOCK}" in problems
    assert "the audit ends at on_hand 1, expected 0" in problems


def test_deltas_that_do_not_replay_are_wrong() -> None:
    outcomes, served, audit = correct_run()
    audit[2]["on_hand"] += 1  # says 4 where the deltas give 3
    problems = verdict(STOCK, ATTEMPTS, outcomes, served, audit)
    assert problems == ["audit deltas replay to 3 at version 3, the entry says 4"]


def test_a_naive_read_check_write_purchaser_is_judged_wrong() -> None:
    """The bug the product avoids, simulated in process: read on_hand, yield, write on_hand - 1.
    Its own outcomes, final state and audit go through the same verdict and exit code."""
    stock, attempts, concurrency = 100, 1000, 50
    state = {"on_hand": stock, "version": 1}
    audit: list[dict[str, Any]] = [
        {"version": 1, "delta": stock, "on_hand": stock, "reason": "set"}
    ]
    gate = asyncio.Semaphore(concurrency)

    async def naive_purchase() -> str:
        async with gate:
            on_hand = state["on_hand"]
            if on_hand < 1:
                return SHORT
            await asyncio.sleep(0)  # another request runs between the check and the write
            state["on_hand"], state["version"] = on_hand - 1, state["version"] + 1
            audit.append(
                {"version": state["version"], "delta": -1, "on_hand": on_hand - 1,
                 "reason": "purchase"}
            )  # fmt: skip
            return OK

    async def storm() -> Counter[str]:
        return Counter(await asyncio.gather(*(naive_purchase() for _ in range(attempts))))

    outcomes = asyncio.run(storm())
    assert outcomes[OK] > stock, outcomes
    served = [Served(url, on_hand=state["on_hand"], version=state["version"]) for url in URLS]
    problems = verdict(stock, attempts, outcomes, served, audit)
    assert f"{outcomes[OK]} purchases succeeded for {stock} items" in problems
    assert any(p.startswith("audit deltas replay to") for p in problems), problems
    assert exit_code(problems) == EXIT_WRONG
    result = Result("NAIVE", stock, attempts, concurrency, URLS, dict(outcomes), 1.0)
    result.problems = problems
    assert "verdict: WRONG" in report(result)


def test_the_cli_does_not_load_the_bench_code_until_asked() -> None:
    """`stockkeeper serve` must not need aiohttp or anything else the bench uses."""
    code = (
        "import sys, stockkeeper.cli; "
        "assert 'aiohttp' not in sys.modules and 'stockkeeper.bench' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_urls_without_tokens_are_refused() -> None:
    done = subprocess.run(
        [STOCKKEEPER, "bench", "oversell", "--url", "http://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--url needs --admin-token and --clerk-token" in done.stderr


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STOCKKEEPER, "bench", "oversell", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


@pytest.mark.distributed
def test_oversell_is_correct_on_its_own_cluster(tmp_path: Path) -> None:
    """The CI-size run: 2 servers on a fresh schema and a private Redis it starts itself."""
    result_path = tmp_path / "oversell.json"
    done = run_bench(
        *("--servers", "2", "--attempts", "1000", "--stock", "50", "--concurrency", "64"),
        *("--database", POSTGRES_URL, "--json", str(result_path)),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict: CORRECT" in done.stdout
    assert "successes        50\n" in done.stdout
    assert "clean refusals   950 " in done.stdout
    assert done.stderr == "", "no progress line when stderr is not a terminal"
    result = json.loads(result_path.read_text())
    assert result["verdict"] == "CORRECT" and result["problems"] == []
    assert result["outcomes"] == {OK: 50, SHORT: 950}
    assert (result["audit_entries"], result["audit_purchases"]) == (51, 50)
    assert [(s["on_hand"], s["version"]) for s in result["served"]] == [(0, 51), (0, 51)]


@pytest.mark.distributed
def test_repeated_runs_against_running_servers_do_not_collide(tmp_path: Path) -> None:
    with local_cluster(2, database_url=POSTGRES_URL, cache_url="memory://") as cluster:
        targets = [arg for url in cluster.urls for arg in ("--url", url)]
        tokens = ("--admin-token", cluster.admin_token, "--clerk-token", cluster.clerk_token)
        skus = []
        for n in range(2):
            path = tmp_path / f"run-{n}.json"
            done = run_bench(
                *targets, *tokens, "--attempts", "200", "--stock", "20", "--json", str(path)
            )
            assert done.returncode == 0, done.stdout + done.stderr
            skus.append(json.loads(path.read_text())["sku"])
        assert skus[0] != skus[1]
        done = run_bench(*targets, *tokens, "--attempts", "200", "--stock", "20", "--sku", skus[0])
        assert done.returncode == 1
        assert "the SKU must be new" in done.stderr


def test_attempt_n_goes_to_server_n_mod_k() -> None:
    from stockkeeper.bench.storm import quotas

    assert quotas(10, 4) == [3, 3, 2, 2]
    assert quotas(3, 4) == [1, 1, 1, 0]
    assert sum(quotas(10_000, 3)) == 10_000


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
def test_a_storm_that_cannot_reach_its_server_says_why() -> None:
    from stockkeeper.bench.cluster import free_port
    from stockkeeper.bench.storm import run_storm

    with pytest.raises(RuntimeError, match="wrk exited with 1: unable to connect"):
        run_storm([f"http://127.0.0.1:{free_port()}"], "sk_token", "SKU-1", 10, 2)
