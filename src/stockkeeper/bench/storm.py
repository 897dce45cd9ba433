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

from stockkeeper.bench.loadgen import WRK, require_wrk, target_of
from stockkeeper.bench.loadgen import script as lua_script

RUN_S_MAX = 600  # wrk's own deadline; a healthy storm ends long before
ANSWER_TIMEOUT_S = 30
POLL_S = 0.01
STOP_S_MAX = 10.0


@dataclass(frozen=True)
class StormResult:
    outcomes: Counter[str]
    wall_s: float  # first purchase sent to last answer received, over all threads
    wrk_output: str


def quotas(attempts: int, servers: int) -> list[int]:
    """Attempt n goes to server n mod K: each server's share."""
    return [attempts // servers + (1 if n < attempts % servers else 0) for n in range(servers)]


def _config(
    urls: Sequence[str], clerk_token: str, sku: str, shares: Sequence[int], out_dir: Path
) -> str:
    targets = ", ".join('{{"{}", "{}"}}'.format(*target_of(url)) for url in urls)
    for text in (clerk_token, sku, str(out_dir)):
        assert '"' not in text and "\\" not in text
    return (
        f"local CONFIG = {{targets = {{{targets}}}, quotas = {{{', '.join(map(str, shares))}}},"
        f' clerk_token = "{clerk_token}", sku = "{sku}", out_dir = "{out_dir}"}}\n'
    )


def _state(out_dir: Path, thread: int) -> tuple[int, int, Counter[str]]:
    """(first send, latest answer, outcomes so far) of one thread, from its last state file."""
    try:
        first_line, *rest = (out_dir / f"state-{thread}.txt").read_text().splitlines()
        first_us, last_us = map(int, first_line.split())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return 0, 0, Counter()
    outcomes: Counter[str] = Counter()
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
        script.write_text(lua_script(_config(urls, clerk_token, sku, shares, out_dir), "storm.lua"))
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
        busy = [n + 1 for n in range(servers) if shares[n] > 0]
        answered, moved_at = 0, time.monotonic()
        try:
            while process.poll() is None:
                if all((out_dir / f"done-{n}.txt").exists() for n in busy):
                    break
                now = sum(sum(_state(out_dir, n)[2].values()) for n in busy)
                if now != answered:
                    answered, moved_at = now, time.monotonic()
                    on_progress(answered)
                elif time.monotonic() - moved_at > ANSWER_TIMEOUT_S:
                    break  # lost requests: report what came back
                time.sleep(POLL_S)
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # wrk stops and prints its summary
            output, _ = process.communicate(timeout=STOP_S_MAX)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        outcomes: Counter[str] = Counter()
        firsts, lasts = [], []
        for n in busy:
            first_us, last_us, counted = _state(out_dir, n)
            if counted:
                firsts.append(first_us)
                lasts.append(last_us)
                outcomes += counted
    missing = attempts - sum(outcomes.values())
    if missing:
        outcomes["transport: no answer before wrk stopped"] += missing
    text = output.decode(errors="replace")
    wall_s = (max(lasts) - min(firsts)) / 1e6 if firsts else float("nan")
    on_progress(sum(outcomes.values()))
    return StormResult(outcomes, wall_s, text)
