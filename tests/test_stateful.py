"""Model-based test of `Inventory` on both backends (Hypothesis stateful testing).

A plain-Python model of the contract (API.md) predicts the exact outcome of every call: the
changes a write produces (delta, on_hand, version, in request order), `InsufficientStock` with
its shortages in request order, `UnknownSku`, an idempotent replay (the identical changes of the
original answer, `replayed=True`), or `IdempotencyKeyReused`. After every step the invariants
compare each SKU with the model: `get_stock`, on_hand >= 0, and the audit log, paged through,
is gap-free 1..version, matches the model entry by entry, and its deltas replay to on_hand.

Idempotency keys are scoped per user, so the model scopes them per (user, key). A request that
fails keeps no key (its transaction rolled back), so the key may be used again afresh.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from stockkeeper.domain import (
    AuditEntry,
    Change,
    IdempotencyKeyReused,
    InsufficientStock,
    OrderLine,
    Reason,
    Receipt,
    Shortage,
    StockkeeperError,
    UnknownSku,
)
from stockkeeper.service import Inventory
from stockkeeper.store import StoreOptions
from tests.conftest import POSTGRES_URL, admin_execute

CREATABLE = ("A-1", "B.2", "c_3")
NEVER_CREATED = "ghost"  # no rule ever sets it: every call naming it must be UnknownSku
SKUS = (*CREATABLE, NEVER_CREATED)
USERS = ("alice", "bob")
KEYS = (None, "k1", "k2", "k3")  # None: no Idempotency-Key
ON_BEHALF_OF = (None, "shopper-7")
PAGE_LIMITS = (1, 2, 3, 5, 100)

skus = st.sampled_from(SKUS)
# Orders name up to three SKUs: make the never-created one rarer, or most orders are unknown.
order_skus = st.sampled_from((*CREATABLE, *CREATABLE, *CREATABLE, NEVER_CREATED))
users = st.sampled_from(USERS)
keys = st.sampled_from(KEYS)
on_behalf_ofs = st.sampled_from(ON_BEHALF_OF)

STATEFUL_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the repo
    suppress_health_check=[HealthCheck.too_slow],
)


# --- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What a replay must match: the kind of write, its (sku, delta) lines, on_behalf_of."""

    reason: Reason
    lines: tuple[tuple[str, int], ...]
    on_behalf_of: str | None


@dataclass(frozen=True)
class ExpectedEntry:
    version: int
    delta: int
    on_hand: int
    reason: Reason
    user: str
    on_behalf_of: str | None
    idempotency_key: str | None
    audit_id: int  # learnt from the write's answer; the audit log must carry the same id


@dataclass
class ModelItem:
    on_hand: int
    version: int
    audit: list[ExpectedEntry] = field(default_factory=list)


# Outcomes the model predicts.
@dataclass(frozen=True)
class Applied:
    changes: tuple[tuple[str, int, int, int], ...]  # (sku, delta, on_hand, version)


@dataclass(frozen=True)
class Replayed:
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class Reused:
    key: str


@dataclass(frozen=True)
class Unknown:
    sku: str


@dataclass(frozen=True)
class Short:
    shortages: tuple[Shortage, ...]
    is_order: bool


Outcome = Applied | Replayed | Reused | Unknown | Short


