"""What a bench run reads off the machine beside its own measurements: the servers' /metrics
(deltas over the window) and CPU time per process group."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    import aiohttp

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(session: aiohttp.ClientSession, url: str) -> Samples:
    async with session.get(f"{url}/metrics") as answer:
        text = await answer.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def delta(after: Iterable[Samples], before: Iterable[Samples]) -> Samples:
    """What happened between two scrapes of the same servers, summed over the servers."""
    merged: Samples = {}
    for late, early in zip(after, before, strict=True):
        for key, value in late.items():
            merged[key] = merged.get(key, 0.0) + value - early.get(key, 0.0)
    return merged


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def histogram_quantile(samples: Samples, name: str, q: float, **labels: str) -> float | None:
    """Prometheus' estimate: linear within the bucket that holds the q-th observation."""
    wanted = set(labels.items())
    merged: dict[float, float] = {}
    for (n, ls), count in samples.items():
        if n == f"{name}_bucket" and wanted <= set(ls):
            bound = float(dict(ls)["le"])
            merged[bound] = merged.get(bound, 0.0) + count
    bounds = sorted(merged)
    if not bounds or merged[bounds[-1]] <= 0:
        return None
    rank = q * merged[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        if merged[bound] >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is all we know
            inside = merged[bound] - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, merged[bound]
    return None


def _processes() -> list[tuple[int, str, int, float]]:
    """(pid, command name, process group, CPU seconds) of every process."""
    rows = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        rows.append((int(entry), comm, int(fields[2]), ticks / CLOCK_TICKS_PER_S))
    return rows


def machine_busy_s() -> float:
    ticks = [int(w) for w in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLOCK_TICKS_PER_S  # minus idle, iowait


Groups = dict[str, Callable[[int, str, int], bool]]  # name -> belongs(pid, comm, pgrp)
CpuSnapshot = dict[tuple[str, int], float]


def cpu_snapshot(groups: Groups) -> CpuSnapshot:
    seconds: CpuSnapshot = {("machine busy", 0): machine_busy_s()}
    for pid, comm, pgrp, cpu_s in _processes():
        for name, belongs in groups.items():
            if belongs(pid, comm, pgrp):
                seconds[(name, pid)] = cpu_s
                break
    return seconds


def cpu_used(before: CpuSnapshot, after: CpuSnapshot, names: Sequence[str]) -> dict[str, float]:
    """CPU seconds per group between two snapshots. A process that exited meanwhile is lost
    (short-lived PostgreSQL backends), so the groups are lower bounds."""
    used = dict.fromkeys([*names, "machine busy"], 0.0)
    for (name, pid), cpu_s in after.items():
        used[name] += cpu_s - before.get((name, pid), 0.0)
    return used
