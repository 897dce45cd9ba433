"""`stockkeeper verify`: a recorded, seeded mixed history against running servers, judged
against their audit log (stockkeeper.verify.history).

It works on SKUs of its own, `verify-<seed>-<run>-<n>` (a new `<run>` each time, so a rerun with
the same seed never meets an earlier run's audit log), never on real stock, and leaves them at
0. The seed fixes each client's choice of operations, SKUs, servers and quantities; the servers'
timing decides the rest.

Every write is recorded with its outcome: acknowledged (with the change it reports), refused
(409: nothing changed), or indeterminate (a timeout or a 503 after it was sent: it may or may
not have committed). An idempotent write is sometimes sent twice with one key; the second answer
must be the first one, replayed.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp

from stockkeeper.verify.history import EXPIRY_S_MAX, AuditEntry, Op, Verdict, check

HOT_SKUS = 4
COLD_SKUS = 40
INITIAL_STOCK = 20
REQUEST_TIMEOUT_S = 5.0
AUDIT_PAGE_LIMIT = 1000
REPLAY_MISMATCH = "replay_mismatch"
# A keyed write whose outcome is unknown is sent again, as a client that must know would do.
RETRIES_MAX = 3
RETRY_WAIT_S = 0.2
# Holds last 1-2 s, so many expire within a run; after it, every hold verify knows is released,
# and it waits for the others (a create of unknown outcome) to expire and be recorded.
HOLD_TTL_S_MAX = 2
HOLD_SETTLE_S = HOLD_TTL_S_MAX + EXPIRY_S_MAX + 0.5


class CannotRun(Exception):
    """Verify could not run at all (exit 2): a URL that does not answer, a bad token."""


@dataclass(frozen=True)
class VerifyOptions:
    urls: Sequence[str]
    token: str
    seconds: float = 10.0
    seed: int = 0
    concurrency: int = 16
    hot_skus: int = HOT_SKUS
    cold_skus: int = COLD_SKUS
    # How late an expiry may be recorded; None under faults that keep servers from the database.
    expiry_s_max: float | None = EXPIRY_S_MAX


@dataclass
class Report:
    ops: list[Op]
    entries: list[AuditEntry]
    verdict: Verdict
    replay_mismatches: list[str]
    skus: list[str]
    seconds: float
    holds: set[str] = field(default_factory=set)

    def hold_ends(self) -> dict[str, int]:
        """How the run's holds ended, by the audit: confirm, release or expire."""
        ended = {(e.hold_id, e.reason) for e in self.entries if e.hold_id and e.reason != "hold"}
        counts: dict[str, int] = {}
        for _, reason in ended:
            counts[str(reason)] = counts.get(str(reason), 0) + 1
        return counts

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.replay_mismatches

    def counts(self) -> dict[str, int]:
        return {**self.verdict.counts, REPLAY_MISMATCH: len(self.replay_mismatches)}


@dataclass
class _Recorder:
    ops: list[Op] = field(default_factory=list)
    replay_mismatches: list[str] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # the newest version this run saw
    holds: set[str] = field(default_factory=set)  # every hold a create acknowledged


class _Api:
    def __init__(self, session: aiohttp.ClientSession, urls: Sequence[str], token: str) -> None:
        self.session = session
        self.urls = [url.rstrip("/") for url in urls]
        self._auth = {"Authorization": f"Bearer {token}"}

    async def call(
        self,
        method: str,
        server: int,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        key: str | None = None,
    ) -> tuple[int, Any, bool]:
        """(status, body, whether the answer was a replay)."""
        headers = dict(self._auth)
        if key is not None:
            headers["Idempotency-Key"] = key
        async with self.session.request(
            method, self.urls[server] + path, json=json, params=params, headers=headers
        ) as response:
            body = await response.json(content_type=None)
            return response.status, body, response.headers.get("Idempotent-Replayed") == "true"


async def preflight(api: _Api, sku: str) -> None:
    for server, url in enumerate(api.urls):
        try:
            async with api.session.get(url + "/healthz") as response:
                if response.status != 200:
                    raise CannotRun(f"{url}/healthz answered {response.status}")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise CannotRun(f"cannot reach {url}: {error or type(error).__name__}") from None
        status, body, _ = await api.call("GET", server, f"/v1/items/{sku}/audit")
        if status == 401:
            raise CannotRun(f"{url} does not know this token (401 unauthenticated)")
        if status == 403:
            raise CannotRun(f"{url}: verify needs an admin token; this one's role is too low")
        if status not in (200, 404):
            raise CannotRun(f"{url} answered {status} to an audit read: {body}")


