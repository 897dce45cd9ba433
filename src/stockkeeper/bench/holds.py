"""`stockkeeper bench holds`: a checkout storm. N carts, spread round-robin over K servers, each
holds one unit of one new SKU with stock S, then confirms or walks away at random (seeded).
Walk-aways expire; their stock goes back to later carts. Then a verdict from the answers, the
audit log and what every server serves; the verdict is a pure function, so its tests need no
servers.

CORRECT means: no unit made or lost (sold + on_hand = S, and every confirm acknowledged is one
confirm entry in the audit); held never above on_hand at any version; every hold ended exactly
once (a confirm, or an expiry for a walk-away) and every walk-away's expiry was recorded within
1 s of its expires_at; nothing held at the end, and every server serving that. A confirm that
arrives too late is answered `409 hold_expired` and its cart counts as a walk-away, but only if
the answer came after the hold's expires_at (this machine's clock against the servers': with
--url, their clocks must agree).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from stockkeeper.bench.oversell import (
    REQUEST_TIMEOUT_S,
    VISIBILITY_S,
    Progress,
    call_json,
    outcome_key,
    read_audit,
)

if TYPE_CHECKING:
    import aiohttp

HELD = "201"
CONFIRMED = "200"
SHORT = "409 insufficient_stock"
TOO_LATE = "409 hold_expired"
EXPIRY_S_MAX = 1.0  # shared/API.md: an expiry is recorded within 1 s of expires_at
SETTLE_S_MAX = 10.0  # after the storm, how long the last walk-aways may take to be recorded


@dataclass
class Cart:
    """One cart's steps as the servers answered them."""

    hold: str = ""  # outcome key of the hold request
    hold_s: float = 0.0
    hold_id: str | None = None
    expires_at: str | None = None
    confirm: str | None = None  # outcome key of the confirm, if the cart confirmed
    confirm_s: float | None = None
    confirm_answered_at: datetime | None = None  # this machine's clock, when the answer came


@dataclass
class Result:
    sku: str
    stock: int
    carts: int
    concurrency: int
    ttl_s: int
    confirm_share: float
    seed: int
    urls: list[str]
    wall_s: float
    hold_outcomes: dict[str, int]
    confirm_outcomes: dict[str, int]
    hold_p99_ms: float
    confirm_p99_ms: float
    expiry_lags_s: list[float] = field(default_factory=list)
    sold: int = 0
    served: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        lags = sorted(self.expiry_lags_s)
        data["expiry_lags_s"] = {
            "count": len(lags),
            "p50": percentile(lags, 50),
            "p99": percentile(lags, 99),
            "max": lags[-1] if lags else None,
        }
        return data | {"scenario": "holds", "verdict": "CORRECT" if self.correct else "WRONG"}


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    if not sorted_values:
        return None
    rank = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _answered_after_expiry(cart: Cart) -> bool:
    if cart.confirm_answered_at is None or cart.expires_at is None:
        return False
    return cart.confirm_answered_at >= _at(cart.expires_at)


