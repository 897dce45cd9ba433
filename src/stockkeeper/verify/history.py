"""A recorded history of operations against a cluster, and the checks it must pass against the
audit log: the product's guarantees (../shared/API.md, docs/cache.md) stated over what clients saw.

`check` groups the operations and the audit entries by SKU, sorts each group once and sweeps it,
so n operations and audit entries cost O(n log n) time and O(n) memory. It counts every
violation but keeps at most `keep_max` examples of each kind, so even a badly broken run stays
cheap to report:

    verdict = check(ops, entries, strict_reads=True, complete_writers=True)
    verdict.ok            # no violation of any kind
    verdict.counts        # {"not_in_history": 0, "went_back": 0, …, "unexplained": 0}
    verdict.examples      # the first Violations of each kind, in the order of KINDS
    verdict.indeterminate # operations whose outcome is unknown: reported, never a violation
    verdict.skipped       # rules the inputs could not support (always counted 0)

What the product guarantees, and so what is checked by default: every committed change gets
the SKU's next version (1, 2, 3, … without gaps) and one audit entry whose delta replays to its
on_hand; stock is never negative, so no purchase succeeds without the stock to cover it; an
idempotency key applies at most once; writes are linearizable; reads return committed states,
never go back, and may be stale by at most `stale_s_max` (100 ms) after a change was
acknowledged or committed. Reads are therefore NOT linearizable by contract: `strict_reads=True`
asks for full (strict) linearizability of the versioned register anyway, e.g. to measure how
often the allowance is used; it counts under `not_linearizable`, and so against `ok`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter

STALE_S_MAX = 0.1
KEEP_MAX = 1000
KINDS = (
    "not_in_history",
    "went_back",
    "stale",
    "stale_vs_audit",
    "not_linearizable",
    "negative",
    "audit_gap",
    "audit_replay",
    "ack_missing",
    "ack_duplicated",
    "oversold",
    "unexplained",
    "over_held",
    "hold_ends",
    "confirm_after_expiry",
    "expiry_untimely",
)
OUTCOMES = ("ok", "refused", "indeterminate")
# Write kinds that take stock; any kind but "read" is a write ("restock", "set", …).
TAKES_STOCK = frozenset({"purchase", "order"})
# Writes that change no item (an extend moves only a hold's expires_at): they explain nothing.
CHANGES_NO_ITEM = frozenset({"extend"})
# Rules that need full audit entries (AuditEntry), not just version → on_hand.
NEEDS_ENTRIES = (
    "audit_gap",
    "audit_replay",
    "ack_duplicated",
    "over_held",
    "hold_ends",
    "confirm_after_expiry",
    "expiry_untimely",
)
# shared/API.md: each expiry is recorded within 1 s of expires_at.
EXPIRY_S_MAX = 1.0
HOLD_ENDS = frozenset({"confirm", "release", "expire"})


@dataclass(frozen=True)
class Op:
    """One operation as a client saw it: what, where, when (seconds, on one clock shared by all
    operations), and the state it returned, or None if it failed or changed nothing.

    `outcome` is "ok" (answered: the state is `version`/`on_hand`, or a failure if they are
    None), "refused" (a definite failure that changed nothing: 4xx, 409 insufficient stock) or
    "indeterminate" (a timeout, a 503 whose outcome is unknown: it may or may not have applied;
    its version, if any, is ignored). A write may record the `delta` it asked for (-quantity for
    a purchase) and the `idempotency_key` it sent; each is then compared with its audit entry."""

    kind: str  # "read", or a write: "purchase", "restock", "set", "order" (one line's SKU)
    sku: str
    server: int
    started_s: float
    ended_s: float
    version: int | None
    on_hand: int | None
    outcome: str = "ok"
    delta: int | None = None
    idempotency_key: str | None = None
    # Holds: the hold a "hold", "confirm", "release" or "extend" acts on (None for a create
    # whose answer never came), and the expires_at a create or extend answered, in seconds
    # on the database's clock (what audit entries' `db_s` are on).
    hold_id: str | None = None
    expires_at_s: float | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One audit log entry (API.md), `at_s` its commit time on the operations' clock if known,
    `db_s` the same moment on the database's clock (the entry's `at`), if known."""

    sku: str
    version: int
    delta: int
    on_hand: int
    idempotency_key: str | None = None
    at_s: float | None = None
    held_delta: int = 0
    held: int = 0
    reason: str | None = None
    hold_id: str | None = None
    db_s: float | None = None


