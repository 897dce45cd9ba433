"""The purchase storm of `stockkeeper bench oversell`, sent by wrk (storm.lua): a Python client
spent about 2 of this machine's 2 cores on 10,000 purchases, so the storm measured the client
as much as the servers. Thread n drives server n; wrk is stopped as soon as every answer is in."""

from __future__ import annotations

import math
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stockkeeper.bench.loadgen import (
    WRK,
    LuaValue,
    lua_targets,
    require_wrk,
    target_of,
    wrk_script,
)

RUN_S_MAX = 600  # wrk's own deadline; a healthy storm ends long before
ANSWER_TIMEOUT_S = 30
POLL_S = 0.01
STOP_S_MAX = 10.0


@dataclass(frozen=True)
class StormResult:
    outcomes: Counter[str]
    wall_s: float  # first purchase sent to last answer received, over all threads


def quotas(attempts: int, servers: int) -> list[int]:
    """Attempt n goes to server n mod K: each server's share."""
    return [attempts // servers + (1 if n < attempts % servers else 0) for n in range(servers)]


def _state(out_dir: Path, thread: int) -> tuple[int, int, Counter[str]]:
    """(first send, latest answer, outcomes so far) of one thread, from its last state file."""
    outcomes: Counter[str] = Counter()
    try:
        first_line, *rest = (out_dir / f"state-{thread}.txt").read_text().splitlines()
    except OSError:  # not written yet
        return 0, 0, outcomes
    first_us, last_us = map(int, first_line.split())
    for line in rest:
        count, key = line.split(" ", 1)
        outcomes[key] += int(count)
    return first_us, last_us, outcomes


def run_storm(
    urls: Sequence[str],
    clerk_token: str,
    sku: str,
    attempts: int,
    concurrency: int,
    on_progress: Callable[[int], None] = lambda answered: None,
) -> StormResult:
    """`attempts` purchases of one `sku`, `concurrency` connections spread over the servers
    (blocking: call it in a thread)."""
    require_wrk()
    servers = len(urls)
    shares = quotas(attempts, servers)
    connections = max(servers, math.ceil(concurrency / servers) * servers)
    with tempfile.TemporaryDirectory(prefix="sk-storm-") as workdir:
        out_dir = Path(workdir)
        script = out_dir / "storm.lua"
        config: dict[str, LuaValue] = {
            "targets": lua_targets([target_of(url) for url in urls]),
            "quotas": shares,
            "clerk_token": clerk_token,
            "sku": sku,
            "out_dir": str(out_dir),
        }
        script.write_text(wrk_script("storm.lua", config))
        command = [
            WRK,
            f"-t{servers}",
            f"-c{connections}",
            f"-d{RUN_S_MAX}s",
            f"--timeout={ANSWER_TIMEOUT_S}s",
            "-s",
            str(script),
            urls[0],
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threads = range(1, servers + 1)
        answered, moved_at = 0, time.monotonic()
        try:
            while process.poll() is None:
                counts = [sum(_state(out_dir, n)[2].values()) for n in threads]
                if counts == shares:
                    break  # every answer is in
                if sum(counts) != answered:
                    answered, moved_at = sum(counts), time.monotonic()
                    on_progress(answered)
                elif time.monotonic() - moved_at > ANSWER_TIMEOUT_S:
                    break  # lost requests: report what came back
                time.sleep(POLL_S)
            stopped = process.poll() is None
            if stopped:
                process.send_signal(signal.SIGINT)  # wrk stops and prints its summary
            output, _ = process.communicate(timeout=STOP_S_MAX)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        if not stopped and process.returncode != 0:
            text = output.decode(errors="replace").strip()
            raise RuntimeError(f"wrk exited with {process.returncode}: {text[-2000:]}")
        states = [_state(out_dir, n) for n in threads]
    outcomes: Counter[str] = sum((counted for _, _, counted in states), Counter())
    missing = attempts - sum(outcomes.values())
    if missing:
        outcomes["transport: no answer before wrk stopped"] += missing
    started = [first for first, _, counted in states if counted]
    ended = [last for _, last, counted in states if counted]
    wall_s = (max(ended) - min(started)) / 1e6 if started else float("nan")
    on_progress(sum(outcomes.values()))
    return StormResult(outcomes, wall_s)