def verdict(
    stock: int,
    carts: Sequence[Cart],
    audit: Sequence[Mapping[str, Any]],
    served: Sequence[Mapping[str, Any]],
) -> tuple[list[str], list[float]]:
    """The problems of a run (none: correct), and every walk-away's expiry lag."""
    problems: list[str] = []
    holds = {c.hold_id: c for c in carts if c.hold == HELD and c.hold_id is not None}
    confirmed = {c.hold_id for c in holds.values() if c.confirm == CONFIRMED}
    odd = Counter(c.hold for c in carts if c.hold not in (HELD, SHORT))
    odd.update(c.confirm for c in carts if c.confirm not in (None, CONFIRMED, TOO_LATE))
    if odd:
        problems.append(f"answers other than held, confirmed or short: {dict(sorted(odd.items()))}")
    for cart in holds.values():
        if cart.confirm == TOO_LATE and not _answered_after_expiry(cart):
            problems.append(
                f"hold {cart.hold_id}: confirm answered {TOO_LATE} at {cart.confirm_answered_at}, "
                f"before its expires_at {cart.expires_at}"
            )
    problems += _replay_problems(stock, audit)
    ends: dict[str, list[Mapping[str, Any]]] = {}
    created: Counter[str] = Counter()
    for entry in audit:
        hold_id = entry.get("hold_id")
        if hold_id is None:
            continue
        if entry.get("reason") == "hold":
            created[hold_id] += 1
        else:
            ends.setdefault(hold_id, []).append(entry)
    if set(created) != set(holds) or any(n != 1 for n in created.values()):
        problems.append(
            f"{len(holds)} holds acknowledged, {sum(created.values())} hold entries in the audit"
        )
    lags: list[float] = []
    for hold_id, cart in holds.items():
        end = ends.get(hold_id, [])
        reasons = [e.get("reason") for e in end]
        want = "confirm" if hold_id in confirmed else "expire"
        if reasons != [want]:
            problems.append(f"hold {hold_id} ended as {reasons}, expected [{want!r}] once")
            continue
        if want == "expire" and cart.expires_at is not None:
            lag_s = (_at(end[0]["at"]) - _at(cart.expires_at)).total_seconds()
            lags.append(lag_s)
            if not 0 <= lag_s <= EXPIRY_S_MAX:
                problems.append(f"hold {hold_id} expired {lag_s:.3f} s after its expires_at")
    sold = -sum(int(e.get("delta", 0)) for e in audit if e.get("reason") == "confirm")
    if sold != len(confirmed):
        problems.append(f"{len(confirmed)} confirms acknowledged, {sold} units sold in the audit")
    on_hand = audit[-1].get("on_hand") if audit else None
    if on_hand is not None and sold + on_hand != stock:
        problems.append(f"sold {sold} + on_hand {on_hand} is not the stock {stock}")
    for answer in served:
        if (answer.get("held"), answer.get("on_hand")) != (0, on_hand):
            problems.append(
                f"a server serves {answer} at the end, expected held 0, on_hand {on_hand}"
            )
    return problems, lags


def _replay_problems(stock: int, audit: Sequence[Mapping[str, Any]]) -> list[str]:
    if not audit or audit[0].get("reason") != "set" or audit[0].get("on_hand") != stock:
        return [f"the audit does not start with a set to {stock}"]
    problems = []
    if [e.get("version") for e in audit] != list(range(1, len(audit) + 1)):
        problems.append(f"audit versions are not 1..{len(audit)} without a gap")
    on_hand = held = 0
    for entry in audit:
        on_hand += int(entry.get("delta", 0))
        held += int(entry.get("held_delta", 0))
        if (entry.get("on_hand"), entry.get("held")) != (on_hand, held):
            problems.append(f"the audit does not replay at version {entry.get('version')}")
            break
        if not 0 <= held <= on_hand:
            problems.append(f"held {held} of on_hand {on_hand} at version {entry.get('version')}")
            break
    if held != 0:
        problems.append(f"{held} units still held at the end")
    return problems


def default_sku() -> str:
    return f"BENCH-HOLDS-{uuid.uuid4().hex[:12]}"


def report(result: Result) -> str:
    lags = sorted(result.expiry_lags_s)

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    lines = [
        f"holds: {result.carts:,} carts of 1 unit against stock {result.stock:,} over "
        f"{len(result.urls)} servers, {result.concurrency} in flight, ttl {result.ttl_s} s, "
        f"{result.confirm_share:.0%} confirm (seed {result.seed}, SKU {result.sku})",
        f"  holds            {dict(sorted(result.hold_outcomes.items()))}",
        f"  confirms         {dict(sorted(result.confirm_outcomes.items()))}",
        f"  sold             {result.sold:,} of {result.stock:,}",
        f"  hold p99         {result.hold_p99_ms:.1f} ms",
        f"  confirm p99      {result.confirm_p99_ms:.1f} ms",
        f"  expiry lag       {len(lags):,} walk-aways: p50 {ms(percentile(lags, 50))}, "
        f"p99 {ms(percentile(lags, 99))}, max {ms(lags[-1] if lags else None)}",
        f"  wall time        {result.wall_s:.2f} s",
        f"verdict: {'CORRECT' if result.correct else 'WRONG'}",
    ]
    return "\n".join(lines + [f"  - {problem}" for problem in result.problems])