@dataclass(frozen=True)
class Violation:
    """One broken guarantee: `op` gave the offending answer; `cause` is the operation it
    contradicts (an earlier read, an acknowledged write), None when the audit log alone does;
    `entry` the audit entry concerned, if any. Rules about the audit log alone have no `op`."""

    kind: str  # one of KINDS
    op: Op | None
    cause: Op | None
    detail: str
    entry: AuditEntry | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True)
class Verdict:
    """What `check` found: `counts` of all violations by kind (every kind in KINDS, zeros
    included), `examples`, at most `keep_max` violations of each kind, in the order of KINDS
    (one example stands for a whole run of missing audit versions);
    `indeterminate`, how many operations had an unknown outcome (never a violation); `skipped`,
    the kinds the inputs could not support (their count is 0 because they were not judged)."""

    counts: dict[str, int]
    examples: list[Violation]
    indeterminate: int = 0
    skipped: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())

    def __str__(self) -> str:
        shown = 10
        lines = [", ".join(f"{kind} {n}" for kind, n in self.counts.items())]
        lines[0] += f"; indeterminate {self.indeterminate}"
        if self.skipped:
            lines[0] += f"; not judged: {', '.join(self.skipped)}"
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
    audit: Mapping[str, Mapping[int, int]] | Iterable[AuditEntry],
    commits: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    stale_s_max: float = STALE_S_MAX,
    keep_max: int = KEEP_MAX,
    *,
    strict_reads: bool = False,
    complete_writers: bool = False,
    holds_settled: bool = False,
    expiry_s_max: float | None = EXPIRY_S_MAX,
) -> Verdict:
    """Check `ops` against the audit log, each rule on its own.

    `audit` is either the full log, AuditEntry values in any order, or the old form SKU →
    version → on_hand, which cannot support the rules in NEEDS_ENTRIES (they are skipped).
    `commits`, if given, maps SKU → (version, commit time on the operations' clock); without it,
    the entries' `at_s` are used where present. Only answered operations (outcome "ok" with a
    version) are judged; an acknowledged change ("ack") is an answered write. Operations with
    outcome "indeterminate" are counted in `Verdict.indeterminate`, never as a violation; the
    writes among them, and writes "ok" without a version (a failure the recording did not
    classify), may explain audit entries (rule 12) and are judged by nothing else.

    1. not_in_history: every answer (read or ack) is a state of the audit log: its version has
       an entry with that on_hand.
    2. went_back: no read returns an older version than a read that ended before it started.
    3. stale: no read returns an older version than a write acknowledged more than
       `stale_s_max` before the read started.
    4. stale_vs_audit: no read returns an older version than one committed more than
       `stale_s_max` before the read started, whoever wrote it (skipped without commit times).
    5. not_linearizable: the versions agree with real time, per SKU. (b) A write that started
       after an answered operation (read or write) of version v ended produced a version > v.
       With `strict_reads`, also a read that started after an answered operation of version v
       ended returned a version ≥ v (no staleness allowance), and (a) no operation returned a
       version whose commit time (from the audit) is after the operation ended, when that
       version's write is not in the recording (when it is, (b) on that write covers it). An
       idempotent replay (a second ack of the same SKU, key and version) returns an old answer
       by design and is not judged by (b). By versions, per SKU, one sweep: not an exhaustive
       search, so it is sound (never flags a linearizable history) but may miss anomalies the
       versions cannot show.
    6. negative: no audit entry and no answered state has on_hand < 0.
    7. audit_gap: per SKU, the audit versions are exactly 1..n: each missing version, each
       duplicate entry and each version < 1 counts once (a run of missing versions is one
       example).
    8. audit_replay: per SKU, on_hand[v] == on_hand[v-1] + delta[v], with on_hand[0] = 0 (the
       first entry's delta is the initial set); an entry whose predecessor is missing is not
       judged (audit_gap reports it); of duplicates, the first (in input order) is the state.
    9. ack_missing: every ack is in the audit exactly once: an entry for its (sku, version)
       exists with its on_hand, and its delta and idempotency key if it recorded them (the
       last two only with full entries); and no two acks claim one (sku, version) unless they
       share an idempotency key (a replay): the later one (by start) is missing. An ack of an
       invented state therefore breaks not_in_history too.
    10. ack_duplicated: an idempotency key applies at most once: no two audit entries of one
       SKU share a non-null key (each after the first counts). Keys are per principal in the
       product; the verifier uses one principal, and an order applies one key to each of its
       SKUs, so keys are compared per SKU.
    11. oversold: a purchase ("purchase" or "order" line) acknowledged at version v took stock
       that was there: the audit entry of v has delta < 0 and on_hand[v-1] + delta ≥ 0, and the
       ack's on_hand ≥ 0 (with the old audit form, delta = on_hand[v] - on_hand[v-1]). Not
       judged when v or v-1 has no entry (ack_missing, audit_gap). A purchase acknowledged
       against an entry that took nothing breaks only this rule; one that took more than there
       was breaks negative or audit_replay as well.
    12. unexplained (only with `complete_writers`: the caller recorded every writer of these
       SKUs, the initial set included): every audit entry's version is acknowledged by an ack,
       or explained by a distinct write of its SKU with an unknown outcome that started before
       the entry committed (any, without commit times). Matched greedily in commit order,
       which is a maximum matching, so the count is exact.

    Holds, from the full audit log (entries with their `held`, `reason` and `hold_id`):
    13. over_held: sold plus held never exceeds the stock: at every entry 0 ≤ held ≤ on_hand,
       and held replays (held[v] == held[v-1] + held_delta[v]).
    14. hold_ends: every hold ends exactly once: each of its SKUs has one `hold` entry and at
       most one end (`confirm`, `release` or `expire`), all ends of one hold share a reason, and
       a hold that a recorded "confirm" or "release" acknowledged ended so. With
       `holds_settled` (the caller let every hold end before reading the audit), each has
       ended.
    15. confirm_after_expiry: no confirm commits at or after the hold's expires_at by the
       database's clock (the newest one a create or extend acknowledged; not judged for a hold
       with an extend of unknown outcome, or without `db_s`).
    16. expiry_untimely: an expiry is recorded no sooner than expires_at and at most
       `expiry_s_max` after it (same sources as 15; None: not judged, as under faults that
       keep every server from the database, when no expiry can be recorded).
    Expiry entries are written by no client: each is explained (rule 12) by its hold's entry.
    Refused operations are not judged.
    """
    ops = list(ops)
    tally = _Tally(keep_max)
    skipped: list[str] = []
    log = _Log(audit)
    if not log.full:
        skipped += NEEDS_ENTRIES
    commit_at: dict[str, dict[int, float]] = {}
    if commits is not None:
        commit_at = {sku: dict(sku_commits) for sku, sku_commits in commits.items()}
    else:
        commit_at = log.commit_times()
    if not commit_at:
        skipped.append("stale_vs_audit")
    if not complete_writers:
        skipped.append("unexplained")
    if expiry_s_max is None:
        skipped.append("expiry_untimely")

    indeterminate = 0
    reads: dict[str, list[_Answer]] = defaultdict(list)
    acks: dict[str, list[Op]] = defaultdict(list)
    unknown: dict[str, list[float]] = defaultdict(list)  # writes of unknown outcome: starts
    for op in ops:
        if op.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {op.outcome!r} of {op}")
        if op.outcome == "indeterminate":
            indeterminate += 1
        if op.outcome == "refused":
            continue
        if op.outcome == "indeterminate" or op.version is None:
            if op.kind != "read" and op.kind not in CHANGES_NO_ITEM:
                unknown[op.sku].append(op.started_s)
            continue
        expected = log.states.get(op.sku, {}).get(op.version)
        if expected != op.on_hand and tally.count("not_in_history"):
            has = "no such version" if expected is None else f"on_hand {expected}"
            detail = f"{_what(op)} answered on_hand {op.on_hand}; the audit log has {has}"
            tally.keep(Violation("not_in_history", op, None, detail))
        if op.on_hand is not None and op.on_hand < 0 and tally.count("negative"):
            detail = f"{_what(op)} answered on_hand {op.on_hand}"
            tally.keep(Violation("negative", op, None, detail))
        if op.kind == "read":
            reads[op.sku].append((op.started_s, op.version, op))
        else:
            acks[op.sku].append(op)

    _check_audit(log, tally)
    if log.full:
        _check_holds(log, ops, holds_settled, expiry_s_max, tally)
    producers: dict[str, dict[int, Op]] = {}
    for sku, sku_acks in acks.items():
        producers[sku] = _check_acks(sku, sku_acks, log, tally)
    if log.full:
        _check_keys(log, producers, tally)

    for sku in dict.fromkeys([*reads, *acks]):  # in a stable order: examples are repeatable
        sku_reads = reads.get(sku, [])
        sku_reads.sort(key=itemgetter(0))
        writes: list[_Event] = [(op.ended_s, op.version or 0, op) for op in acks.get(sku, [])]
        sweeps = [
            ("went_back", _marks([(op.ended_s, v, op) for _, v, op in sku_reads], 0.0)),
            ("stale", _marks(writes, stale_s_max)),
        ]
        if sku in commit_at:
            committed: list[_Event] = [(at, v, None) for v, at in commit_at[sku].items()]
            sweeps.append(("stale_vs_audit", _marks(committed, stale_s_max)))
        for kind, marks in sweeps:
            for read, newer, cause, at in _older(sku_reads, marks):
                if tally.count(kind):
                    detail = _detail(kind, read, newer, at)
                    tally.keep(Violation(kind, read, cause, detail))
        sku_producers = producers.get(sku, {})
        _check_linearizable(
            sku_reads,
            writes,
            sku_producers,
            commit_at.get(sku, {}) if strict_reads else {},
            strict_reads,
            tally,
        )
    if complete_writers:
        for sku in log.states:
            _check_explained(
                sku, log, producers.get(sku, {}), unknown.get(sku, []), commit_at, tally
            )
    return Verdict(
        tally.counts,
        [v for kind in KINDS for v in tally.kept[kind]],
        indeterminate,
        tuple(kind for kind in KINDS if kind in skipped),
    )


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

    def count(self, kind: str, n: int = 1) -> bool:
        """Count `n` violations of `kind` (a run of missing versions is one example); whether an
        example of them is still wanted."""
        self.counts[kind] += n
        return len(self.kept[kind]) < self.keep_max

    def keep(self, violation: Violation) -> None:
        self.kept[violation.kind].append(violation)


