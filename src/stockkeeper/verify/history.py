"""A recorded history of operations against a cluster, and the checks it must pass against the
audit log: the coherent cache's guarantees (docs/cache.md) stated over what clients saw.

`check` groups the answered operations by SKU, sorts each group once and sweeps it, so n
operations cost O(n log n) time and O(n) memory. It counts every violation but keeps at most
`keep_max` examples of each kind, so even a badly broken run stays cheap to report:

    verdict = check(ops, audit, commits)
    verdict.ok          # no violation of any kind
    verdict.counts      # {"not_in_history": 0, "went_back": 0, "stale": 2, "stale_vs_audit": 5}
    verdict.examples    # the first Violations of each kind, in the order of KINDS
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter

STALE_S_MAX = 0.1
KEEP_MAX = 1000
KINDS = ("not_in_history", "went_back", "stale", "stale_vs_audit")


@dataclass(frozen=True)
class Op:
    """One operation as a client saw it: what, where, when (seconds, on one clock shared by all
    operations), and the state it returned, or None if it failed or changed nothing."""

    kind: str  # "read", "purchase" or "restock"
    sku: str
    server: int
    started_s: float
    ended_s: float
    version: int | None
    on_hand: int | None


@dataclass(frozen=True)
class Violation:
    """One broken guarantee: `op` gave the offending answer; `cause` is the operation it
    contradicts (an earlier read, an acknowledged write), None when the audit log alone does."""

    kind: str  # one of KINDS
    op: Op
    cause: Op | None
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True)
class Verdict:
    """What `check` found: `counts` of all violations by kind (every kind in KINDS, zeros
    included) and `examples`, at most `keep_max` violations of each kind, in the order of KINDS."""

    counts: dict[str, int]
    examples: list[Violation]

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())

    def __str__(self) -> str:
        shown = 10
        lines = [", ".join(f"{kind} {n}" for kind, n in self.counts.items())]
        lines += [f"  {violation}" for violation in self.examples[:shown]]
        if len(self.examples) > shown:
            lines.append(f"  … {sum(self.counts.values()) - shown} more")
        return "\n".join(lines)


def summary(violations: Iterable[Violation]) -> dict[str, int]:
    """How many of `violations` there are of each kind (every kind in KINDS, zeros included)."""
    counts = dict.fromkeys(KINDS, 0)
    for violation in violations:
        counts[violation.kind] += 1
    return counts


def check(
    ops: Iterable[Op],
    audit: Mapping[str, Mapping[int, int]],
    commits: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    stale_s_max: float = STALE_S_MAX,
    keep_max: int = KEEP_MAX,
) -> Verdict:
    """Check `ops` against the audit log. `audit` maps SKU → version → on_hand; `commits`, if
    given, maps SKU → (version, commit time on the operations' clock). Operations that returned
    no version are ignored.

    1. not_in_history: every answer is a state in the history (its version's on_hand).
    2. went_back: no read returns an older version than a read that ended before it started.
    3. stale: no read returns an older version than a write acknowledged more than
       `stale_s_max` before the read started.
    4. stale_vs_audit: no read returns an older version than one committed more than
       `stale_s_max` before the read started, whoever wrote it (skipped without `commits`).
    """
    tally = _Tally(keep_max)
    reads: dict[str, list[_Answer]] = defaultdict(list)
    writes: dict[str, list[_Event]] = defaultdict(list)
    for op in ops:
        if op.version is None:
            continue
        expected = audit.get(op.sku, {}).get(op.version)
        if expected != op.on_hand and tally.count("not_in_history"):
            has = "no such version" if expected is None else f"on_hand {expected}"
            detail = f"{_what(op)} answered on_hand {op.on_hand}; the audit log has {has}"
            tally.keep(Violation("not_in_history", op, None, detail))
        if op.kind == "read":
            reads[op.sku].append((op.started_s, op.version, op))
        else:
            writes[op.sku].append((op.ended_s, op.version, op))
    for sku, sku_reads in reads.items():
        sku_reads.sort(key=itemgetter(0))
        sweeps = [
            ("went_back", _marks([(op.ended_s, v, op) for _, v, op in sku_reads], 0.0)),
            ("stale", _marks(writes.get(sku, []), stale_s_max)),
        ]
        if commits is not None:
            committed: list[_Event] = [(at, v, None) for v, at in commits.get(sku, ())]
            sweeps.append(("stale_vs_audit", _marks(committed, stale_s_max)))
        for kind, marks in sweeps:
            for read, newer, cause, at in _older(sku_reads, marks):
                if tally.count(kind):
                    detail = _detail(kind, read, newer, at)
                    tally.keep(Violation(kind, read, cause, detail))
    return Verdict(tally.counts, [v for kind in KINDS for v in tally.kept[kind]])


# (started_s, version, op) of a read; (time, version, op or None) of a version becoming known.
_Answer = tuple[float, int, Op]
_Event = tuple[float, int, Op | None]
# (due_s, newest version known by then, its op or None, when it became known)
_Mark = tuple[float, int, Op | None, float]


class _Tally:
    def __init__(self, keep_max: int) -> None:
        self.keep_max = keep_max
        self.counts = dict.fromkeys(KINDS, 0)
        self.kept: dict[str, list[Violation]] = {kind: [] for kind in KINDS}

    def count(self, kind: str) -> bool:
        """Count one violation of `kind`; whether an example of it is still wanted."""
        self.counts[kind] += 1
        return self.counts[kind] <= self.keep_max

    def keep(self, violation: Violation) -> None:
        self.kept[violation.kind].append(violation)


def _marks(events: list[_Event], delay_s: float) -> list[_Mark]:
    """Each time the newest version known so far rises, by time: (that time + `delay_s`, the
    version, the op that made it known, that time)."""
    events.sort(key=itemgetter(0))
    marks: list[_Mark] = []
    best = 0
    for at, version, op in events:
        if version > best:
            best = version
            marks.append((at + delay_s, version, op, at))
    return marks


def _older(reads: list[_Answer], marks: list[_Mark]) -> Iterator[tuple[Op, int, Op | None, float]]:
    """Each read (by start) that returned an older version than the newest one marked strictly
    before it started: (the read, that version, its op, when it became known)."""
    index, best, cause, at = 0, 0, None, 0.0
    for started_s, version, read in reads:
        while index < len(marks) and marks[index][0] < started_s:
            _, best, cause, at = marks[index]
            index += 1
        if version < best:
            yield read, best, cause, at


def _what(op: Op) -> str:
    return (
        f"{op.kind} of {op.sku} on server {op.server} "
        f"({op.started_s:.3f}-{op.ended_s:.3f} s) v{op.version}"
    )


_BECAUSE = {
    "went_back": "a read that ended {ms:.1f} ms before it started returned v{newer}",
    "stale": "a write of v{newer} was acknowledged {ms:.1f} ms before it started",
    "stale_vs_audit": "v{newer} committed {ms:.1f} ms before it started",
}


def _detail(kind: str, read: Op, newer: int, at: float) -> str:
    because = _BECAUSE[kind].format(ms=(read.started_s - at) * 1000, newer=newer)
    return f"{_what(read)}, but {because}"
