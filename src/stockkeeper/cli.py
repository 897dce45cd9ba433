"""Command line: `stockkeeper serve`, `stockkeeper token create|list|revoke` and
`stockkeeper bench oversell` (whose imports stay inside it, so `serve` never loads them)."""

from __future__ import annotations

import asyncio
import functools
import math
import secrets
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from stockkeeper.domain import Role, TokenInfo, format_timestamp
from stockkeeper.http.cors import DOCS_CORS_ENV_VAR, parse_origin
from stockkeeper.service import Inventory
from stockkeeper.serving import Limits, database_option, run_step, serve_app, serve_options
from stockkeeper.store import StoreOptions, display_url

if TYPE_CHECKING:
    from stockkeeper.bench.cluster import Cluster


class _Origin(click.ParamType):
    """An origin for --docs-cors-origin; its environment variable lists them comma-separated."""

    name = "origin"

    def split_envvar_value(self, rv: str) -> list[str]:
        return [origin for origin in rv.split(",") if origin.strip()]

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return parse_origin(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


@click.group()
@click.version_option(package_name="stockkeeper")
def main() -> None:
    """stockkeeper: inventory that never oversells."""


@main.command()
@serve_options
@click.option(
    "--docs-cors-origin",
    "docs_cors_origins",
    multiple=True,
    type=_Origin(),
    envvar=DOCS_CORS_ENV_VAR,
    help="Let pages from this origin (https://host[:port], or * for any) read /openapi.json, "
    "e.g. Swagger UI served elsewhere; repeat it (also STOCKKEEPER_DOCS_CORS_ORIGINS, "
    "comma-separated). The API itself sends no CORS headers. Default: none.",
)
def serve(
    host: str,
    port: int,
    workers: int,
    database_url: str,
    cache_url: str,
    limits: Limits,
    docs_cors_origins: tuple[str, ...],
) -> None:
    """Serve the HTTP API. Creates or upgrades the schema first. At SIGTERM or SIGINT it drains
    (/readyz answers 503) for --drain-grace-ms while it serves on, then stops accepting and
    finishes the requests in flight; a second signal skips the grace."""
    serve_app(
        "stockkeeper.http.app:create_app",
        host,
        port,
        workers,
        database_url,
        cache_url,
        limits,
        docs_cors_origins=docs_cors_origins,
    )


def _open_existing(database_url: str) -> Coroutine[Any, Any, Inventory]:
    """Open the database for a token command: never create one (a token in a new database,
    forgotten `--database`, would work nowhere), but upgrade an existing one."""
    return Inventory.open(database_url, StoreOptions(pool_size=1), create=False)


def _used(database_url: str) -> None:
    """Say on stderr which database a token command used (never its password)."""
    click.echo(f"using database {display_url(database_url)}", err=True)


@main.group()
def token() -> None:
    """Manage bearer tokens."""


@token.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["reader", "clerk", "admin"]))
@database_option
def token_create(name: str, role: str, database_url: str) -> None:
    """Create a token for NAME and print it alone on stdout (only its hash is stored)."""

    async def create() -> str:
        async with await _open_existing(database_url) as inventory:
            return await inventory.create_token(name, Role.parse(role))

    token = run_step(create)
    _used(database_url)
    click.echo(token)


@token.command("list")
@database_option
def token_list(database_url: str) -> None:
    """Show every token's id, name, role, creation time and whether it is revoked (never the
    token itself)."""

    async def listing() -> list[TokenInfo]:
        async with await _open_existing(database_url) as inventory:
            return await inventory.list_tokens()

    tokens = run_step(listing)
    _used(database_url)
    rows = [("ID", "NAME", "ROLE", "CREATED", "REVOKED")]
    for info in tokens:
        revoked = "no" if info.revoked_at is None else format_timestamp(info.revoked_at)
        role, created = info.role.name.lower(), format_timestamp(info.created_at)
        rows.append((str(info.id), info.name, role, created, revoked))
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


@token.command("revoke")
@click.argument("token_id", metavar="ID", type=int)
@database_option
def token_revoke(token_id: int, database_url: str) -> None:
    """End the token with id ID (see `token list`); every server refuses it within 1 s."""

    async def revoke() -> TokenInfo:
        async with await _open_existing(database_url) as inventory:
            return await inventory.revoke_token(token_id)

    info = run_step(revoke)
    _used(database_url)
    click.echo(f"revoked token {info.id} ({info.name}, {info.role.name.lower()})")