class _Log:
    """The audit log by SKU: `states` version → on_hand (of the first entry of each version);
    with full entries (`full`), also `entries` (all, by version, stable) and `first` (version →
    first entry)."""

    def __init__(self, audit: Mapping[str, Mapping[int, int]] | Iterable[AuditEntry]) -> None:
        self.entries: dict[str, list[AuditEntry]] = defaultdict(list)
        self.first: dict[str, dict[int, AuditEntry]] = defaultdict(dict)
        self.states: dict[str, dict[int, int]] = {}
        if isinstance(audit, Mapping):
            self.full = False
            self.states = {sku: dict(versions) for sku, versions in audit.items()}
            return
        self.full = True
        for entry in audit:
            self.entries[entry.sku].append(entry)
            self.first[entry.sku].setdefault(entry.version, entry)
        for sku, entries in self.entries.items():
            entries.sort(key=attrgetter("version"))
            self.states[sku] = {v: entry.on_hand for v, entry in self.first[sku].items()}

    def commit_times(self) -> dict[str, dict[int, float]]:
        times: dict[str, dict[int, float]] = {}
        for sku, first in self.first.items():
            sku_times = {v: e.at_s for v, e in first.items() if e.at_s is not None}
            if sku_times:
                times[sku] = sku_times
        return times

    def held_before(self, sku: str, version: int) -> int:
        """held before `version` (0 at the start, or where the log cannot say)."""
        prev = self.first.get(sku, {}).get(version - 1)
        return 0 if prev is None else prev.held

    def before(self, sku: str, version: int) -> tuple[int, int] | None:
        """(on_hand before `version`, the delta of `version`), None if the log cannot say."""
        states = self.states.get(sku, {})
        prev = 0 if version == 1 else states.get(version - 1)
        if prev is None or version not in states:
            return None
        if self.full:
            return prev, self.first[sku][version].delta
        return prev, states[version] - prev