async def _cart(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    sku: str,
    ttl_s: int,
    confirms: bool,
) -> Cart:
    cart = Cart()
    started = time.perf_counter()
    body_in = {"lines": [{"sku": sku, "quantity": 1}], "ttl_s": ttl_s}
    status, body = await call_json(session, "POST", f"{url}/v1/holds", token, body_in)
    cart.hold_s = time.perf_counter() - started
    cart.hold = str(status) if status == 201 else outcome_key(status, body)
    if status != 201:
        return cart
    cart.hold_id, cart.expires_at = body["id"], body["expires_at"]
    if confirms:
        started = time.perf_counter()
        status, body = await call_json(
            session, "POST", f"{url}/v1/holds/{cart.hold_id}/confirm", token
        )
        cart.confirm_s = time.perf_counter() - started
        cart.confirm_answered_at = datetime.now(UTC)
        cart.confirm = outcome_key(status, body)
    return cart


async def run_holds(
    urls: Sequence[str],
    admin_token: str,
    clerk_token: str,
    sku: str,
    stock: int,
    carts: int,
    concurrency: int,
    ttl_s: int,
    confirm_share: float,
    seed: int,
    progress_stream: TextIO = sys.stderr,
) -> Result:
    """Create `sku` at `stock` (it must be new), run the carts, wait for the last walk-aways to
    expire, then read back and judge."""
    import aiohttp

    rng = random.Random(seed)
    plan = [rng.random() < confirm_share for _ in range(carts)]
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        status, body = await call_json(
            session, "PUT", f"{urls[0]}/v1/items/{sku}", admin_token, {"on_hand": stock}
        )
        if status != 201:
            raise RuntimeError(f"PUT {sku} answered {status} {body}; the SKU must be new")
        gate = asyncio.Semaphore(concurrency)
        progress = Progress(carts, progress_stream)
        ticker = asyncio.create_task(progress.run())

        async def one(n: int) -> Cart:
            async with gate:
                cart = await _cart(session, urls[n % len(urls)], clerk_token, sku, ttl_s, plan[n])
            progress.done += 1
            return cart

        started = time.perf_counter()
        try:
            done = list(await asyncio.gather(*(one(n) for n in range(carts))))
        finally:
            ticker.cancel()
            progress.finish()
        wall_s = time.perf_counter() - started
        await _settled(session, urls[0], clerk_token, sku, ttl_s)
        await asyncio.sleep(VISIBILITY_S)
        served = []
        for url in urls:
            status, body = await call_json(session, "GET", f"{url}/v1/items/{sku}", clerk_token)
            served.append(body if status == 200 else {"url": url, "status": status})
        audit = await read_audit(session, urls[-1], admin_token, sku)
    problems, lags = verdict(stock, done, audit, served)
    hold_ms = sorted(c.hold_s * 1000 for c in done)
    confirm_ms = sorted(c.confirm_s * 1000 for c in done if c.confirm_s is not None)
    result = Result(
        sku,
        stock,
        carts,
        concurrency,
        ttl_s,
        confirm_share,
        seed,
        list(urls),
        wall_s,
        dict(Counter(c.hold for c in done)),
        dict(Counter(c.confirm for c in done if c.confirm is not None)),
        percentile(hold_ms, 99) or 0.0,
        percentile(confirm_ms, 99) or 0.0,
        lags,
        -sum(int(e.get("delta", 0)) for e in audit if e.get("reason") == "confirm"),
        served,
        problems,
    )
    return result


async def _settled(
    session: aiohttp.ClientSession, url: str, token: str, sku: str, ttl_s: int
) -> None:
    """Wait until nothing of `sku` is held (the last walk-aways expired), at most the TTL and
    SETTLE_S_MAX: a run that never settles is judged with what is still held."""
    deadline = time.monotonic() + ttl_s + SETTLE_S_MAX
    while time.monotonic() < deadline:
        status, body = await call_json(session, "GET", f"{url}/v1/items/{sku}", token)
        if status == 200 and body.get("held") == 0:
            return
        await asyncio.sleep(0.05)
