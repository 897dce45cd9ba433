"""The report of `stockkeeper bench mixed`: the systems side by side with ratios, the targets
of issue 11 met or missed (with the gap), and with `--report DIR` the JSON and three plots."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TARGET_RATE_PER_S = 10_000
RATE_TOLERANCE = 0.99  # "sustained": 99% of it answered within the window (its edges cut a few)
TARGET_GET_P99_MS = 2.0
TARGET_HIT_RATE = 0.99
TARGET_HIT_RATE_WRITE_HEAVY = 0.95  # at 30% writes or more
TARGET_LAG_P99_MS = 10.0
TARGET_LAG_MAX_MS = 100.0
TARGET_SHARE_OF_HELLO = 0.5
COLORS = {"hello": "C0", "nocache": "C1", "naive": "C2", "coherent": "C3", "target": "C4"}


def machine() -> dict[str, str]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    wrk = shutil.which("wrk")
    version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout if wrk else ""
    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "wrk": version.split(" [")[0].strip() or "?",
    }


def _get(data: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        if data is None:
            return None
        data = data.get(key)  # type: ignore[assignment]
    return data


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "pct":
        return f"{value:.2%}"
    if kind == "ms":
        return f"{value:.2f}"
    return str(value)


# label, path in a system's JSON, format
ROWS: list[tuple[str, str, str]] = [
    ("offered (req/s)", "offered_rate_per_s", "int"),
    ("answered (req/s)", "achieved_rate_per_s", "int"),
    ("unanswered at the end", "unanswered", "int"),
    ("  of them 200 (req/s)", "ok_rate_per_s", "int"),
    ("503 busy", "busy_503", "int"),
    ("  503 p99 (ms, from intended send)", "busy_latency_ms.p99_ms", "ms"),
    ("GET p50 (ms, from intended send)", "latency.get.p50_ms", "ms"),
    ("GET p90", "latency.get.p90_ms", "ms"),
    ("GET p99", "latency.get.p99_ms", "ms"),
    ("GET p99.9", "latency.get.p999_ms", "ms"),
    ("GET max", "latency.get.max_ms", "ms"),
    ("GET p99, closed-loop view (from send)", "service_time_get.p99_ms", "ms"),
    ("GET answered (req/s)", "rate_per_s.get", "int"),
    ("purchases answered (req/s)", "rate_per_s.purchase", "int"),
    ("restocks answered (req/s)", "rate_per_s.restock", "int"),
    ("purchase p50 (ms)", "latency.purchase.p50_ms", "ms"),
    ("purchase p99", "latency.purchase.p99_ms", "ms"),
    ("restock p50 (ms)", "latency.restock.p50_ms", "ms"),
    ("restock p99", "latency.restock.p99_ms", "ms"),
    ("all p99, unanswered included", "latency.all.p99_ms", "ms"),
    ("hit rate (X-Cache of GETs)", "hit_rate", "pct"),
    ("database reads per GET", "server_metrics.db_reads_per_get", "ms"),
    ("visibility lag p50 (ms, probe)", "visibility_probe.lag_ms.p50_ms", "ms"),
    ("visibility lag p99", "visibility_probe.lag_ms.p99_ms", "ms"),
    ("visibility lag max", "visibility_probe.lag_ms.max_ms", "ms"),
    ("servers' lag p99 (ms, est.)", "server_metrics.lag_p99_ms", "ms"),
    ("degraded-mode trips (/metrics)", "degraded_trips", "int"),
    ("reads that waited for a feed poll (/metrics)", "feed_waits", "int"),
    ("reads judged against the audit", "history.reads_checked", "int"),
    ("  went back (older than a read before)", "history.violations.went_back", "int"),
    ("  stale > 100 ms after an acked write", "history.violations.stale", "int"),
    ("  stale > 100 ms after a commit", "history.violations.stale_vs_audit", "int"),
    ("  not a state in the audit", "history.violations.not_in_history", "int"),
    ("CPU cores: servers", "cpu_cores.servers", "ms"),
    ("CPU cores: postgres", "cpu_cores.postgres", "ms"),
    ("CPU cores: redis", "cpu_cores.redis", "ms"),
    ("CPU cores: load generator", "cpu_cores.load generator", "ms"),
    ("CPU cores: machine busy", "cpu_cores.machine busy", "ms"),
    ("load generator µs CPU per request", "load_generator.cpu_us_per_request", "ms"),
    ("verdict", "verdict", ""),
]


def table(systems: Sequence[dict[str, Any]]) -> str:
    names = [s["system"] for s in systems]
    width = max(len(label) for label, _, _ in ROWS) + 2
    lines = ["".ljust(width) + "".join(n.rjust(12) for n in names)]
    for label, path, kind in ROWS:
        cells = [_fmt(_get(s, path), kind).rjust(12) for s in systems]
        lines.append(label.ljust(width) + "".join(cells))
    return "\n".join(lines)


def ratios(systems: Sequence[dict[str, Any]], ours: str = "coherent") -> list[str]:
    """stockkeeper's coherent cache against each other system, same run."""
    by_name = {s["system"]: s for s in systems}
    if ours not in by_name:
        return []
    mine = by_name[ours]
    lines = []
    for name, other in by_name.items():
        if name == ours:
            continue
        parts = []
        rate = _ratio(mine["achieved_rate_per_s"], other["achieved_rate_per_s"])
        parts.append(f"throughput x{rate:.2f}" if rate is not None else "throughput -")
        p99 = _ratio(_get(mine, "latency.get.p99_ms"), _get(other, "latency.get.p99_ms"))
        parts.append(f"GET p99 x{p99:.2f}" if p99 is not None else "GET p99 -")
        if other.get("hit_rate") is not None:
            # Ours may have none: an overloaded run can answer no GET within the window.
            parts.append(
                f"hit rate {_fmt(mine['hit_rate'], 'pct')} vs {_fmt(other['hit_rate'], 'pct')}"
            )
        if other["history"]["reads_checked"]:
            theirs = sum(other["history"]["violations"].values())
            parts.append(f"violations {sum(mine['history']['violations'].values())} vs {theirs}")
        lines.append(f"{ours} / {name}: " + ", ".join(parts))
    return lines


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    limit: float
    met: bool
    unit: str

    def line(self) -> str:
        shown = "-" if self.value is None else f"{_number(self.value)}{self.unit}"
        gap = ""
        if not self.met and self.value is not None:
            sign = "+" if self.value >= self.limit else "-"
            gap = f" (gap {sign}{_number(abs(self.value - self.limit))})"
        verdict = "met " if self.met else "MISS"
        return f"{verdict} {self.name}: {shown}, target {_number(self.limit)}{self.unit}{gap}"


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def targets(systems: Sequence[dict[str, Any]], read_share: float) -> list[Target]:
    """Issue 11's targets, judged on the coherent system of this run."""
    by_name = {s["system"]: s for s in systems}
    mine = by_name.get("coherent")
    if mine is None:
        return []

    def judged(
        name: str, value: float | None, limit: float, ok: Callable[[float], bool], unit: str = ""
    ) -> Target:
        return Target(name, value, limit, value is not None and ok(value), unit)

    hit_target = TARGET_HIT_RATE if read_share > 0.7 else TARGET_HIT_RATE_WRITE_HEAVY
    rate, lag = mine["achieved_rate_per_s"], _get(mine, "visibility_probe.lag_ms")
    found = [
        judged(
            "answered rate",
            rate,
            TARGET_RATE_PER_S,
            lambda v: v >= RATE_TOLERANCE * TARGET_RATE_PER_S,
            " req/s",
        ),
        judged(
            "GET p99",
            _get(mine, "latency.get.p99_ms"),
            TARGET_GET_P99_MS,
            lambda v: v <= TARGET_GET_P99_MS,
            " ms",
        ),
        judged("hit rate", mine["hit_rate"], hit_target, lambda v: v >= hit_target),
        judged(
            "lag p99",
            _get(lag, "p99_ms"),
            TARGET_LAG_P99_MS,
            lambda v: v <= TARGET_LAG_P99_MS,
            " ms",
        ),
        judged(
            "lag max",
            _get(lag, "max_ms"),
            TARGET_LAG_MAX_MS,
            lambda v: v < TARGET_LAG_MAX_MS,
            " ms",
        ),
    ]
    hello = by_name.get("hello")
    if hello is not None:
        share = _ratio(mine["achieved_rate_per_s"], hello["achieved_rate_per_s"])
        saturated = mine["achieved_rate_per_s"] < 0.95 * mine["offered_rate_per_s"]
        name = "share of hello's rate" + ("" if saturated else " (not saturated: offered too low)")
        found.append(
            judged(name, share, TARGET_SHARE_OF_HELLO, lambda v: v >= TARGET_SHARE_OF_HELLO)
        )
    return found