@main.group()
def bench() -> None:
    """Benchmark scenarios, each judged CORRECT or WRONG (exit status 1).

    Each starts a local cluster of its own: `stockkeeper serve` processes on a fresh schema of
    a PostgreSQL database (--database; the schema is dropped afterwards) and, where it caches,
    a private redis-server, all stopped when it ends; or it drives running servers (--url with
    --admin-token and --clerk-token). They need the `bench` extra, PostgreSQL, redis-server and
    wrk. `--quick` makes a small run; `SCENARIO --help` says what each starts and how long it
    takes."""


_CACHE_OPTION = click.option(
    "--cache",
    "cache_url",
    default="redis-private",
    show_default=True,
    help="For the cluster this starts: redis-private (a redis-server of its own), "
    "redis://… or memory://.",
)
_BENCH_OPTIONS = (
    click.option(
        "--workers",
        default=1,
        show_default=True,
        type=click.IntRange(1, 64),
        help="Processes per server (`serve --workers`).",
    ),
    click.option(
        "--database",
        "database_url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        show_default=True,
        help="PostgreSQL for the cluster this starts. A URL without search_path gets a fresh "
        "schema there, dropped afterwards; nothing else in the database is touched.",
    ),
    click.option(
        "--url",
        "urls",
        multiple=True,
        help="Target these running servers instead of starting a cluster (repeat it).",
    ),
    click.option(
        "--admin-token",
        envvar="STOCKKEEPER_BENCH_ADMIN_TOKEN",
        default=None,
        help="An admin token of the --url servers (it creates the items and reads their audit "
        "log). For a cluster this starts, only if --database has an admin token already. "
        "Also STOCKKEEPER_BENCH_ADMIN_TOKEN.",
    ),
    click.option(
        "--clerk-token",
        envvar="STOCKKEEPER_BENCH_CLERK_TOKEN",
        default=None,
        help="A clerk token of the --url servers, for the purchases and reads (a cluster this "
        "starts makes its own). Also STOCKKEEPER_BENCH_CLERK_TOKEN.",
    ),
    click.option(
        "--json",
        "json_path",
        default=None,
        type=click.Path(dir_okay=False),
        help="Write the result.",
    ),
)