class _Client:
    """One seeded client: a loop of random operations until `stop` is set."""

    def __init__(
        self, api: _Api, rng: random.Random, skus: list[str], hot: int, rec: _Recorder
    ) -> None:
        self._api, self._rng, self._skus, self._hot, self._rec = api, rng, skus, hot, rec
        self._keys = 0
        self._name = secrets.token_hex(4)
        self._holds: list[tuple[str, list[str]]] = []  # this client's holds it may still end

    def _sku(self) -> str:
        rng = self._rng
        if rng.random() < 0.8:
            return self._skus[rng.randrange(self._hot)]
        return self._skus[rng.randrange(self._hot, len(self._skus))]

    def _key(self) -> str | None:
        if self._rng.random() < 0.5:
            return None
        self._keys += 1
        return f"verify-{self._name}-{self._keys}"

    async def run(self, stop: asyncio.Event) -> None:
        rng = self._rng
        while not stop.is_set():
            roll, server = rng.random(), rng.randrange(len(self._api.urls))
            try:
                if roll < 0.36:
                    await self._read(server, self._sku(), min_version=False)
                elif roll < 0.45:
                    await self._read(server, self._sku(), min_version=True)
                elif roll < 0.53:
                    await self._read_many(server, rng.sample(self._skus, rng.randint(2, 5)))
                elif roll < 0.69:
                    await self._change(server, "purchase", self._sku(), rng.randint(1, 3))
                elif roll < 0.78:
                    await self._change(server, "restock", self._sku(), rng.randint(1, 5))
                elif roll < 0.82:
                    await self._order(server, rng.sample(self._skus[: self._hot], 2))
                elif roll < 0.85:
                    await self._set(server, self._sku(), rng.randint(0, 30))
                elif roll < 0.92 or not self._holds:
                    await self._hold(server)
                else:
                    await self._end_a_hold(server)
            except (aiohttp.ClientError, TimeoutError):
                continue  # recorded as indeterminate where it was a write

    def _record(
        self, kind: str, sku: str, server: int, started: float, answer: Any, **extra: Any
    ) -> None:
        version = None if answer is None else int(answer["version"])
        on_hand = None if answer is None else int(answer["on_hand"])
        self._rec.ops.append(
            Op(kind, sku, server, started, time.monotonic(), version, on_hand, **extra)
        )
        if version is not None:
            self._rec.seen[sku] = max(self._rec.seen.get(sku, 0), version)

    async def _read(self, server: int, sku: str, *, min_version: bool) -> None:
        params = None
        if min_version and sku in self._rec.seen:
            params = {"min_version": str(self._rec.seen[sku])}
        started = time.monotonic()
        status, body, _ = await self._api.call("GET", server, f"/v1/items/{sku}", params=params)
        if status == 200:
            self._record("read", sku, server, started, body)

    async def _read_many(self, server: int, skus: list[str]) -> None:
        started = time.monotonic()
        status, body, _ = await self._api.call(
            "GET", server, "/v1/items", params=[("sku", sku) for sku in skus]
        )
        if status == 200:
            for item in body["items"]:
                self._record("read", item["sku"], server, started, item)

    async def _write(
        self,
        server: int,
        method: str,
        path: str,
        payload: Any,
        key: str | None,
        record: Callable[[str, Any], None],
    ) -> None:
        """Send a write and record what it did. With a key, send it again (on any server) while
        its outcome is unknown, and now and then once more after it is known: the answer must
        then be the first one, replayed. Each attempt is recorded from the first one's start,
        since its change may have committed at any time since."""
        for attempt in range(RETRIES_MAX + 1 if key is not None else 1):
            if attempt:
                await asyncio.sleep(RETRY_WAIT_S)
                server = self._rng.randrange(len(self._api.urls))
            try:
                status, body, _ = await self._api.call(method, server, path, json=payload, key=key)
            except (aiohttp.ClientError, TimeoutError):
                record("indeterminate", None)
                continue
            # A 4xx changed nothing; a 5xx after the request was sent may have committed.
            ok = status in (200, 201)
            outcome = "ok" if ok else "refused" if status < 500 else "indeterminate"
            record(outcome, body if ok else None)
            if outcome != "indeterminate":
                break
        else:
            return
        if key is not None and outcome == "ok" and self._rng.random() < 0.2:
            again = self._rng.randrange(len(self._api.urls))
            status2, body2, replayed = await self._api.call(
                method, again, path, json=payload, key=key
            )
            # A 5xx is no answer (that server cannot reach the database now), not a wrong one.
            if status2 < 500 and (status2, body2, replayed) != (status, body, True):
                self._rec.replay_mismatches.append(
                    f"{method} {path} with key {key}: first {status} {body}, "
                    f"repeated on server {again}: {status2} {body2} (replayed: {replayed})"
                )

    async def _change(self, server: int, kind: str, sku: str, quantity: int) -> None:
        key, started = self._key(), time.monotonic()
        delta = -quantity if kind == "purchase" else quantity

        def record(outcome: str, body: Any) -> None:
            self._record(kind, sku, server, started, body, outcome=outcome, delta=delta,
                         idempotency_key=key)  # fmt: skip

        path = f"/v1/items/{sku}/{kind}"
        await self._write(server, "POST", path, {"quantity": quantity}, key, record)

    async def _order(self, server: int, skus: list[str]) -> None:
        key, started = self._key(), time.monotonic()
        lines = [(sku, self._rng.randint(1, 2)) for sku in skus]

        def record(outcome: str, body: Any) -> None:
            changes = body["lines"] if body is not None else [None] * len(lines)
            for (sku, quantity), change in zip(lines, changes, strict=True):
                self._record("order", sku, server, started, change, outcome=outcome,
                             delta=-quantity, idempotency_key=key)  # fmt: skip

        payload = {"lines": [{"sku": sku, "quantity": quantity} for sku, quantity in lines]}
        await self._write(server, "POST", "/v1/orders", payload, key, record)

    def _record_hold_change(
        self, kind: str, hold_id: str | None, server: int, started: float, outcome: str,
        body: Any, skus: list[str], key: str | None,
    ) -> None:  # fmt: skip
        changes = body["changes"] if body is not None else [None] * len(skus)
        expires_at_s = None if body is None else _db_seconds(body["expires_at"])
        hold_id = body["id"] if body is not None else hold_id
        for sku, change in zip(skus, changes, strict=True):
            self._record(kind, sku, server, started, change, outcome=outcome, idempotency_key=key,
                         hold_id=hold_id, expires_at_s=expires_at_s)  # fmt: skip

    async def _hold(self, server: int) -> None:
        rng = self._rng
        key, started = self._key(), time.monotonic()
        lines = [
            (sku, rng.randint(1, 2))
            for sku in rng.sample(self._skus[: self._hot], rng.randint(1, 2))
        ]
        skus = [sku for sku, _ in lines]
        answers: list[Any] = []

        def record(outcome: str, body: Any) -> None:
            self._record_hold_change("hold", None, server, started, outcome, body, skus, key)
            if body is not None:
                answers.append(body)

        payload = {
            "lines": [{"sku": sku, "quantity": quantity} for sku, quantity in lines],
            "ttl_s": rng.randint(1, HOLD_TTL_S_MAX),
        }
        await self._write(server, "POST", "/v1/holds", payload, key, record)
        if answers:
            self._rec.holds.add(answers[0]["id"])
            self._holds.append((answers[0]["id"], skus))

    async def _end_a_hold(self, server: int) -> None:
        """Confirm (whole or in part), release or extend one of this client's holds, or walk
        away from it (it expires)."""
        rng = self._rng
        hold_id, skus = self._holds.pop(rng.randrange(len(self._holds)))
        roll = rng.random()
        if roll < 0.2:
            return  # walked away
        if roll < 0.35:
            await self._extend(server, hold_id, skus)
            return
        kind = "confirm" if roll < 0.75 else "release"
        payload = None
        if kind == "confirm" and rng.random() < 0.3:
            payload = {"lines": [{"sku": skus[0], "quantity": 1}]}
        await self.end_hold(server, kind, hold_id, skus, payload)

    async def end_hold(
        self, server: int, kind: str, hold_id: str, skus: list[str], payload: Any = None
    ) -> None:
        key, started = self._key(), time.monotonic()

        def record(outcome: str, body: Any) -> None:
            self._record_hold_change(kind, hold_id, server, started, outcome, body, skus, key)

        path = f"/v1/holds/{hold_id}" + ("/confirm" if kind == "confirm" else "")
        method = "POST" if kind == "confirm" else "DELETE"
        await self._write(server, method, path, payload, key, record)

    async def _extend(self, server: int, hold_id: str, skus: list[str]) -> None:
        key, started = self._key(), time.monotonic()
        extended: list[Any] = []

        def record(outcome: str, body: Any) -> None:
            expires_at_s = None if body is None else _db_seconds(body["expires_at"])
            self._rec.ops.append(
                Op("extend", skus[0], server, started, time.monotonic(), None, None,
                   outcome=outcome, idempotency_key=key, hold_id=hold_id,
                   expires_at_s=expires_at_s)
            )  # fmt: skip
            if body is not None:
                extended.append(body)

        payload = {"ttl_s": self._rng.randint(1, HOLD_TTL_S_MAX)}
        await self._write(server, "POST", f"/v1/holds/{hold_id}/extend", payload, key, record)
        if extended:
            self._holds.append((hold_id, skus))

    async def _set(self, server: int, sku: str, on_hand: int) -> None:
        started = time.monotonic()

        def record(outcome: str, body: Any) -> None:
            self._record("set", sku, server, started, body, outcome=outcome)

        await self._write(server, "PUT", f"/v1/items/{sku}", {"on_hand": on_hand}, None, record)


