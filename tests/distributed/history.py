"""A recorded history of operations against a cluster, and the checks it must pass against the
audit log: the coherent cache's guarantees (docs/cache.md) stated over what clients saw."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

STALE_S_MAX = 0.1


@dataclass(frozen=True)
class Op:
    """One operation as a client saw it: what, where, when (client monotonic seconds), and the
    state it returned, or None if it failed or changed nothing."""

    kind: str  # "read", "purchase" or "restock"
    sku: str
    server: int
    started_s: float
    ended_s: float
    version: int | None
    on_hand: int | None


def check(ops: Iterable[Op], audit: Mapping[str, Mapping[int, int]]) -> list[str]:
    """Every violation: `audit` maps SKU → version → on_hand, from the audit log.

    1. Every answer is a state in the history (its version's on_hand).
    2. No read returns an older version than a read that ended before it started.
    3. No read is staler than STALE_S_MAX after a newer write was acknowledged.
    """
    problems: list[str] = []
    by_sku: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.version is None:
            continue
        if audit.get(op.sku, {}).get(op.version) != op.on_hand:
            problems.append(f"not in the history: {op}")
        by_sku[op.sku].append(op)
    for sku_ops in by_sku.values():
        problems += _monotonic(sku_ops) + _fresh(sku_ops)
    return problems


def _newest_ended_before(ops: list[Op], delay_s: float) -> list[tuple[float, int, Op]]:
    """(ended + delay, highest version returned by anything ended by then, that op), by time."""
    ordered = sorted(ops, key=lambda op: op.ended_s)
    marks, best, best_op = [], 0, None
    for op in ordered:
        assert op.version is not None
        if op.version > best:
            best, best_op = op.version, op
        assert best_op is not None
        marks.append((op.ended_s + delay_s, best, best_op))
    return marks


def _violations(reads: list[Op], marks: list[tuple[float, int, Op]], what: str) -> list[str]:
    problems = []
    index, best, best_op = 0, 0, None
    for read in sorted(reads, key=lambda op: op.started_s):
        while index < len(marks) and marks[index][0] < read.started_s:
            _, best, best_op = marks[index]
            index += 1
        assert read.version is not None
        if read.version < best:
            problems.append(f"{what}: {read} after {best_op}")
    return problems


def _monotonic(ops: list[Op]) -> list[str]:
    reads = [op for op in ops if op.kind == "read"]
    return _violations(reads, _newest_ended_before(reads, 0.0), "went back")


def _fresh(ops: list[Op]) -> list[str]:
    reads = [op for op in ops if op.kind == "read"]
    writes = [op for op in ops if op.kind != "read"]
    return _violations(reads, _newest_ended_before(writes, STALE_S_MAX), "stale")
