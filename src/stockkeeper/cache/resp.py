"""A small asyncio Redis client built for a cheap hot path: every caller of a process shares ONE
connection and their commands are pipelined automatically.

Why not redis-py: at 10,000 reads/s on 2 cores its asyncio client costs ~39 µs of CPU per GET
(a pooled connection per caller, Python-level read/write coroutines per command). Here a command
is one `hiredis.pack_command`, one future and a list append; replies are parsed by hiredis in C
inside `data_received` and handed to the waiting futures in FIFO order, since Redis answers the
commands of one connection in the order it got them.

Writes: a command for an idle connection (nothing in flight) is written at once. While replies
are outstanding, commands are gathered per event-loop turn instead: the first one schedules one
flush (`loop.call_soon`) that writes all of them in one `transport.write`. Calling
`transport.write` per command does not coalesce anything: with the socket writable, asyncio and
uvloop both send at once, one syscall per command, which measured ~4 µs of the ~6.5 µs of CPU
per GET at concurrency 64 (bench/redis_clients.py); gathered, a GET costs ~2.5 µs. Gathering
an idle connection's command too would add a loop turn (~3 µs) to every lone call, for nothing.

The price of sharing one connection: a reply that is late (a stuck server, a lost packet) holds
up every reply behind it, and once a caller has given up on it nobody can tell which reply belongs
to whom. So a late reply condemns the connection: it is closed and every pending call fails with
`CacheUnavailable`; the next call reconnects. Blocking commands (BLPOP with a timeout longer than
`timeout_ms`), SUBSCRIBE and MONITOR do not belong on this client.

Replies are not decoded: bytes, int, list and None come back as hiredis makes them.

TLS (`rediss://`): TCP first, then `loop.start_tls`, so a TLS handshake that gets no answer is
told apart from a host that does not answer at all: a plain-text Redis behind a `rediss://` URL
reads the ClientHello as the start of an inline command and waits for its newline forever.
Nothing ever falls back to plain text.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from stockkeeper import tls

Arg: TypeAlias = str | bytes | int | float
"""A command argument: sent as a bulk string (`hiredis.pack_command` rejects bool and None)."""

_pack: Callable[[tuple[Arg, ...]], bytes] = hiredis.pack_command  # type: ignore[assignment]
"""hiredis's own encoder, in C; its stub types the argument as a 1-tuple, hence the ignore."""

DEFAULT_TIMEOUT_MS = 100
DEFAULT_CONNECT_TIMEOUT_MS = 1000
DEFAULT_PENDING_MAX = 10_000
WATCHDOG_CHECKS_PER_TIMEOUT = 4
SCAN_COUNT = 1_000


class CacheUnavailable(Exception):
    """The cache cannot answer now: connect failed, connection lost, reply late, too busy.

    Callers fall back to the database; the client reconnects on its next call."""


class CacheReplyError(Exception):
    """Redis answered with an error reply (the connection is fine; the command was wrong).

    hiredis builds these itself, also for errors nested in array replies (EXEC, Lua tables)."""


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_TLS_PARAMETERS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")

_AFTER_TLS_HANDSHAKE = (
    " right after the TLS handshake (a client certificate missing or refused? see ssl_certfile)"
)

_MORE = object()
"""What `hiredis.Reader.gets` returns while the buffer holds no complete reply."""