def _check_audit(log: _Log, tally: _Tally) -> None:
    """negative, audit_gap and audit_replay: the audit log alone."""
    if not log.full:
        for sku, states in log.states.items():
            for version, on_hand in states.items():
                if on_hand < 0 and tally.count("negative"):
                    detail = f"the audit entry of {sku} v{version} has on_hand {on_hand}"
                    tally.keep(Violation("negative", None, None, detail))
        return
    for sku, entries in log.entries.items():
        expected = 1
        for entry in entries:
            if entry.on_hand < 0 and tally.count("negative"):
                detail = f"the audit entry of {sku} v{entry.version} has on_hand {entry.on_hand}"
                tally.keep(Violation("negative", None, None, detail, entry))
            if entry.version < expected:
                what = "is duplicated" if entry.version >= 1 else "is below 1"
                if tally.count("audit_gap"):
                    detail = f"the audit of {sku}: v{entry.version} {what}"
                    tally.keep(Violation("audit_gap", None, None, detail, entry))
                continue
            missing = entry.version - expected
            if missing and tally.count("audit_gap", missing):
                last = "" if missing == 1 else f"-v{entry.version - 1}"
                detail = f"the audit of {sku} has no v{expected}{last} (next is v{entry.version})"
                tally.keep(Violation("audit_gap", None, None, detail, entry))
            expected = entry.version + 1
            before = log.before(sku, entry.version)
            if before is None or log.first[sku][entry.version] is not entry:
                continue
            prev, delta = before
            if prev + delta != entry.on_hand and tally.count("audit_replay"):
                detail = (
                    f"the audit of {sku}: v{entry.version} has on_hand {entry.on_hand}, but "
                    f"on_hand {prev} before it with delta {delta} makes {prev + delta}"
                )
                tally.keep(Violation("audit_replay", None, None, detail, entry))
            held_before = log.held_before(sku, entry.version)
            wrong = ""
            if entry.on_hand >= 0 and not 0 <= entry.held <= entry.on_hand:  # else: negative
                wrong = f"held {entry.held} of on_hand {entry.on_hand}"
            elif held_before + entry.held_delta != entry.held:
                wrong = (
                    f"held {entry.held}, but held {held_before} before it with held_delta "
                    f"{entry.held_delta} makes {held_before + entry.held_delta}"
                )
            if wrong and tally.count("over_held"):
                detail = f"the audit of {sku}: v{entry.version} has {wrong}"
                tally.keep(Violation("over_held", None, None, detail, entry))


