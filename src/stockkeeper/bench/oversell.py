"""`stockkeeper bench oversell`: N concurrent purchases of one item against stock S, sent by wrk
(storm.py) round-robin over K servers, then a verdict from what the servers serve and what the
audit log says. The verdict is a pure function, so its tests need no servers."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import aiohttp

OK = "200"
SHORT = "409 insufficient_stock"
REQUEST_TIMEOUT_S = 30.0
PROGRESS_EVERY_S = 0.5
AUDIT_PAGE = 1000
VISIBILITY_S = 0.1
EXIT_CORRECT = 0
EXIT_WRONG = 1


@dataclass(frozen=True)
class Served:
    """What one server answered for the SKU after the storm: (on_hand, version), or an error."""

    url: str
    on_hand: int | None = None
    version: int | None = None
    error: str | None = None


@dataclass
class Result:
    sku: str
    stock: int
    attempts: int
    concurrency: int
    urls: list[str]
    outcomes: dict[str, int]
    wall_s: float
    served: list[Served] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The result without the audit entries themselves (a summary of them is enough)."""
        data = asdict(self)
        data.pop("audit")
        purchases = sum(1 for e in self.audit if e.get("reason") == "purchase")
        data |= {
            "scenario": "oversell",
            "verdict": "CORRECT" if self.correct else "WRONG",
            "attempts_per_s": self.attempts / self.wall_s if self.wall_s > 0 else None,
            "audit_entries": len(self.audit),
            "audit_purchases": purchases,
        }
        return data


def outcome_key(status: int, body: Any) -> str:
    """200, or the status with the problem's code: "409 insufficient_stock", "503 unavailable"."""
    if status == 200:
        return OK
    code = body.get("code") if isinstance(body, dict) else None
    return f"{status} {code}" if code else str(status)


def verdict(
    stock: int,
    attempts: int,
    outcomes: Mapping[str, int],
    served: Sequence[Served],
    audit: Sequence[Mapping[str, Any]],
) -> list[str]:
    """Every way the run breaks "exactly `stock` sold, every other attempt cleanly refused, every
    server serving 0 at version stock+1, an audit log of the set and `stock` purchases that
    replays". Empty means correct."""
    problems = []
    sold, refused = outcomes.get(OK, 0), outcomes.get(SHORT, 0)
    if sold != stock:
        problems.append(f"{sold} purchases succeeded for {stock} items")
    if refused != attempts - stock:
        problems.append(
            f"{refused} clean refusals (409 insufficient_stock), expected {attempts - stock}"
        )
    others = {k: v for k, v in outcomes.items() if k not in (OK, SHORT) and v}
    if others:
        problems.append(f"other outcomes: {dict(sorted(others.items()))}")
    if sum(outcomes.values()) != attempts:
        problems.append(f"{sum(outcomes.values())} outcomes for {attempts} attempts")
    if not served:
        problems.append("no server was asked what it serves")
    for answer in served:
        if answer.error is not None:
            problems.append(f"{answer.url} did not serve the item: {answer.error}")
        elif (answer.on_hand, answer.version) != (0, stock + 1):
            problems.append(
                f"{answer.url} serves on_hand {answer.on_hand} at version {answer.version},"
                f" expected 0 at version {stock + 1}"
            )
    problems += _audit_problems(stock, audit)
    return problems


def _audit_problems(stock: int, audit: Sequence[Mapping[str, Any]]) -> list[str]:
    problems = []
    versions = [entry.get("version") for entry in audit]
    if versions != list(range(1, len(audit) + 1)):
        problems.append(f"audit versions are not 1..{len(audit)} without a gap")
    purchases = [entry for entry in audit if entry.get("reason") == "purchase"]
    if len(purchases) != stock:
        problems.append(f"{len(purchases)} purchase entries in the audit, expected {stock}")
    if any(entry.get("delta") != -1 for entry in purchases):
        problems.append("a purchase entry's delta is not -1")
    if not audit or audit[0].get("reason") != "set" or audit[0].get("on_hand") != stock:
        problems.append(f"the audit does not start with a set to {stock} at version 1")
    on_hand = 0
    for entry in audit:
        on_hand += int(entry.get("delta", 0))
        if entry.get("on_hand") != on_hand or on_hand < 0:
            problems.append(
                f"audit deltas replay to {on_hand} at version {entry.get('version')},"
                f" the entry says {entry.get('on_hand')}"
            )
            break
    if audit and audit[-1].get("on_hand") != 0:
        problems.append(f"the audit ends at on_hand {audit[-1].get('on_hand')}, expected 0")
    return problems


def exit_code(problems: Sequence[str]) -> int:
    """The command's exit status: a wrong run must fail CI."""
    return EXIT_CORRECT if not problems else EXIT_WRONG