def render(result: dict[str, Any]) -> str:
    systems = result["systems"]
    lines = [
        f"mixed: {result['options']['rate_per_s']:,.0f} req/s offered for"
        f" {result['options']['window_s']:g} s (after {result['options']['warmup_s']:g} s warm-up),"
        f" {result['options']['read_share']:.0%} GET, Zipf({result['options']['zipf']:g}) over"
        f" {result['options']['skus']:,} SKUs, {result['servers']} servers x"
        f" {result['workers']} workers, {result['options']['connections']} connections",
        "latencies from intended send times (open loop, no coordinated omission); HdrHistogram",
        "",
        table(systems),
        "",
        *ratios(systems),
    ]
    found = targets(systems, result["options"]["read_share"])
    if found:
        lines += ["", "targets (coherent):", *(f"  {t.line()}" for t in found)]
    wrong = [s for s in systems if s["verdict"] == "WRONG"]
    for system in wrong:
        lines.append(f"{system['system']}: WRONG: " + "; ".join(system["problems"]))
        lines += [f"    e.g. {e}" for e in system["history"]["examples"][:3]]
    return "\n".join(lines)


def write_report(result: dict[str, Any], directory: Path) -> list[Path]:
    """result.json and the plots; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "result.json"
    json_path.write_text(json.dumps(result, indent=2))
    return [json_path, *plot(result["systems"], directory)]


def plot(systems: Sequence[dict[str, Any]], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    written = []

    def save(name: str, draw: Callable[[Any], None]) -> None:
        figure, axes = plt.subplots(figsize=(8, 5), dpi=100)
        draw(axes)
        figure.tight_layout()
        path = directory / name
        figure.savefig(path)
        plt.close(figure)
        written.append(path)

    def latency_curves(axes: Any) -> None:
        for system in systems:
            points = [(p, ms) for p, ms in system["latency"]["get"]["curve_ms"] if p < 100.0]
            if points:
                x = [-np.log10(1 - p / 100.0) for p, _ in points]
                axes.plot(
                    x,
                    [ms for _, ms in points],
                    marker="o",
                    label=system["system"],
                    color=COLORS.get(system["system"]),
                )
        ticks = [0.0, 90.0, 99.0, 99.9, 99.99, 99.999]
        axes.set_xticks([-np.log10(1 - p / 100.0) for p in ticks], [f"{p:g}" for p in ticks])
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axes.set_xlabel("percentile")
        axes.set_ylabel("GET latency from intended send (ms)")
        axes.set_title("GET latency percentiles (open loop)")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()

    def lag_histogram(axes: Any) -> None:
        for system in systems:
            lags = (system.get("visibility_probe") or {}).get("lags_ms") or []
            if lags:
                bins = np.logspace(-1, 3, 60)
                axes.hist(
                    lags,
                    bins=bins,
                    histtype="step",
                    linewidth=1.5,
                    label=system["system"],
                    color=COLORS.get(system["system"]),
                )
        axes.set_xscale("log")
        axes.set_xlabel("write acknowledged -> every server serves it (ms)")
        axes.set_ylabel("probe writes")
        axes.set_title("Visibility lag")
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend()

    def throughput(axes: Any) -> None:
        for system in systems:
            series = system["throughput_per_s"]
            x = [i * series["bucket_s"] for i in range(len(series["values"]))]
            axes.plot(
                x, series["values"], label=system["system"], color=COLORS.get(system["system"])
            )
        axes.set_xlabel("seconds since the first intended send (warm-up, window, drain)")
        axes.set_ylabel("answers per second")
        axes.set_title("Throughput over time")
        axes.grid(True, alpha=0.3)
        axes.legend()

    save("latency_percentiles.png", latency_curves)
    save("visibility_lag.png", lag_histogram)
    save("throughput.png", throughput)
    return written