def _check_acks(sku: str, acks: list[Op], log: _Log, tally: _Tally) -> dict[int, Op]:
    """ack_missing and oversold for one SKU's acks; the producer (the first ack, by start) of
    each acknowledged version."""
    acks.sort(key=attrgetter("started_s"))
    producers: dict[int, Op] = {}
    states = log.states.get(sku, {})
    first = log.first.get(sku, {})
    for op in acks:
        version = op.version or 0
        earlier = producers.get(version)
        if earlier is not None:
            replay = op.idempotency_key is not None
            replay = replay and op.idempotency_key == earlier.idempotency_key
            if not replay and tally.count("ack_missing"):
                detail = f"{_what(op)} was acknowledged, but so was {_what(earlier)}"
                tally.keep(Violation("ack_missing", op, earlier, detail))
            continue
        producers[version] = op
        entry = first.get(version)
        wrong = ""
        if version not in states:
            wrong = "the audit log has no such version"
        elif states[version] != op.on_hand:
            wrong = f"its audit entry has on_hand {states[version]}"
        elif entry is not None and op.delta is not None and entry.delta != op.delta:
            wrong = f"it asked for delta {op.delta}, its audit entry has {entry.delta}"
        elif (
            entry is not None
            and op.idempotency_key is not None
            and entry.idempotency_key != op.idempotency_key
        ):
            wrong = f"it sent key {op.idempotency_key!r}, the entry has {entry.idempotency_key!r}"
        if wrong and tally.count("ack_missing"):
            detail = f"{_what(op)} was acknowledged, but {wrong}"
            tally.keep(Violation("ack_missing", op, None, detail, entry))
        if op.kind not in TAKES_STOCK:
            continue
        before = log.before(sku, version)
        if before is None:
            continue
        prev, delta = before
        available = prev - log.held_before(sku, version)
        took = delta < 0 and available + delta >= 0 and (op.on_hand is None or op.on_hand >= 0)
        if not took and tally.count("oversold"):
            detail = (
                f"{_what(op)} succeeded, but the audit has {available} available before it "
                f"and delta {delta}"
            )
            tally.keep(Violation("oversold", op, None, detail, entry))
    return producers