async def _audit(api: _Api, sku: str) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    after = 0
    while True:
        status, body, _ = await api.call(
            "GET",
            0,
            f"/v1/items/{sku}/audit",
            params={"after_version": str(after), "limit": str(AUDIT_PAGE_LIMIT)},
        )
        if status != 200:
            raise CannotRun(f"reading the audit log of {sku} answered {status}: {body}")
        # The audit's times are the database's clock, not this one's: no commit times, but
        # what holds' expiry is judged by (db_s).
        entries += [
            AuditEntry(
                sku,
                e["version"],
                e["delta"],
                e["on_hand"],
                e["idempotency_key"],
                held_delta=e["held_delta"],
                held=e["held"],
                reason=e["reason"],
                hold_id=e["hold_id"],
                db_s=_db_seconds(e["at"]),
            )
            for e in body["entries"]
        ]
        if body["next_after_version"] is None:
            return entries
        after = int(body["next_after_version"])


def _db_seconds(stamp: str) -> float:
    """An API timestamp (the database's clock) in seconds since the epoch."""
    return datetime.fromisoformat(stamp).timestamp()


async def _settle_holds(api: _Api, setup: _Client, rec: _Recorder) -> None:
    """Release every hold still active (recorded, as any write), then let the ones verify never
    learnt of (a create of unknown outcome) expire and be recorded."""
    for n, hold_id in enumerate(sorted(rec.holds)):
        status, body, _ = await api.call("GET", n % len(api.urls), f"/v1/holds/{hold_id}")
        if status == 200 and body["state"] == "active":
            skus = [line["sku"] for line in body["lines"]]
            await setup.end_hold(n % len(api.urls), "release", hold_id, skus)
    await asyncio.sleep(HOLD_SETTLE_S)