@dataclass
class Model:
    items: dict[str, ModelItem] = field(default_factory=dict)
    # (user, key) -> the request that committed with it and the changes it answered.
    keys: dict[tuple[str, str], tuple[Request, tuple[Change, ...]]] = field(default_factory=dict)
    audit_ids: set[int] = field(default_factory=set)

    def predict(self, request: Request, user: str, key: str | None) -> Outcome:
        if key is not None and (user, key) in self.keys:
            earlier, changes = self.keys[user, key]
            return Replayed(changes) if earlier == request else Reused(key)
        for sku, _ in request.lines:
            if sku not in self.items:
                return Unknown(sku)  # the first unknown SKU in request order
        shortages = tuple(
            Shortage(sku, -delta, self.items[sku].on_hand)
            for sku, delta in request.lines
            if delta < 0 and self.items[sku].on_hand < -delta
        )
        if shortages:
            return Short(shortages, is_order=request.reason is Reason.ORDER)
        return Applied(
            tuple(
                (sku, delta, self.items[sku].on_hand + delta, self.items[sku].version + 1)
                for sku, delta in request.lines
            )
        )

    def commit(
        self,
        reason: Reason,
        changes: tuple[Change, ...],
        user: str,
        on_behalf_of: str | None,
        key: str | None,
    ) -> None:
        for change in changes:
            assert change.audit_id not in self.audit_ids, f"audit id reused: {change}"
            self.audit_ids.add(change.audit_id)
            item = self.items.setdefault(change.sku, ModelItem(0, 0))
            item.on_hand, item.version = change.on_hand, change.version
            item.audit.append(
                ExpectedEntry(
                    change.version,
                    change.delta,
                    change.on_hand,
                    reason,
                    user,
                    on_behalf_of,
                    key,
                    change.audit_id,
                )
            )


# --- the machine ----------------------------------------------------------------------------