def _check_keys(log: _Log, producers: dict[str, dict[int, Op]], tally: _Tally) -> None:
    """ack_duplicated: no idempotency key applies twice to one SKU."""
    for sku, entries in log.entries.items():
        applied: dict[str, AuditEntry] = {}
        for entry in entries:
            key = entry.idempotency_key
            if key is None:
                continue
            earlier = applied.setdefault(key, entry)
            if earlier is not entry and tally.count("ack_duplicated"):
                cause = producers.get(sku, {}).get(earlier.version)
                detail = (
                    f"the audit of {sku}: key {key!r} applied at v{earlier.version} "
                    f"and again at v{entry.version}"
                )
                tally.keep(Violation("ack_duplicated", None, cause, detail, entry))


def _check_linearizable(
    reads: list[_Answer],
    writes: list[_Event],
    producers: dict[int, Op],
    commit_at: Mapping[int, float],
    strict_reads: bool,
    tally: _Tally,
) -> None:
    """not_linearizable for one SKU: (b) by one sweep over everything answered, by end;
    (a) against commit times (given only when `strict_reads`)."""
    answered: list[_Event] = [(op.ended_s, v, op) for _, v, op in reads]
    answered += writes
    marks = _marks(answered, 0.0)
    judged: list[tuple[float, int, Op, bool]] = [
        (op.started_s, version, op, True) for version, op in producers.items()
    ]
    if strict_reads:
        judged += [(started_s, v, op, False) for started_s, v, op in reads]
    judged.sort(key=itemgetter(0))
    index, best, cause, at = 0, 0, None, 0.0
    for started_s, version, op, is_write in judged:
        while index < len(marks) and marks[index][0] < started_s:
            _, best, cause, at = marks[index]
            index += 1
        if (version <= best if is_write else version < best) and tally.count("not_linearizable"):
            ms = (started_s - at) * 1000
            what = "produced" if is_write else "returned"
            detail = (
                f"{_what(op)} {what} v{version}, but v{best} was answered {ms:.1f} ms "
                "before it started"
            )
            tally.keep(Violation("not_linearizable", op, cause, detail))
    for ended_s, version, answer in answered:
        committed = commit_at.get(version)
        if version in producers or committed is None or ended_s >= committed or answer is None:
            continue
        if tally.count("not_linearizable"):
            ms = (committed - ended_s) * 1000
            detail = f"{_what(answer)} returned v{version}, committed {ms:.1f} ms after it ended"
            tally.keep(Violation("not_linearizable", answer, None, detail))


def _check_explained(
    sku: str,
    log: _Log,
    producers: Mapping[int, Op],
    unknown_starts: list[float],
    commit_at: Mapping[str, Mapping[int, float]],
    tally: _Tally,
) -> None:
    """unexplained for one SKU: entries no ack claims, each matched to a distinct write of unknown
    outcome that started before it committed (greedily in commit order: a maximum matching, as
    every write that can explain an entry can explain any later one)."""
    times = commit_at.get(sku, {})
    first = log.first.get(sku, {})
    held = {e.hold_id for e in first.values() if e.reason == "hold" and e.hold_id is not None}
    orphans = sorted(
        (times.get(version, math.inf), version)
        for version in log.states[sku]
        if version not in producers and not _expiry_of(first.get(version), held)
    )
    starts = sorted(unknown_starts)
    index = free = 0
    for at, version in orphans:
        while index < len(starts) and starts[index] <= at:
            index += 1
            free += 1
        if free:
            free -= 1
        elif tally.count("unexplained"):
            entry = log.first.get(sku, {}).get(version)
            detail = f"the audit entry of {sku} v{version} was written by no recorded operation"
            tally.keep(Violation("unexplained", None, None, detail, entry))