async def verify(
    options: VerifyOptions,
    progress: Callable[[float, int], None] | None = None,
    alongside: Callable[[float], Coroutine[Any, Any, None]] | None = None,
) -> Report:
    """Run the history and judge it. Cancelling it (Ctrl-C) stops the clients early: what was
    recorded is judged all the same. `alongside(started_s)` runs beside the clients from their
    start (on time.monotonic's clock, as the operations are); the run waits for it to end
    before reading the audit log (a stress run injects its faults so, and heals them)."""
    run = secrets.token_hex(3)
    skus = [f"verify-{options.seed}-{run}-{n}" for n in range(options.hot_skus + options.cold_skus)]
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=max(options.concurrency * 2, 10))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        api = _Api(session, options.urls, options.token)
        await preflight(api, skus[0])
        rec = _Recorder()
        setup = _Client(api, random.Random(options.seed), skus, options.hot_skus, rec)
        for n, sku in enumerate(skus):
            await setup._set(n % len(api.urls), sku, INITIAL_STOCK)
        stop = asyncio.Event()
        clients = [
            _Client(api, random.Random(f"{options.seed}:{n}"), skus, options.hot_skus, rec)
            for n in range(options.concurrency)
        ]
        started = time.monotonic()
        tasks = [asyncio.create_task(client.run(stop)) for client in clients]
        beside = None if alongside is None else asyncio.create_task(alongside(started))
        try:
            while (elapsed := time.monotonic() - started) < options.seconds:
                if progress is not None:
                    progress(elapsed, len(rec.ops))
                await asyncio.sleep(min(0.5, options.seconds - elapsed))
        except asyncio.CancelledError:
            pass  # Ctrl-C: judge what was recorded
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            if beside is not None:
                await beside
        seconds = time.monotonic() - started
        await _settle_holds(api, setup, rec)
        entries = [entry for sku in skus for entry in await _audit(api, sku)]
        for n, sku in enumerate(skus):  # leave them at 0 (not recorded: judged already)
            await api.call("PUT", n % len(api.urls), f"/v1/items/{sku}", json={"on_hand": 0})
    verdict = check(
        rec.ops,
        entries,
        complete_writers=True,
        holds_settled=True,
        expiry_s_max=options.expiry_s_max,
    )
    return Report(rec.ops, entries, verdict, rec.replay_mismatches, skus, seconds, rec.holds)