@dataclass(frozen=True)
class Script:
    """A Lua script run by EVALSHA: the SHA1 is computed once, not per call."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


@dataclass(frozen=True)
class TlsSettings:
    """How a `rediss://` URL connects, by redis-py's query parameter names. The server's
    certificate and host name are verified unless `ssl_cert_reqs=none`, which is unsafe:
    anyone on the path can then read and change what the cache serves."""

    ca_certs: str | None = None  # the CAs to trust; None: the system's
    certfile: str | None = None  # a client certificate, for a server that asks for one
    keyfile: str | None = None  # its key, when not in certfile
    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> TlsSettings:
        unknown = sorted(
            name for name in query if name.startswith("ssl_") and name not in _TLS_PARAMETERS
        )
        if unknown:
            supported = ", ".join(_TLS_PARAMETERS)
            raise ValueError(f"unsupported {', '.join(unknown)}: use {supported}")
        cert_reqs = query.get("ssl_cert_reqs", ["required"])[0]
        if cert_reqs not in _CERT_REQS:
            raise ValueError(f"ssl_cert_reqs={cert_reqs}: use none, optional or required")
        settings = cls(
            ca_certs=query.get("ssl_ca_certs", [None])[0],
            certfile=query.get("ssl_certfile", [None])[0],
            keyfile=query.get("ssl_keyfile", [None])[0],
            cert_reqs=_CERT_REQS[cert_reqs],
        )
        if settings.keyfile is not None and settings.certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile too")
        return settings

    def context(self) -> ssl.SSLContext:
        """Reads the files now, so a missing or unreadable one is a ValueError at start, not
        a cache that trips on every connect."""
        loading = "ssl_ca_certs"
        try:
            context = ssl.create_default_context(cafile=self.ca_certs)
            if self.certfile is not None:
                loading = "ssl_certfile"
                context.load_cert_chain(self.certfile, self.keyfile)
        except OSError as error:
            reason = tls.describe(error) or error.strerror or error
            raise ValueError(f"cannot load {loading}: {reason}") from None
        if self.cert_reqs == ssl.CERT_NONE:
            context.check_hostname = False
        context.verify_mode = self.cert_reqs
        return context


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect, from `redis://[[user]:password@]host:port/db`,
    `rediss://…` (TLS, `?ssl_ca_certs=…` and the other `TlsSettings`) or
    `unix:///path?db=N[&password=P]`."""

    host: str | None
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None
    tls: TlsSettings | None = None

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if parts.scheme != "rediss" and any(name.startswith("ssl_") for name in query):
            raise ValueError("ssl_* parameters need rediss:// (TLS)")
        if parts.scheme in ("redis", "rediss"):
            db = parts.path.strip("/")
            return cls(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 6379,
                path=None,
                db=int(db or query.get("db", ["0"])[0]),
                username=username,
                password=password,
                tls=TlsSettings.from_query(query) if parts.scheme == "rediss" else None,
            )
        if parts.scheme == "unix" and parts.path:
            return cls(
                host=None,
                port=0,
                path=parts.path,
                db=int(query.get("db", ["0"])[0]),
                username=username,
                password=password or query.get("password", [None])[0],
            )
        raise ValueError(
            f"unsupported Redis URL {url!r}: use redis://host:port/db, rediss://host:port/db "
            "or unix:///path"
        )

    def handshake(self) -> list[tuple[Arg, ...]]:
        """Commands that make a fresh connection ready: AUTH and SELECT when the URL asks;
        over TLS, a PING if neither: a TLS 1.3 server judges the client's certificate after
        the client's side of the handshake is done, so only a reply shows it was accepted."""
        commands: list[tuple[Arg, ...]] = []
        if self.password is not None:
            credentials = (
                (self.password,) if self.username is None else (self.username, self.password)
            )
            commands.append(("AUTH", *credentials))
        if self.db:
            commands.append(("SELECT", self.db))
        if self.tls is not None and not commands:
            commands.append(("PING",))
        return commands


