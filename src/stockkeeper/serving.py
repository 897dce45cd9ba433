"""Serving an app over HTTP with granian: the checks and preparation before it starts, the
limits one client meets, and a shutdown a load balancer can follow. `stockkeeper serve` and
the benchmark's baseline servers all start here, so they differ only in the app.

Shutdown, at the first SIGTERM or SIGINT:

1. Every worker drains at once: the app's `drain()` makes /readyz answer 503 and every answer
   close its keep-alive connection, while every request is still served. The main process
   relays the signal to its workers, so this holds whether it reached the main process alone
   (`kill PID`, a container runtime, systemd's KillMode=mixed) or the whole process group
   (Ctrl-C, systemd's default); draining twice is draining. A worker still starting, which
   serves nothing yet, ends at the signal.
2. After `drain_grace_ms`, long enough for a load balancer's health checks to see the 503 and
   send elsewhere, the main process tells each worker to stop (STOP_SIGNAL): granian stops
   accepting, closes idle keep-alive connections and lets the requests in flight finish.
3. A worker still busy `drain_timeout_s` later is killed. The main process exits 0.

A second SIGTERM or SIGINT skips what is left of the grace. Granian itself would stop accepting
at the first signal: the main process's handlers are replaced from granian's startup hook, and
each worker's through `granian._signals`, the one seam granian has for them (granian is pinned,
and tests/test_serving.py holds it to this).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import click

from stockkeeper.cache import DEFAULT_CACHE_URL, check_cache_url, ping_cache
from stockkeeper.domain import NoDatabase, Role, StockkeeperError, TokenInfo
from stockkeeper.http.cors import DOCS_CORS_ENV_VAR
from stockkeeper.service import Inventory
from stockkeeper.store import DEFAULT_DATABASE_URL, StoreOptions, display_url

if TYPE_CHECKING:  # granian loads only to serve: the token commands never need it
    from granian._granian import WorkerSignal
    from granian.server.mp import MPServer

T = TypeVar("T")

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_SIGNAL = signal.SIGUSR1  # main process to worker only: the grace is over
# Twice a 1 s health-check interval, the slow end of the usual 100 ms to 1 s: a load balancer
# that ejects a server at its first failed check (HAProxy's `fall 1`) has seen it with an
# interval to spare. With more checks to fail or a longer interval, raise it to (fall + 1) * inter.
DRAIN_GRACE_MS = 2_000
DRAIN_TIMEOUT_S = 10  # granian counts it in whole seconds
# A client that has not sent a whole request head by then is closed: slow (trickling) headers,
# a connection that sends nothing, and an idle keep-alive connection alike. Granian's 30 s
# would let a few thousand such clients hold a worker's connections three times as long.
HEADER_READ_TIMEOUT_MS = 10_000
HEADER_BYTES_MAX = 16_384  # Node.js's limit; a bearer token and an idempotency key need < 1 KiB
HEADER_BYTES_MIN = 8_192  # hyper's smallest read buffer
CONNECTIONS_MAX = 1_024  # per worker, as many as the requests a worker serves at once


@dataclass(frozen=True)
class Limits:
    """How a server shuts down, and what one client may hold (README, Configuration)."""

    drain_grace_ms: int = DRAIN_GRACE_MS
    drain_timeout_s: int = DRAIN_TIMEOUT_S
    header_read_timeout_ms: int = HEADER_READ_TIMEOUT_MS
    header_bytes_max: int = HEADER_BYTES_MAX
    connections_max: int = CONNECTIONS_MAX


database_option = click.option(
    "--database",
    "database_url",
    envvar="STOCKKEEPER_DATABASE_URL",
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    help="postgresql://… or sqlite:///path (also STOCKKEEPER_DATABASE_URL).",
)

_SERVE_OPTIONS = (
    click.option("--host", default="127.0.0.1", show_default=True),
    click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535)),
    click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64)),
    database_option,
    click.option(
        "--cache",
        "cache_url",
        envvar="STOCKKEEPER_CACHE_URL",
        default=DEFAULT_CACHE_URL,
        show_default=True,
        help="memory:// (in-process), redis://host:port/db, rediss://… (TLS), "
        "unix:///path?db=N, or any Redis Cluster node's URL (also STOCKKEEPER_CACHE_URL).",
    ),
    click.option(
        "--drain-grace-ms",
        envvar="STOCKKEEPER_DRAIN_GRACE_MS",
        default=DRAIN_GRACE_MS,
        show_default=True,
        type=click.IntRange(0, 600_000),
        help="After SIGTERM, go on serving this long with /readyz answering 503, so a load "
        "balancer stops sending first (also STOCKKEEPER_DRAIN_GRACE_MS).",
    ),
    click.option(
        "--drain-timeout-s",
        envvar="STOCKKEEPER_DRAIN_TIMEOUT_S",
        default=DRAIN_TIMEOUT_S,
        show_default=True,
        type=click.IntRange(1, 3_600),
        help="Then wait this long at most for the requests in flight "
        "(also STOCKKEEPER_DRAIN_TIMEOUT_S).",
    ),
    click.option(
        "--header-read-timeout-ms",
        envvar="STOCKKEEPER_HEADER_READ_TIMEOUT_MS",
        default=HEADER_READ_TIMEOUT_MS,
        show_default=True,
        type=click.IntRange(1, 3_600_000),
        help="Close a connection that has not sent a whole request head within this time, "
        "an idle keep-alive one too (also STOCKKEEPER_HEADER_READ_TIMEOUT_MS).",
    ),
    click.option(
        "--header-bytes-max",
        envvar="STOCKKEEPER_HEADER_BYTES_MAX",
        default=HEADER_BYTES_MAX,
        show_default=True,
        type=click.IntRange(HEADER_BYTES_MIN, 16 * 1024 * 1024),
        help="The largest request head (request line and headers); a larger one is answered "
        "431 (also STOCKKEEPER_HEADER_BYTES_MAX).",
    ),
    click.option(
        "--connections-max",
        envvar="STOCKKEEPER_CONNECTIONS_MAX",
        default=CONNECTIONS_MAX,
        show_default=True,
        type=click.IntRange(1, 1_000_000),
        help="Open connections per worker; more wait in the listen queue until one closes "
        "(also STOCKKEEPER_CONNECTIONS_MAX).",
    ),
)


def serve_options(command: Callable[..., None]) -> Callable[..., None]:
    """`serve`'s options, for every command that starts a server through `serve_app` (the bench
    launcher appends --port --workers --database --cache to each alike). The command gets host,
    port, workers, database_url and cache_url, and the rest as one `limits`."""
    names = [limit.name for limit in dataclasses.fields(Limits)]

    @functools.wraps(command)
    def run(**options: Any) -> None:
        command(limits=Limits(**{name: options.pop(name) for name in names}), **options)

    for option in reversed(_SERVE_OPTIONS):
        run = option(run)
    return run


def run_step(op: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one async step; a database or cache fault becomes a one-line error and exit 1."""
    try:
        return asyncio.run(op())
    except NoDatabase as error:
        raise click.ClickException(
            f"{error}; pass --database or set STOCKKEEPER_DATABASE_URL"
        ) from None
    except (StockkeeperError, ValueError, OSError) as error:
        raise click.ClickException(
            str(error).splitlines()[0] if str(error) else repr(error)
        ) from None