class InventoryMachine(RuleBasedStateMachine):
    """One fresh database and one event loop per run; `backend` is set by a subclass."""

    backend = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.checks = 0
        self.loop = asyncio.new_event_loop()
        self.tmpdir: str | None = None
        self.schema: str | None = None
        self.inventory: Inventory | None = None
        try:
            if self.backend == "postgres":
                self.schema = f"sk_test_{uuid.uuid4().hex[:12]}"
                self.run(admin_execute(f"CREATE SCHEMA {self.schema}"))
                url = f"{POSTGRES_URL}?search_path={self.schema}"
            else:
                self.tmpdir = tempfile.mkdtemp(prefix="stockkeeper-stateful-")
                url = f"sqlite:///{Path(self.tmpdir) / 'stockkeeper.db'}"
            self.inventory = self.run(Inventory.open(url, StoreOptions(pool_size=2)))
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        try:
            if self.inventory is not None:
                self.run(self.inventory.close())
                self.inventory = None
            if self.schema is not None:
                self.run(admin_execute(f"DROP SCHEMA {self.schema} CASCADE"))
                self.schema = None
        finally:
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                self.tmpdir = None
            if not self.loop.is_closed():
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.close()

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    @property
    def inv(self) -> Inventory:
        assert self.inventory is not None
        return self.inventory

    def attempt(self, awaitable: Any) -> Receipt | StockkeeperError:
        try:
            return self.run(awaitable)
        except StockkeeperError as error:
            return error

    # --- writes through the model ---------------------------------------------------------

    def send(self, request: Request, user: str, key: str | None, as_dicts: bool = False) -> Any:
        inv = self.inv
        if request.reason is Reason.ORDER:
            lines: list[Any] = [
                {"sku": sku, "quantity": -delta} if as_dicts else OrderLine(sku, -delta)
                for sku, delta in request.lines
            ]
            return inv.place_order(
                lines, user=user, on_behalf_of=request.on_behalf_of, idempotency_key=key
            )
        ((sku, delta),) = request.lines
        adjust = inv.decrement_stock if request.reason is Reason.PURCHASE else inv.increment_stock
        return adjust(
            sku, abs(delta), user=user, on_behalf_of=request.on_behalf_of, idempotency_key=key
        )

    def check_write(
        self, request: Request, user: str, key: str | None, as_dicts: bool = False
    ) -> Outcome:
        expected = self.model.predict(request, user, key)
        got = self.attempt(self.send(request, user, key, as_dicts))
        context = f"{request} user={user} key={key}: expected {expected}, got {got!r}"
        event(f"{request.reason.value}: {type(expected).__name__}")
        match expected:
            case Applied(changes):
                assert isinstance(got, Receipt), context
                assert not got.replayed, context
                assert [(c.sku, c.delta, c.on_hand, c.version) for c in got.changes] == list(
                    changes
                ), context
                assert len({c.audit_id for c in got.changes}) == len(got.changes), context
                self.model.commit(request.reason, got.changes, user, request.on_behalf_of, key)
                if key is not None:
                    self.model.keys[user, key] = (request, got.changes)
            case Replayed(changes):
                assert isinstance(got, Receipt), context
                assert got.replayed, context
                assert got.changes == changes, context
            case Reused(reused_key):
                assert isinstance(got, IdempotencyKeyReused), context
                assert got.key == reused_key, context
            case Unknown(sku):
                assert isinstance(got, UnknownSku), context
                assert got.sku == sku, context
            case Short(shortages, is_order):
                assert isinstance(got, InsufficientStock), context
                assert tuple(got.shortages) == shortages, context
                assert got.is_order == is_order, context
                first = shortages[0]
                assert (got.sku, got.requested, got.available) == (
                    first.sku,
                    first.requested,
                    first.available,
                ), context
        return expected

    # --- rules ----------------------------------------------------------------------------

    @initialize(stock=st.dictionaries(st.sampled_from(CREATABLE), st.integers(0, 50)))
    def create_some(self, stock: dict[str, int]) -> None:
        """Start with some SKUs (maybe none), so fewer steps are spent on unknown SKUs."""
        for sku, on_hand in stock.items():
            self.set_stock(sku, on_hand, USERS[0])

    @rule(sku=st.sampled_from(CREATABLE), on_hand=st.integers(0, 50), user=users)
    def set_stock(self, sku: str, on_hand: int, user: str) -> None:
        item = self.model.items.get(sku)
        old, version = (0, 0) if item is None else (item.on_hand, item.version)
        got = self.attempt(self.inv.set_stock(sku, on_hand, user=user))
        context = f"set_stock({sku}, {on_hand}) on {item}: got {got!r}"
        assert isinstance(got, Receipt), context
        assert not got.replayed, context
        assert [(c.sku, c.delta, c.on_hand, c.version) for c in got.changes] == [
            (sku, on_hand - old, on_hand, version + 1)
        ], context
        assert got.created == (item is None), context
        self.model.commit(Reason.SET, got.changes, user, None, None)

    @rule(sku=skus, quantity=st.integers(1, 60), user=users, key=keys, obo=on_behalf_ofs)
    def decrement_stock(
        self, sku: str, quantity: int, user: str, key: str | None, obo: str | None
    ) -> None:
        self.check_write(Request(Reason.PURCHASE, ((sku, -quantity),), obo), user, key)

    @rule(sku=skus, quantity=st.integers(1, 30), user=users, key=keys, obo=on_behalf_ofs)
    def increment_stock(
        self, sku: str, quantity: int, user: str, key: str | None, obo: str | None
    ) -> None:
        self.check_write(Request(Reason.RESTOCK, ((sku, quantity),), obo), user, key)

    @rule(
        lines=st.lists(
            st.tuples(order_skus, st.integers(1, 30)),
            min_size=1,
            max_size=3,
            unique_by=lambda t: t[0],
        ),
        user=users,
        key=keys,
        obo=on_behalf_ofs,
        as_dicts=st.booleans(),
    )
    def place_order(
        self,
        lines: list[tuple[str, int]],
        user: str,
        key: str | None,
        obo: str | None,
        as_dicts: bool,
    ) -> None:
        request = Request(Reason.ORDER, tuple((sku, -q) for sku, q in lines), obo)
        self.check_write(request, user, key, as_dicts)

    @precondition(lambda self: self.model.keys)
    @rule(data=st.data())
    def replay_keyed_request(self, data: st.DataObject) -> None:
        """Send a committed keyed request again, exactly: the original answer comes back."""
        user, key = data.draw(st.sampled_from(sorted(self.model.keys)), label="user, key")
        request, _ = self.model.keys[user, key]
        outcome = self.check_write(request, user, key, as_dicts=data.draw(st.booleans()))
        assert isinstance(outcome, Replayed)

    @precondition(lambda self: self.model.keys)
    @rule(data=st.data(), change=st.sampled_from(["quantity", "obo", "kind", "sku", "user"]))
    def reuse_key_differently(self, data: st.DataObject, change: str) -> None:
        """Send a committed key with another request (or as another user, a fresh scope)."""
        user, key = data.draw(st.sampled_from(sorted(self.model.keys)), label="user, key")
        request, _ = self.model.keys[user, key]
        reason, lines, obo = request.reason, request.lines, request.on_behalf_of
        (sku, delta), rest = lines[0], lines[1:]
        if change == "quantity":
            lines = ((sku, delta - 1 if delta < 0 else delta + 1), *rest)
        elif change == "obo":
            obo = ON_BEHALF_OF[1] if obo is None else None
        elif change == "kind":
            # purchase <-> restock; an order becomes a purchase of its first line.
            reason = Reason.RESTOCK if reason is Reason.PURCHASE else Reason.PURCHASE
            lines = ((sku, -abs(delta) if reason is Reason.PURCHASE else abs(delta)),)
        elif change == "sku":
            other = data.draw(st.sampled_from([s for s in SKUS if s != sku]), label="other sku")
            if any(s == other for s, _ in rest):
                return  # an order may not name a SKU twice
            lines = ((other, delta), *rest)
        else:
            user = USERS[1] if user == USERS[0] else USERS[0]
        outcome = self.check_write(Request(reason, lines, obo), user, key)
        if change != "user":
            assert isinstance(outcome, Reused)

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def items_and_audit_match_the_model(self) -> None:
        self.checks += 1
        limit = PAGE_LIMITS[self.checks % len(PAGE_LIMITS)]
        for sku in SKUS:
            item = self.model.items.get(sku)
            if item is None:
                assert isinstance(self.attempt(self.inv.get_stock(sku)), UnknownSku), sku
                assert isinstance(self.attempt(self.inv.audit(sku)), UnknownSku), sku
                continue
            got = self.run(self.inv.get_stock(sku))
            assert (got.sku, got.on_hand, got.version) == (sku, item.on_hand, item.version), (
                f"{got} != model {item.on_hand=} {item.version=}"
            )
            assert got.on_hand >= 0, got
            entries = self.read_audit(sku, limit)
            assert [e.version for e in entries] == list(range(1, item.version + 1)), (
                f"{sku}: audit versions {[e.version for e in entries]}, version {item.version}"
            )
            on_hand = 0
            for entry in entries:
                on_hand += entry.delta
                assert entry.on_hand == on_hand >= 0, f"{sku}: deltas do not replay at {entry}"
            assert on_hand == got.on_hand, f"{sku}: audit replays to {on_hand}, item says {got}"
            actual = [
                ExpectedEntry(
                    e.version,
                    e.delta,
                    e.on_hand,
                    e.reason,
                    e.user,
                    e.on_behalf_of,
                    e.idempotency_key,
                    e.id,
                )
                for e in entries
            ]
            assert actual == item.audit, f"{sku}: audit log differs from the model"
            assert all(e.sku == sku for e in entries), sku

    def read_audit(self, sku: str, limit: int) -> list[AuditEntry]:
        entries: list[AuditEntry] = []
        after = 0
        while True:
            page = self.run(self.inv.audit(sku, after_version=after, limit=limit))
            assert len(page.entries) <= limit, page
            entries.extend(page.entries)
            if page.next_after_version is None:
                return entries
            assert page.entries and page.next_after_version == page.entries[-1].version, page
            after = page.next_after_version


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_inventory_matches_the_model(backend: str) -> None:
    machine = type(f"InventoryMachine_{backend}", (InventoryMachine,), {"backend": backend})
    run_state_machine_as_test(machine, settings=STATEFUL_SETTINGS)