class _Connection(asyncio.Protocol):
    """One socket: writes packed commands, matches parsed replies to futures in FIFO order.

    Each pending entry is (future, loop time it was queued). A periodic watchdog looks at the
    oldest entry only: replies come in order, so if that one is not late, none is. This costs one
    `loop.time()` per command instead of one timer per command.

    Late means Redis made no progress: no reply for `timeout` since the oldest command was sent,
    seen at two watchdog ticks in a row. A busy event loop (a server under load) delays reading
    replies that already arrived; giving up then would send every read to the database exactly
    when it can least take them, so the second tick lets `data_received` run first."""

    _transport: asyncio.Transport  # set by connection_made, before anything is sent

    def __init__(self, timeout: float, pending_max: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._pending_max = pending_max
        self._pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._outbox: list[bytes] = []  # packed commands of this loop turn, not yet written
        self._reader = hiredis.Reader(replyError=CacheReplyError, notEnoughData=_MORE)
        self._watchdog: asyncio.TimerHandle | None = None
        self._replied_at = self._loop.time()  # when the last reply was parsed
        self._late_since_tick = False
        self.lost = False
        self.loss = "connection to Redis lost"  # why, once lost: the first reason given
        self.closed: asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._arm_watchdog()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as error:
                self.fail(CacheUnavailable(f"Redis protocol error: {error}"))
                return
            if reply is _MORE:
                return
            if not pending:
                self.fail(CacheUnavailable("Redis sent a reply nobody asked for"))
                return
            waiter = pending.popleft()[0]
            self._replied_at = self._loop.time()
            if waiter.done():  # its caller was cancelled; the reply still had to be consumed
                continue
            if isinstance(reply, CacheReplyError):
                waiter.set_exception(reply)
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = "closed" if exc is None else tls.describe(exc) or str(exc)
        self._fail_pending(CacheUnavailable(f"connection to Redis lost: {reason}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, data: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; the future gets its reply."""
        self._check_open(1)
        waiter = self._loop.create_future()
        self._write(data)
        self._pending.append((waiter, self._loop.time()))
        return waiter

    def send_many(self, data: bytes, count: int) -> list[asyncio.Future[Any]]:
        """Queue `count` packed commands; one future per reply."""
        self._check_open(count)
        sent = self._loop.time()
        waiters = [self._loop.create_future() for _ in range(count)]
        self._write(data)
        self._pending.extend((waiter, sent) for waiter in waiters)
        return waiters

    def secure(self, transport: asyncio.BaseTransport) -> None:
        """Write through `transport` from now on: the TLS one `loop.start_tls` made over the
        socket's, before anything was sent."""
        self._transport = cast(asyncio.Transport, transport)

    def _check_open(self, count: int) -> None:
        """A command queued on a lost connection would get no reply and no timeout: its
        pending calls were failed and its watchdog stopped. A caller can get such a connection
        from `_connect()` when the loss arrives before it resumes; and a closing transport
        drops a write (asyncio) or raises RuntimeError (uvloop) until `connection_lost` runs."""
        if self.lost or self._transport.is_closing():
            raise CacheUnavailable(self.loss)
        if len(self._pending) + count > self._pending_max:
            raise CacheUnavailable(f"{self._pending_max} Redis commands already in flight")

    def _write(self, data: bytes) -> None:
        """Before the commands' pending entries are added: nothing pending means nothing is
        waiting in the outbox either, so writing at once keeps the order."""
        if not self._pending:
            self._transport.write(data)
            return
        if not self._outbox:
            self._loop.call_soon(self._flush)
        self._outbox.append(data)

    def _flush(self) -> None:
        data = b"".join(self._outbox)
        self._outbox.clear()
        if not (self.lost or self._transport.is_closing()):  # else its callers fail anyway
            self._transport.write(data)

    def fail(self, error: CacheUnavailable) -> None:
        """Give up on this connection: fail every pending call now, drop the socket."""
        self._fail_pending(error)
        self._transport.abort()

    def _fail_pending(self, error: CacheUnavailable) -> None:
        if not self.lost:
            self.loss = str(error)
        self.lost = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        pending, self._pending = self._pending, deque()
        for waiter, _ in pending:
            if not waiter.done():
                waiter.set_exception(error)

    def _arm_watchdog(self) -> None:
        self._watchdog = self._loop.call_later(
            self._timeout / WATCHDOG_CHECKS_PER_TIMEOUT, self._watch
        )

    def _watch(self) -> None:
        late = False
        if self._pending:
            waiting_since = max(self._pending[0][1], self._replied_at)
            late = self._loop.time() - waiting_since > self._timeout
        if late and self._late_since_tick:
            self.fail(CacheUnavailable(f"no reply from Redis within {self._timeout * 1000:g} ms"))
            return
        self._late_since_tick = late
        self._arm_watchdog()


class RespClient:
    """Redis client for one process: one shared connection, automatic pipelining.

    Connects on first use and again after the connection is lost; concurrent callers share one
    connect attempt. Fails with `CacheUnavailable` rather than waiting: no reply for `timeout_ms`
    (checked every quarter of it, confirmed at the next check), connect slower than
    `connect_timeout_ms`, more than `pending_max` commands in flight."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout_ms: float = DEFAULT_TIMEOUT_MS,
        connect_timeout_ms: float = DEFAULT_CONNECT_TIMEOUT_MS,
        pending_max: int = DEFAULT_PENDING_MAX,
    ) -> None:
        self.endpoint = endpoint
        self._ssl_context = None if endpoint.tls is None else endpoint.tls.context()
        self._timeout = timeout_ms / 1000
        self._connect_timeout = connect_timeout_ms / 1000
        self._pending_max = pending_max
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_ms: float = DEFAULT_TIMEOUT_MS,
        connect_timeout_ms: float = DEFAULT_CONNECT_TIMEOUT_MS,
        pending_max: int = DEFAULT_PENDING_MAX,
    ) -> RespClient:
        return cls(
            Endpoint.parse(url),
            timeout_ms=timeout_ms,
            connect_timeout_ms=connect_timeout_ms,
            pending_max=pending_max,
        )

    async def call(self, *args: Arg) -> Any:
        """Run one command, e.g. `await client.call("GET", key)`; its reply, undecoded."""
        data = _pack(args)
        connection = self._connection
        if connection is None or connection.lost:
            connection = await self._connect()
        return await connection.send(data)

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Run several commands in one write; their replies in order. Raises the first
        `CacheReplyError` once every reply is in (the other commands did run)."""
        if not commands:
            return []
        data = b"".join(_pack(tuple(command)) for command in commands)
        connection = self._connection
        if connection is None or connection.lost:
            connection = await self._connect()
        return await asyncio.gather(*connection.send_many(data, len(commands)))

    async def evalsha(
        self, script: Script, keys: Iterable[Arg] = (), args: Iterable[Arg] = ()
    ) -> Any:
        """Run a Lua script by its SHA1; if Redis does not know it (restart, SCRIPT FLUSH,
        failover) load it and retry once, both in one write."""
        keys = tuple(keys)
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self.call(*command)
        except CacheReplyError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
        _, reply = await self.pipeline([("SCRIPT", "LOAD", script.source), command])
        return reply

    async def delete_matching(self, pattern: str) -> None:
        """Delete every key matching `pattern` (SCAN, then UNLINK each batch)."""
        cursor: int | bytes = 0
        while True:
            cursor, keys = await self.call("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)
            if keys:
                await self.call("UNLINK", *keys)
            if int(cursor) == 0:
                return

    async def close(self) -> None:
        """Fail pending calls, close the socket, and refuse further calls."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.fail(CacheUnavailable("Redis client closed"))
            await connection.closed

    async def _connect(self) -> _Connection:
        if self._closed:
            raise CacheUnavailable("Redis client closed")
        attempt = self._connecting
        if attempt is None:
            attempt = self._connecting = asyncio.create_task(self._open())
        try:
            # Shielded: a caller that gives up must not cancel the attempt the others wait on.
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            if attempt.cancelled():  # by close(), not by this caller's own cancellation
                raise CacheUnavailable("Redis client closed") from None
            raise

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        endpoint = self.endpoint
        where = endpoint.path or f"{endpoint.host}:{endpoint.port}"
        connection: _Connection | None = None
        in_tls_handshake = False  # what a timeout interrupted: a plain-text port never answers

        def protocol() -> _Connection:
            return _Connection(self._timeout, self._pending_max)

        try:
            async with asyncio.timeout(self._connect_timeout):
                if endpoint.host is None:
                    _, connection = await loop.create_unix_connection(protocol, endpoint.path)
                else:
                    transport, connection = await loop.create_connection(
                        protocol, endpoint.host, endpoint.port
                    )
                    if self._ssl_context is not None:
                        in_tls_handshake = True
                        secured = await loop.start_tls(
                            transport, connection, self._ssl_context, server_hostname=endpoint.host
                        )
                        in_tls_handshake = False
                        if secured is None:  # only once the transport is closing
                            raise CacheUnavailable("connection lost in the TLS handshake")
                        connection.secure(secured)
                handshake = endpoint.handshake()
                if handshake:
                    data = b"".join(_pack(command) for command in handshake)
                    try:
                        await asyncio.gather(*connection.send_many(data, len(handshake)))
                    except CacheUnavailable:
                        # The transport may be closing with its reason still on the way (a
                        # refused client certificate, say): it comes with connection_lost.
                        await connection.closed
                        hint = "" if self._ssl_context is None else _AFTER_TLS_HANDSHAKE
                        raise CacheUnavailable(f"{connection.loss}{hint}") from None
        except BaseException as error:  # also close()'s cancellation: drop the half-made socket
            if connection is not None:
                connection.fail(CacheUnavailable("Redis handshake failed"))
            if isinstance(error, TimeoutError) and in_tls_handshake:
                reason = (
                    f"no answer to the TLS handshake within {self._connect_timeout * 1000:g} ms "
                    "(a plain-text port?)"
                )
            elif isinstance(error, CacheUnavailable):
                reason = str(error)
            elif isinstance(error, OSError | TimeoutError | CacheReplyError):
                reason = tls.describe(error) or repr(error)
            else:
                raise
            raise CacheUnavailable(f"cannot connect to Redis at {where}: {reason}") from error
        finally:
            self._connecting = None
        self._connection = connection
        return connection