def serve_app(
    app_factory: str,
    host: str,
    port: int,
    workers: int,
    database_url: str,
    cache_url: str,
    limits: Limits,
    *,
    docs_cors_origins: Sequence[str] = (),
) -> None:
    """What `serve` does, for any app factory ("module:function", called in each worker): check
    the address, prepare the database and cache (printing the first admin token), then run
    granian until it is stopped (module docstring)."""

    async def prepare() -> tuple[str | None, bool]:
        check_cache_url(cache_url)
        # The database first, so the first error is the one to fix first; the cache before the
        # first admin token, which a failed start would otherwise make and never print.
        async with await Inventory.open(database_url, StoreOptions(pool_size=1)) as inventory:
            await ping_cache(cache_url)
            first = await inventory.create_first_admin_token()
            tokens = [] if first is not None else await inventory.list_tokens()
            return first, first is not None or any(_live_admin(info) for info in tokens)

    _check_can_listen(host, port)
    first_token, has_admin = run_step(prepare)
    if first_token is not None:
        click.echo("stockkeeper: first start on an empty database; the admin token (shown once):")
        click.echo(first_token)
    elif not has_admin:
        # Tokens made before the first start (a clerk, say) leave the database non-empty, so
        # no admin token was printed; and all of them may since have been revoked.
        click.echo(
            "stockkeeper: warning: no live admin token in this database; make one with "
            f"`stockkeeper token create NAME --role admin --database {display_url(database_url)}`",
            err=True,
        )
    sys.stdout.flush()

    os.environ["STOCKKEEPER_DATABASE_URL"] = database_url
    os.environ["STOCKKEEPER_CACHE_URL"] = cache_url
    os.environ[DOCS_CORS_ENV_VAR] = ",".join(docs_cors_origins)
    metrics_dir: str | None = None  # made here, so removed here; never the user's own
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # One /metrics for all workers; must be set before any worker imports prometheus_client.
        metrics_dir = tempfile.mkdtemp(prefix="stockkeeper-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    # Spawned workers import everything afresh: they see PROMETHEUS_MULTIPROC_DIR (a forked one
    # would keep this process's single-process metrics) and inherit no threads or event loop.
    multiprocessing.set_start_method("spawn", force=True)

    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.server.mp import MPServer  # what granian.Granian is: its workers are processes

    server = MPServer(
        app_factory,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        log_access=False,
        # HTTP/1.1 alone: with HTTP/2 detection on, hyper waits for a connection's first bytes
        # with no timeout at all, so a client that sends nothing would hold a connection forever.
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(
            header_read_timeout=limits.header_read_timeout_ms,
            max_buffer_size=limits.header_bytes_max,
        ),
        backpressure=limits.connections_max,
        workers_kill_timeout=limits.drain_timeout_s,
    )
    server.on_startup(_Shutdown(server, limits.drain_grace_ms / 1000).take_signals)
    try:
        server.serve(target_loader=_load_worker_app)  # returns once its workers have stopped
    except RuntimeError as error:  # granian's socket errors, e.g. a port taken since the check
        raise click.ClickException(f"cannot serve on {host}:{port}: {error}") from None
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


class _Shutdown:
    """The main process's side of a shutdown: drain at the first signal, stop after the grace
    or at the second signal."""

    def __init__(self, server: MPServer, drain_grace_s: float) -> None:
        self._server = server
        self._drain_grace_s = drain_grace_s
        self._grace: threading.Timer | None = None

    def take_signals(self) -> None:
        """Granian's startup hook: runs after granian set its own handlers, and replaces them."""
        for signum in DRAIN_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._grace is None:
            for worker in self._server.wrks:
                # Its exit from now on is no crash: a worker still starting (it serves nothing
                # yet, and has no handlers yet) ends at the signal, the others at the stop.
                worker.interrupt_by_parent = True
            self._signal_workers(signal.SIGTERM)
            self._grace = threading.Timer(self._drain_grace_s, self._stop)
            self._grace.daemon = True
            self._grace.start()
        else:
            self._grace.cancel()
            self._stop()

    def _stop(self) -> None:
        self._signal_workers(STOP_SIGNAL)
        self._server.signal_handler_interrupt()  # granian's shutdown: waits, kills stragglers

    def _signal_workers(self, signum: int) -> None:
        for worker in self._server.wrks:
            if worker.inner.pid is not None:
                with suppress(ProcessLookupError):
                    os.kill(worker.inner.pid, signum)


@runtime_checkable
class Drainable(Protocol):
    """An app that can fail its readiness check while it goes on serving."""

    def drain(self) -> None: ...


def _load_worker_app(app_factory: str) -> Any:
    """Granian's target loader, run first in each worker: make the app, and have the worker's
    signals set up our way before granian sets up its own (module docstring)."""
    from granian import _signals

    module, _, name = app_factory.partition(":")
    app = getattr(importlib.import_module(module), name)()
    drain = app.drain if isinstance(app, Drainable) else _serve_on
    _signals.set_loop_signals = functools.partial(
        _set_worker_signals, _signals.set_loop_signals, drain
    )
    return app


def _set_worker_signals(
    granians: Callable[[asyncio.AbstractEventLoop], WorkerSignal],
    drain: Callable[[], None],
    loop: asyncio.AbstractEventLoop,
) -> WorkerSignal:
    """Granian's worker signals, but SIGTERM and SIGINT drain; only STOP_SIGNAL stops."""
    stop = granians(loop)
    for signum in DRAIN_SIGNALS:
        loop.add_signal_handler(signum, drain)
    loop.add_signal_handler(STOP_SIGNAL, stop.set)
    return stop


def _serve_on() -> None:
    """An app with no readiness to fail (a baseline) serves through the grace as it is."""


def _live_admin(info: TokenInfo) -> bool:
    return info.role is Role.ADMIN and info.revoked_at is None


def _check_can_listen(host: str, port: int) -> None:
    """Fail with one line, before touching the database, if the address cannot be bound."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror}") from None