def _expiry_of(entry: AuditEntry | None, held: set[str]) -> bool:
    """An expiry is written by no client: its hold's own entry (explained in turn) explains it."""
    return entry is not None and entry.reason == "expire" and entry.hold_id in held


def _check_holds(
    log: _Log, ops: Sequence[Op], settled: bool, expiry_s_max: float | None, tally: _Tally
) -> None:
    """hold_ends, confirm_after_expiry and expiry_untimely (rules 14-16)."""
    starts: dict[tuple[str, str], list[AuditEntry]] = defaultdict(list)
    ends: dict[tuple[str, str], list[AuditEntry]] = defaultdict(list)
    for sku, entries in log.entries.items():
        for entry in entries:
            if entry.hold_id is None:
                continue
            if entry.reason == "hold":
                starts[entry.hold_id, sku].append(entry)
            elif entry.reason in HOLD_ENDS:
                ends[entry.hold_id, sku].append(entry)
    reasons: dict[str, set[str]] = defaultdict(set)
    for (hold_id, _sku), found in ends.items():
        reasons[hold_id].update(str(e.reason) for e in found)
    for key in sorted({*starts, *ends}):
        hold_id, sku = key
        n_starts, n_ends = len(starts.get(key, [])), len(ends.get(key, []))
        wrong = ""
        if n_starts != 1:
            wrong = f"{n_starts} hold entries"
        elif n_ends > 1 or (settled and n_ends == 0):
            wrong = f"{n_ends} ends"
        if wrong and tally.count("hold_ends"):
            detail = f"hold {hold_id} on {sku} has {wrong}, expected one"
            example = next(iter(ends.get(key) or starts.get(key) or []), None)
            tally.keep(Violation("hold_ends", None, None, detail, example))
    for hold_id, ended_as in sorted(reasons.items()):
        if len(ended_as) > 1 and tally.count("hold_ends"):
            detail = f"hold {hold_id} ended as {', '.join(sorted(ended_as))}, not one of them"
            tally.keep(Violation("hold_ends", None, None, detail))
    deadlines, unknown = _deadlines(ops)
    for op in ops:
        if op.kind not in ("confirm", "release") or op.outcome != "ok" or op.version is None:
            continue
        found = ends.get((op.hold_id or "", op.sku), [])
        if [e.reason for e in found] != [op.kind] and tally.count("hold_ends"):
            detail = (
                f"{_what(op)} was acknowledged, but the hold ended as {[e.reason for e in found]}"
            )
            tally.keep(Violation("hold_ends", op, None, detail))
    for (hold_id, _sku), found in ends.items():
        expires_at = deadlines.get(hold_id)
        if expires_at is None or hold_id in unknown:
            continue
        for entry in found:
            if entry.db_s is None:
                continue
            late_s = entry.db_s - expires_at
            if entry.reason == "confirm" and late_s >= 0:
                kind, what = "confirm_after_expiry", "confirmed"
            elif (
                entry.reason == "expire"
                and expiry_s_max is not None
                and not 0 <= late_s <= expiry_s_max
            ):
                kind, what = "expiry_untimely", "expired"
            else:
                continue
            if tally.count(kind):
                detail = f"hold {hold_id} was {what} {late_s * 1000:.1f} ms after expires_at"
                tally.keep(Violation(kind, None, None, detail, entry))


def _deadlines(ops: Sequence[Op]) -> tuple[dict[str, float], set[str]]:
    """Each hold's expires_at as the last acknowledged create or extend (by end) set it, and
    the holds an extend of unknown outcome may have moved."""
    latest: dict[str, tuple[float, float]] = {}
    unknown: set[str] = set()
    for op in ops:
        if op.hold_id is None or op.kind not in ("hold", "extend"):
            continue
        if op.outcome == "indeterminate":
            unknown.add(op.hold_id)
        elif (
            op.outcome == "ok"
            and op.expires_at_s is not None
            and (op.hold_id not in latest or latest[op.hold_id][0] <= op.ended_s)
        ):
            latest[op.hold_id] = (op.ended_s, op.expires_at_s)
    return {hold_id: at for hold_id, (_, at) in latest.items()}, unknown


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