def default_sku() -> str:
    """Unique per run, so repeated runs against one cluster never collide."""
    return f"BENCH-OVERSELL-{uuid.uuid4().hex[:12]}"


def report(result: Result) -> str:
    """The short human report: counts, time, and the verdict with its problems."""
    others = {k: v for k, v in result.outcomes.items() if k not in (OK, SHORT)}
    rate = result.attempts / result.wall_s if result.wall_s > 0 else float("nan")
    lines = [
        f"oversell: {result.attempts:,} purchases of 1 against stock {result.stock:,}"
        f" over {len(result.urls)} servers, {result.concurrency} in flight (SKU {result.sku})",
        f"  successes        {result.outcomes.get(OK, 0):,}",
        f"  clean refusals   {result.outcomes.get(SHORT, 0):,}  (409 insufficient_stock)",
        f"  other outcomes   {sum(others.values()):,}"
        + (f"  {dict(sorted(others.items()))}" if others else ""),
        f"  wall time        {result.wall_s:.2f} s",
        f"  attempts/s       {rate:,.0f}",
        f"  audit            {len(result.audit):,} entries",
        f"verdict: {'CORRECT' if result.correct else 'WRONG'}",
    ]
    lines += [f"  - {problem}" for problem in result.problems]
    return "\n".join(lines)


class Progress:
    """An updating "done/total" line on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.done = 0
        self._total = total
        self._stream = stream
        self._enabled = stream.isatty()

    def show(self) -> None:
        if self._enabled:
            self._stream.write(f"\r{self.done:,}/{self._total:,}")
            self._stream.flush()

    async def run(self) -> None:
        while True:
            self.show()
            await asyncio.sleep(PROGRESS_EVERY_S)

    def finish(self) -> None:
        if self._enabled:
            self.show()
            self._stream.write("\n")
            self._stream.flush()


async def call_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    token: str,
    json: Any = None,
    params: Mapping[str, int] | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with session.request(method, url, json=json, params=params, headers=headers) as answer:
        try:
            body = await answer.json(content_type=None)
        except ValueError:
            body = None
        return answer.status, body


async def read_audit(
    session: aiohttp.ClientSession, url: str, admin_token: str, sku: str
) -> list[dict[str, Any]]:
    """The whole audit log of `sku`, page by page (bounded: a page must make progress)."""
    entries: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        params = {"after_version": after, "limit": AUDIT_PAGE}
        status, body = await call_json(
            session, "GET", f"{url}/v1/items/{sku}/audit", admin_token, params=params
        )
        if status != 200:
            raise RuntimeError(f"audit read answered {status}: {body}")
        entries += body["entries"]
        next_after = body["next_after_version"]
        if next_after is not None and next_after <= after:
            raise RuntimeError(f"audit paging did not advance past version {after}")
        after = next_after
    return entries


async def _served(session: aiohttp.ClientSession, url: str, token: str, sku: str) -> Served:
    import aiohttp

    try:
        status, body = await call_json(session, "GET", f"{url}/v1/items/{sku}", token)
    except (OSError, TimeoutError, aiohttp.ClientError) as error:
        return Served(url, error=f"{type(error).__name__}: {error}")
    if status != 200 or not isinstance(body, dict):
        return Served(url, error=f"{status} {body}")
    return Served(url, on_hand=body.get("on_hand"), version=body.get("version"))


async def run_oversell(
    urls: Sequence[str],
    admin_token: str,
    clerk_token: str,
    sku: str,
    stock: int,
    attempts: int,
    concurrency: int,
    progress_stream: TextIO = sys.stderr,
) -> Result:
    """Create `sku` at `stock` (it must be new), storm it, then read back and judge."""
    import aiohttp

    from stockkeeper.bench.storm import run_storm

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        item_url = f"{urls[0]}/v1/items/{sku}"
        status, body = await call_json(session, "PUT", item_url, admin_token, {"on_hand": stock})
        if status != 201:
            raise RuntimeError(
                f"PUT {sku} answered {status} {body}; the SKU must be new (201 created)"
            )
        progress = Progress(attempts, progress_stream)
        ticker = asyncio.create_task(progress.run())

        def answered(count: int) -> None:
            progress.done = count

        try:
            storm = await asyncio.to_thread(
                run_storm, urls, clerk_token, sku, attempts, concurrency, answered
            )
        finally:
            ticker.cancel()
            progress.finish()
        outcomes, wall_s = storm.outcomes, storm.wall_s
        await asyncio.sleep(VISIBILITY_S)  # the contract's bound for every server to serve it
        served = list(
            await asyncio.gather(*(_served(session, url, clerk_token, sku) for url in urls))
        )
        audit = await read_audit(session, urls[-1], admin_token, sku)
    result = Result(
        sku, stock, attempts, concurrency, list(urls), dict(outcomes), wall_s, served, audit
    )
    result.problems = verdict(stock, attempts, outcomes, served, audit)
    return result
