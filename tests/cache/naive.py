"""The judge of the guarantee tests: each runs its scenario on the coherent cache and on the
buggy design it replaces (cache-aside with a TTL, an unversioned SET on fill and delete-on-write,
now `stockkeeper.bench.baselines.NaiveCacheAside`, which the benchmarks serve as a baseline too)
and asserts that it holds on the first and breaks on the second."""

from __future__ import annotations

from stockkeeper.bench.baselines import NaiveCacheAside

__all__ = ["NaiveCacheAside", "expect"]


def expect(kind: str, holds: bool) -> None:
    """The coherent cache must hold; every naive design must break the same scenario."""
    assert holds == (kind == "coherent"), f"{kind}: guarantee {'held' if holds else 'broken'}"
