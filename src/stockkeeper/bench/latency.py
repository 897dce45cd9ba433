"""Latency distributions of a bench run, in HdrHistogram (3 significant figures: a recorded
value is within 0.1% of the truth at every magnitude, from 1 µs to a minute)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_FIGURES = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
CURVE_PERCENTILES = (
    0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0
)  # fmt: skip


class Latencies:
    """One operation's latencies. Values past the histogram's range are clamped to it, and
    counted: a minute is already a failure here."""

    def __init__(self) -> None:
        self._histogram = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
        self.clamped = 0

    def record(self, value_us: int) -> None:
        if not LOWEST_US <= value_us <= HIGHEST_US:
            self.clamped += 1
            value_us = min(max(value_us, LOWEST_US), HIGHEST_US)
        self._histogram.record_value(value_us)

    def record_all(self, values_us: Iterable[int]) -> Latencies:
        for value in values_us:
            self.record(value)
        return self

    @property
    def count(self) -> int:
        return int(self._histogram.get_total_count())

    def percentile_ms(self, percentile: float) -> float | None:
        """The value at `percentile` (0-100): at least that share of the values are ≤ it."""
        assert 0.0 <= percentile <= 100.0
        if self.count == 0:
            return None
        return float(self._histogram.get_value_at_percentile(percentile)) / 1000.0

    def max_ms(self) -> float | None:
        return None if self.count == 0 else float(self._histogram.get_max_value()) / 1000.0

    def curve(self) -> list[tuple[float, float]]:
        """(percentile, ms) points for the percentile plot."""
        points = []
        for percentile in CURVE_PERCENTILES:
            value = self.percentile_ms(percentile)
            if value is not None:
                points.append((percentile, value))
        return points

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            **{f"p{p:g}_ms".replace(".", ""): self.percentile_ms(p) for p in PERCENTILES},
            "max_ms": self.max_ms(),
            "clamped": self.clamped,
            "curve_ms": self.curve(),
        }