def _bench_options(
    servers: int = 4, cache: bool = True
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The options every scenario shares: where its cluster is, and where its result goes.
    `mixed` picks each system's cache itself, and fits its default 2 servers to 2 cores."""
    options = [
        click.option(
            "--servers",
            default=servers,
            show_default=True,
            type=click.IntRange(1, 64),
            help="`stockkeeper serve` processes to start.",
        ),
        *([_CACHE_OPTION] if cache else []),
        *_BENCH_OPTIONS,
    ]

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _quick(**preset: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A --quick flag: the preset's value for every option left at its default, so a first run
    on a laptop takes seconds, not minutes; an option given explicitly still wins."""
    flags = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in preset.items())

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def run(quick: bool, **options: Any) -> None:
            context = click.get_current_context()
            for name, value in preset.items():
                if quick and context.get_parameter_source(name) is ParameterSource.DEFAULT:
                    options[name] = value
            command(**options)

        help_text = f"A small run (see the timings above): {flags}. Options given still win."
        return click.option("--quick", is_flag=True, help=help_text)(run)

    return decorate


def _bench(
    scenario: Callable[[Any], Coroutine[Any, Any, Any]],
    *,
    servers: int,
    workers: int,
    database_url: str,
    cache_url: str,
    urls: tuple[str, ...],
    admin_token: str | None,
    clerk_token: str | None,
    json_path: str | None,
) -> None:
    """Run `scenario(cluster)` on running servers or a local cluster; print its report, write
    its JSON, exit 1 when its verdict is WRONG (setup faults: one line, exit 1)."""
    from contextlib import ExitStack

    from stockkeeper.bench.cluster import local_cluster
    from stockkeeper.bench.oversell import exit_code

    given = _given_cluster(urls, admin_token, clerk_token)
    try:
        with ExitStack() as stack:
            cluster = given or stack.enter_context(
                local_cluster(servers, workers, database_url, cache_url, admin_token)
            )
            result, text = asyncio.run(scenario(cluster))
    except ImportError as error:
        raise click.ClickException(f"{error}: install the bench extra") from None
    except Exception as error:
        raise _fault(error) from None
    click.echo(text)
    _write_json(json_path, result.to_json())
    sys.exit(exit_code(result.problems))


def _given_cluster(
    urls: tuple[str, ...], admin_token: str | None, clerk_token: str | None
) -> Cluster | None:
    """The running servers `--url` names (a bench Cluster), or None to start one."""
    if not urls:
        return None
    if not (admin_token and clerk_token):
        raise click.UsageError("--url needs --admin-token and --clerk-token")
    from stockkeeper.bench.cluster import Cluster

    return Cluster([url.rstrip("/") for url in urls], admin_token, clerk_token)


def _fault(error: Exception) -> click.ClickException:
    """A setup or transport fault of a bench run: its first line, exit status 1."""
    return click.ClickException((str(error).splitlines() or [repr(error)])[0])


def _write_json(path: str | None, data: Any) -> None:
    if path is not None:
        import json

        with open(path, "w") as out:
            json.dump(data, out, indent=2)


@bench.command("oversell")
@_quick(attempts=500, stock=20, servers=2)
@click.option("--attempts", default=10_000, show_default=True, type=click.IntRange(1))
@click.option("--stock", default=100, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--concurrency", default=200, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--sku", default=None, help="A new SKU (default: a unique one per run).")
@_bench_options()
def bench_oversell(
    attempts: int, stock: int, concurrency: int, sku: str | None, **where: Any
) -> None:
    """ATTEMPTS concurrent purchases of one new item against STOCK, sent by wrk round-robin over
    the servers; then every server must serve 0 at version STOCK+1 and the audit log must hold
    exactly STOCK purchases, gap-free and replaying. Exit status 1 when the verdict is WRONG.

    Starts --servers `stockkeeper serve` processes on a fresh schema of --database and a private
    redis-server. Needs PostgreSQL, redis-server and wrk. On a 2-core machine the defaults take
    about 15 s, --quick about 5 s, most of that starting and stopping the servers."""
    if attempts < stock:
        raise click.BadParameter(f"fewer attempts ({attempts}) than stock ({stock})")

    async def scenario(cluster: Any) -> tuple[Any, str]:
        from stockkeeper.bench.oversell import default_sku, report, run_oversell

        result = await run_oversell(
            cluster.urls,
            cluster.admin_token,
            cluster.clerk_token,
            sku or default_sku(),
            stock,
            attempts,
            concurrency,
        )
        return result, report(result)

    _bench(scenario, **where)


@bench.command("holds")
@_quick(carts=500, stock=20, servers=2)
@click.option("--carts", default=10_000, show_default=True, type=click.IntRange(1))
@click.option("--stock", default=100, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--concurrency", default=200, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--ttl",
    "ttl_s",
    default=1,
    show_default=True,
    type=click.IntRange(1, 3600),
    help="Each hold's ttl_s: a walk-away's stock goes back after it.",
)
@click.option(
    "--confirm-share",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="The share of carts that confirm; the others walk away.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Which carts confirm.")
@click.option("--sku", default=None, help="A new SKU (default: a unique one per run).")
@_bench_options()
def bench_holds(
    carts: int,
    stock: int,
    concurrency: int,
    ttl_s: int,
    confirm_share: float,
    seed: int,
    sku: str | None,
    **where: Any,
) -> None:
    """A checkout storm: CARTS carts, round-robin over the servers, each holds 1 unit of one new
    item with STOCK, then confirms it or walks away (seeded). CORRECT if no unit is made or
    lost, held never passes on_hand, every hold ends exactly once, every walk-away's expiry is
    recorded within 1 s of its expires_at, and every server then serves nothing held. Reports
    the wall time, each step's p99 and the expiry lag.

    Starts --servers `stockkeeper serve` processes on a fresh schema of --database and a private
    redis-server. Needs PostgreSQL and redis-server. On a 2-core machine the defaults take about
    15 s, --quick about 6 s, with the servers' start and stop and the last TTL."""

    async def scenario(cluster: Any) -> tuple[Any, str]:
        from stockkeeper.bench.holds import default_sku, report, run_holds

        result = await run_holds(
            cluster.urls,
            cluster.admin_token,
            cluster.clerk_token,
            sku or default_sku(),
            stock,
            carts,
            concurrency,
            ttl_s,
            confirm_share,
            seed,
        )
        return result, report(result)

    _bench(scenario, **where)


@bench.command("stampede")
@_quick(keys=5, reads=100, servers=2)
@click.option("--keys", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--reads", default=400, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--concurrency", default=800, show_default=True, type=click.IntRange(1, 10_000))
@_bench_options()
def bench_stampede(keys: int, reads: int, concurrency: int, **where: Any) -> None:
    """KEYS new (cold) items each read READS times at once, spread over the servers. CORRECT if
    every read answered the item and no server read the database more than once per key.

    Starts --servers `stockkeeper serve` processes on a fresh schema of --database and a private
    redis-server. Needs PostgreSQL and redis-server. On a 2-core machine the defaults take about
    15 s, --quick about 5 s, most of that starting and stopping the servers."""

    async def scenario(cluster: Any) -> tuple[Any, str]:
        from stockkeeper.bench.stampede import report, run_stampede

        result = await run_stampede(
            cluster.urls, cluster.admin_token, cluster.clerk_token, keys, reads, concurrency
        )
        return result, report(result)

    _bench(scenario, **where)


@bench.command("mixed")
@_quick(rate=200, seconds=2, warmup=0.5, connections=4, skus=100)
@click.option(
    "--rate",
    default=10_000.0,
    show_default=True,
    type=click.FloatRange(1, 1e6),
    help="Requests per second offered, open loop.",
)
@click.option(
    "--seconds",
    default=20.0,
    show_default=True,
    type=click.FloatRange(0.5, 3600),
    help="The measured window.",
)
@click.option("--warmup", default=5.0, show_default=True, type=click.FloatRange(0, 600))
@click.option(
    "--connections",
    default=64,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="One wrk thread each; spread over the servers.",
)
@click.option("--read-share", default=0.95, show_default=True, type=click.FloatRange(0, 1))
@click.option(
    "--restock-share",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Of the writes; the rest are purchases.",
)
@click.option("--skus", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--zipf", default=1.0, show_default=True, type=click.FloatRange(0, 10))
@click.option(
    "--systems",
    default="hello,nocache,naive,coherent",
    show_default=True,
    help="Comma-separated, run in this order: hello, nocache, naive, coherent.",
)
@click.option(
    "--report",
    "report_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Write result.json and PNG plots here.",
)
@_bench_options(servers=2, cache=False)
def bench_mixed(
    rate: float,
    seconds: float,
    warmup: float,
    connections: int,
    read_share: float,
    restock_share: float,
    skus: int,
    zipf: float,
    systems: str,
    report_dir: str | None,
    **where: Any,
) -> None:
    """Open-loop mixed load (GETs, purchases, restocks of Zipf-drawn SKUs) at RATE for SECONDS
    against each system in turn, each on a fresh local cluster (or once against --url). Reports
    latency from intended send times, hit rate, visibility lag and every answer judged against
    the audit log. Exit status 1 when stockkeeper answered wrong.

    Starts --servers processes for each system in turn (`stockkeeper serve`, or the bench's own
    hello and naive servers) on a fresh schema of --database, and a private redis-server for
    naive and coherent. Needs PostgreSQL, redis-server and wrk. Each system takes
    warm-up + seconds + about 10 s to start, seed, judge and stop: on a 2-core machine the
    defaults take about 3 minutes, --quick about 40 s."""
    from pathlib import Path

    try:
        from stockkeeper.bench.loadgen import Mix
        from stockkeeper.bench.mixed import (
            SYSTEMS,
            MixedOptions,
            exit_code,
            result_json,
            run_mixed,
            run_on_urls,
        )
        from stockkeeper.bench.report import render, write_report
    except ImportError as error:
        raise click.ClickException(f"{error}: install the bench extra") from None
    names = [name.strip() for name in systems.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SYSTEMS))
    if unknown or not names:
        raise click.BadParameter(f"unknown systems {unknown}; choose from {sorted(SYSTEMS)}")
    given = _given_cluster(where["urls"], where["admin_token"], where["clerk_token"])
    options = MixedOptions(
        rate, seconds, warmup, connections, Mix(read_share, restock_share, skus, zipf)
    )
    try:
        if given is not None:
            runs = [run_on_urls(given, options, sys.stderr)]
        else:
            runs = run_mixed(
                names,
                where["servers"],
                where["workers"],
                where["database_url"],
                options,
                lambda line: click.echo(line, err=True),
                sys.stderr,
            )
    except Exception as error:
        raise _fault(error) from None
    result = result_json(runs, len(where["urls"]) or where["servers"], where["workers"], options)
    click.echo(render(result))
    if report_dir is not None:
        for path in write_report(result, Path(report_dir)):
            click.echo(f"wrote {path}", err=True)
    _write_json(where["json_path"], result)
    sys.exit(exit_code(runs))


@main.command("verify")
@click.option(
    "--url", "urls", multiple=True, required=True, help="A running server (repeat for each)."
)
@click.option("--token", required=True, envvar="STOCKKEEPER_VERIFY_TOKEN", help="An admin token.")
@click.option("--seconds", default=10.0, show_default=True, type=click.FloatRange(0.5, 86_400))
@click.option("--seed", default=None, type=int, help="Fixes the schedule (default: random).")
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(1, 1_000))
@click.option("--json", "json_path", default=None, help="Write counts and examples here.")
def verify_command(
    urls: tuple[str, ...],
    token: str,
    seconds: float,
    seed: int | None,
    concurrency: int,
    json_path: str | None,
) -> None:
    """Run a recorded, seeded mixed history (reads, batch and min_version reads, purchases,
    restocks, orders, sets, idempotent repeats) against running servers, on SKUs of its own
    (verify-<seed>-<run>-<n>, left at 0), and judge it against the audit log. Prints the verdict
    and the count per rule. Exit 0: everything holds; 1: a violation; 2: it could not run.
    Ctrl-C stops early and judges what was recorded."""
    import aiohttp

    from stockkeeper.verify.run import CannotRun, VerifyOptions, verify

    seed = seed if seed is not None else secrets.randbelow(2**31)
    options = VerifyOptions(urls, token, seconds, seed, concurrency)
    on_tty, last = sys.stderr.isatty(), [-math.inf]  # plain lines: one at the start

    def progress(elapsed_s: float, ops: int) -> None:
        if on_tty:
            done = int(30 * elapsed_s / seconds)
            click.echo(
                f"\r[{'#' * done}{'.' * (30 - done)}] {ops:,} operations", nl=False, err=True
            )
        elif elapsed_s - last[0] >= 5:
            last[0] = elapsed_s
            click.echo(f"verify: {elapsed_s:.0f} s, {ops:,} operations", err=True)

    try:
        report = asyncio.run(verify(options, progress))
    except (CannotRun, OSError, aiohttp.ClientError, TimeoutError) as error:
        click.echo(f"verify could not run: {error or type(error).__name__}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:  # before the clients started: nothing was recorded to judge
        click.echo("verify could not run: interrupted before the run started", err=True)
        sys.exit(2)
    if on_tty:
        click.echo(err=True)
    click.echo(
        f"verify: {len(urls)} server(s), {concurrency} clients, {report.seconds:.1f} s, "
        f"seed {seed}: {len(report.ops):,} operations on {len(report.skus)} SKUs"
    )
    ends = report.hold_ends()
    click.echo(
        f"  holds: {len(report.holds):,} created; ended: "
        + ", ".join(f"{n:,} {reason}" for reason, n in sorted(ends.items()))
    )
    counts = report.counts()
    for rule, count in counts.items():
        click.echo(f"  {rule:<18} {count:>8}")
    click.echo(f"  {'indeterminate':<18} {report.verdict.indeterminate:>8}  (either way is fine)")
    for example in [*report.verdict.examples[:10], *report.replay_mismatches[:10]]:
        click.echo(f"  ! {example}")
    click.echo(f"verdict: {'CORRECT' if report.ok else 'WRONG'}")
    _write_json(
        json_path,
        {
            "seed": seed,
            "ok": report.ok,
            "operations": len(report.ops),
            "counts": counts,
            "indeterminate": report.verdict.indeterminate,
            "examples": [str(v) for v in report.verdict.examples[:100]],
            "replay_mismatches": report.replay_mismatches[:100],
        },
    )
    sys.exit(0 if report.ok else 1)
