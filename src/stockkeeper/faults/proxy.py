"""A TCP proxy that cuts one server process off from one upstream (Redis or PostgreSQL).

Why a proxy and not iptables or tc: those need root and act on the shared loopback, so they cut
off every process on the machine. Pointing one server at its own proxy partitions exactly that
server from exactly that upstream, while everything else (other servers, the test's own direct
connections) still reaches the real service.

Why its own thread and event loop: the process using it blocks at times (waiting for a
subprocess, `time.sleep`, a test's event loop stuck on purpose). A proxy running on that loop
would stall with it and fake a partition nobody asked for.

The faults, set with the control methods and applying to open and new connections alike:

- `pass_through()` / `heal()`: bytes flow both ways.
- `hold()`: a partition. Bytes from either side are kept in order and not forwarded; no FIN, no
  RST; a new client connection is accepted but its upstream connect waits. `heal()` forwards what
  was held, in order, as TCP retransmission does once a partition heals.
- `drop()`: a blackhole that loses data. Bytes from either side (also those held or delayed at
  that moment) are discarded; connections stay open.
- `reset()`: abort every current connection on both sides with an RST.
- `refuse(True)`: reset each new connection as soon as it is accepted.
- `delay(ms, jitter_ms)`: each chunk waits ms ± uniform jitter, never overtaking an earlier chunk
  of its own connection and direction (TCP never reorders a stream); chunks of different
  connections may overtake each other. Delay stays set through `hold`, `drop` and `heal`, which
  take precedence while set; `delay(0)` turns it off.

A side's end of stream (FIN, or an RST or failure, which the other side sees as an RST) is queued
behind its bytes: it is held, delayed and healed with them, and `drop` keeps it, so connections
end when they would and never leak.

Caveat: the proxy is the TCP peer of both sides, so kernel keepalives succeed during `hold` and
`drop`; only timeouts above TCP (the client's own, Redis `timeout`, PostgreSQL's
`authentication_timeout`) see the partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar, cast

CONNECTIONS_MAX = 1024
HELD_BYTES_MAX = 64 * 2**20
DELAY_MS_MAX = 60_000.0
CONTROL_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0

_T = TypeVar("_T")
_LINGER_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on with a zero timeout: closing the socket sends an RST instead of a FIN."""


class Mode(enum.Enum):
    """What the proxy does with the bytes it receives; set by the control methods."""

    PASS = "pass-through"
    HOLD = "hold"
    DROP = "drop"


class _Close(enum.Enum):
    """A side's end of stream, queued behind its bytes so that it arrives after them."""

    EOF = "eof"  # the side half-closed: half-close the other side
    RESET = "reset"  # the side was reset, failed or never connected: reset the other side


class _End(asyncio.Protocol):
    """One socket of a link: the client's accepted one, or the link's own to the upstream."""

    transport: asyncio.Transport | None
    outgoing: _Pipe  # bytes read from this end; set by the link
    incoming: _Pipe  # bytes written to this end; set by the link

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.transport = None
        self.gone = False  # closed, or its connect failed: nothing more to or from it
        self.read_eof = False  # it half-closed: nothing more will come from it
        self.write_shut = False  # the other end's EOF was delivered to it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.link.made(self)

    def data_received(self, data: bytes) -> None:
        self.outgoing.put(data)

    def eof_received(self) -> bool:
        self.read_eof = True
        self.outgoing.put(_Close.EOF)
        self._close_if_done()
        return True  # keep the socket open: bytes may still have to go to it

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.lost(self)

    def pause_writing(self) -> None:
        """Backpressure: its send buffer is full, so stop reading what would go into it."""
        source = self.incoming.source.transport
        if source is not None:
            source.pause_reading()

    def resume_writing(self) -> None:
        source = self.incoming.source.transport
        if source is not None:
            source.resume_reading()

    def shut_write(self) -> None:
        """Deliver the other end's FIN."""
        assert self.transport is not None
        self.write_shut = True
        try:
            self.transport.write_eof()
        except OSError:
            # The peer reset while this end was not reading (it had sent its own FIN, so
            # asyncio stopped watching it): the end is gone, as a reset would leave it.
            self.abort()
            return
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self.read_eof and self.write_shut and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close with an RST, so the peer sees a reset rather than an orderly end."""
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError):  # already closed: abort() below is then a no-op
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()


class _Pipe:
    """One direction of a link: what `source` sent, queued in arrival order, each item with the
    loop time it may be delivered. Hold, delay and heal share this one queue and delivery only
    ever takes from its head, so a stream is never reordered."""

    def __init__(self, link: _Link, source: _End, sink: _End) -> None:
        self.link = link
        self.source = source
        self.sink = sink
        self.queue: deque[tuple[float, bytes | _Close]] = deque()
        self.last_due = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def put(self, item: bytes | _Close) -> None:
        proxy = self.link.proxy
        if self.sink.gone:
            return
        if isinstance(item, bytes):
            if proxy._mode is Mode.DROP:
                return
            if self.link.queued + len(item) > proxy.held_bytes_max:
                self.link.reset()
                return
            self.link.count_queued(len(item))
        self.last_due = max(self.link.loop.time() + proxy._sample_delay(), self.last_due)
        self.queue.append((self.last_due, item))
        self.pump()

    def pump(self) -> None:
        """Deliver every item that is due, if the mode and the sink allow; wake up for the next."""
        self.cancel_timer()
        proxy = self.link.proxy
        transport = self.sink.transport
        if proxy._mode is not Mode.PASS or transport is None or transport.is_closing():
            return
        queue = self.queue
        now = self.link.loop.time()
        while queue and queue[0][0] <= now:
            item = queue.popleft()[1]
            if item is _Close.RESET:
                self.sink.abort()
                return
            if item is _Close.EOF:
                self.sink.shut_write()
                continue
            assert isinstance(item, bytes)
            # Counted first: the peer may read these counters as soon as it has the bytes.
            self.link.count_queued(-len(item))
            proxy.bytes_forwarded += len(item)
            transport.write(item)
        if queue:
            self.timer = self.link.loop.call_at(queue[0][0], self.pump)

    def discard(self, *, keep_close: bool) -> None:
        """Lose the queued bytes; keep the ends of stream if asked (see the module docstring)."""
        self.cancel_timer()
        kept: deque[tuple[float, bytes | _Close]] = deque()
        for entry in self.queue:
            item = entry[1]
            if isinstance(item, bytes):
                self.link.count_queued(-len(item))
            elif keep_close:
                kept.append(entry)
        self.queue = kept

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Link:
    """One client connection and its upstream connection: two ends, a pipe each way."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.loop = asyncio.get_running_loop()  # the proxy's: links are made on it only
        self.client = _End(self)
        self.upstream = _End(self)
        self.up = _Pipe(self, self.client, self.upstream)
        self.down = _Pipe(self, self.upstream, self.client)
        self.client.outgoing = self.upstream.incoming = self.up
        self.upstream.outgoing = self.client.incoming = self.down
        self.queued = 0  # bytes held or delayed in both pipes
        self.connecting: asyncio.Task[Any] | None = None
        self.finished: asyncio.Future[None] = self.loop.create_future()

    def count_queued(self, delta: int) -> None:
        self.queued += delta
        self.proxy.bytes_held += delta

    def made(self, end: _End) -> None:
        proxy = self.proxy
        if end is self.upstream:
            if self.client.gone:  # the client went away while this connect was under way
                end.abort()
            else:
                self.up.pump()
            return
        serving = proxy._server is not None and proxy._server.is_serving()  # not yet stopping
        if proxy._refusing or not serving or len(proxy._links) >= proxy.connections_max:
            proxy.connections_refused += 1
            end.abort()
            return
        proxy._links.add(self)
        proxy.connections_accepted += 1
        if proxy._mode is not Mode.HOLD:
            self.connect()

    def connect(self) -> None:
        """Open the upstream connection, unless it is open, under way, or nobody needs it."""
        if self.connecting is not None or self.client.gone:
            return
        self.connecting = self.loop.create_task(self._open_upstream())
        self.connecting.add_done_callback(self._upstream_opened)

    async def _open_upstream(self) -> None:
        proxy = self.proxy
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await self.loop.create_connection(
                lambda: self.upstream, proxy.upstream_host, proxy.upstream_port
            )

    def _upstream_opened(self, task: asyncio.Task[Any]) -> None:
        if self.upstream.transport is None:  # failed or cancelled before it had a socket
            if not task.cancelled():
                task.exception()  # retrieved: the client learns of it as a reset
            self.lost(self.upstream)

    def lost(self, end: _End) -> None:
        """`end` is closed: nothing reaches it any more, and the other end gets its FIN (queued
        already) or, if it vanished without one, an RST, after the bytes it sent."""
        if end.gone:
            return
        end.gone = True
        end.incoming.discard(keep_close=False)
        other = end.incoming.source
        if other.transport is not None:
            other.transport.resume_reading()
        if not end.read_eof:
            end.outgoing.put(_Close.RESET)
        if end is self.client and self.upstream.transport is None:
            if self.connecting is not None:
                self.connecting.cancel()  # its done callback makes the upstream gone
            else:
                self.lost(self.upstream)  # never connected: it never will be
        if self.client.gone and self.upstream.gone and not self.finished.done():
            self.up.cancel_timer()
            self.down.cancel_timer()
            self.proxy._links.discard(self)
            self.finished.set_result(None)

    def reset(self) -> None:
        """Abort both ends with an RST, or cancel the upstream connect if it is under way."""
        self.client.abort()
        self.upstream.abort()
        if self.connecting is not None:
            self.connecting.cancel()


class FaultProxy:
    """A TCP proxy to one upstream whose faults a test switches at will; see the module docstring.

    Control methods are thread-safe, callable from any thread or event loop (except the proxy's
    own), and return once the change is in force for every connection: a byte arriving after
    they return is treated by the new rule. They raise `TimeoutError` if the proxy's loop does
    not answer within `CONTROL_TIMEOUT_S`, and `RuntimeError` if it is not running. The counters
    are written by the proxy's thread and may be read from any thread."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        held_bytes_max: int = HELD_BYTES_MAX,
        connections_max: int = CONNECTIONS_MAX,
    ) -> None:
        if held_bytes_max <= 0 or connections_max <= 0:
            raise ValueError("held_bytes_max and connections_max must be positive")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.held_bytes_max = held_bytes_max
        """Bytes one connection may have held or delayed (both directions); beyond, it is reset."""
        self.connections_max = connections_max
        """Open connections; beyond, new ones are refused as by `refuse(True)`."""
        self.connections_accepted = 0
        self.connections_refused = 0
        self.bytes_forwarded = 0
        """Bytes written to either side."""
        self.bytes_held = 0
        """Bytes received and not yet forwarded: held by `hold` or waiting out a delay."""
        self._mode = Mode.PASS
        self._refusing = False
        self._links: set[_Link] = set()
        self._delay_s = 0.0
        self._jitter_s = 0.0
        self._random = random.Random()
        self._lock = threading.RLock()  # serializes control calls, start and stop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._port = 0

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def port(self) -> int:
        """The port it listens on (chosen by the system if `listen_port` was 0)."""
        if not self._port:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen_host, self.port)

    @property
    def connections_open(self) -> int:
        return len(self._links)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f":{self._port}" if self._port else "(not started)"
        upstream = f"{self.upstream_host}:{self.upstream_port}"
        return f"FaultProxy({where} -> {upstream}, {self.mode.value})"

    def start(self) -> FaultProxy:
        """Start the proxy's thread; returns once it listens."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"{self!r} is already started")
            loop = asyncio.SelectorEventLoop()  # plain asyncio, whatever the process's policy
            self._loop = loop
            self._thread = threading.Thread(
                target=self._run, args=(loop,), name="FaultProxy", daemon=True
            )
            self._thread.start()
            try:
                self._control(self._listen, "listening")
            except BaseException:
                self._end_thread()
                raise
            # Named by its port, so tests and stack dumps tell proxies apart.
            self._thread.name = (
                f"FaultProxy :{self._port} -> {self.upstream_host}:{self.upstream_port}"
            )
            return self

    def stop(self) -> None:
        """Close the listener and every connection (with an RST), then end the thread.
        Stopping a proxy that is not running does nothing."""
        with self._lock:
            if self._thread is None:
                return
            try:
                self._control(self._shutdown, "stop")
            finally:
                self._end_thread()

    def pass_through(self) -> None:
        """Forward bytes both ways, first whatever `hold` kept."""
        self._control(lambda: self._set_mode(Mode.PASS), "pass-through")

    heal = pass_through

    def hold(self) -> None:
        """Partition: keep bytes from either side, in order, until `heal`."""
        self._control(lambda: self._set_mode(Mode.HOLD), "hold")

    def drop(self) -> None:
        """Blackhole: discard bytes from either side, also those held or delayed now."""
        self._control(lambda: self._set_mode(Mode.DROP), "drop")

    def reset(self) -> None:
        """Abort every current connection, both sides, with an RST. The mode stays."""
        self._control(self._reset_all, "reset")

    def refuse(self, refusing: bool = True) -> None:
        """While on, reset each new connection as soon as it is accepted."""
        self._control(lambda: self._set_refusing(refusing), "refuse")

    def delay(self, ms: float, jitter_ms: float = 0.0, seed: int | None = None) -> None:
        """Delay each chunk by ms ± uniform jitter_ms (at least 0) from when it arrives, but
        never past an earlier chunk of its connection and direction. Chunks already queued keep
        their time. `seed` makes the jitter repeatable."""
        if not (0 <= ms <= DELAY_MS_MAX and 0 <= jitter_ms <= DELAY_MS_MAX):
            raise ValueError(f"delay and jitter must be within 0..{DELAY_MS_MAX:g} ms")
        self._control(lambda: self._set_delay(ms / 1000, jitter_ms / 1000, seed), "delay")

    def _sample_delay(self) -> float:
        """The delay, in seconds, for a chunk arriving now; on the proxy's loop only."""
        if not self._jitter_s:
            return self._delay_s
        return max(0.0, self._delay_s + self._random.uniform(-self._jitter_s, self._jitter_s))

    def _control(self, operation: Callable[[], Coroutine[Any, Any, _T]], what: str) -> _T:
        """Run `operation` on the proxy's loop and wait, bounded, until it has finished."""
        with self._lock:
            loop = self._loop
            if loop is None or loop.is_closed():
                raise RuntimeError(f"{self!r} is not running")
            if threading.current_thread() is self._thread:
                raise RuntimeError("FaultProxy control methods would deadlock on its own loop")
            future = asyncio.run_coroutine_threadsafe(operation(), loop)
            try:
                return future.result(CONTROL_TIMEOUT_S)
            except TimeoutError:
                future.cancel()
                raise TimeoutError(
                    f"{self!r}: {what} not in force within {CONTROL_TIMEOUT_S:g} s "
                    "(is its thread stuck?)"
                ) from None

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _end_thread(self) -> None:
        thread, loop = self._thread, self._loop
        assert thread is not None and loop is not None
        self._thread = self._loop = self._server = None
        self._port = 0
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CONTROL_TIMEOUT_S)
        if thread.is_alive():
            raise TimeoutError(f"{thread.name}: thread did not end within {CONTROL_TIMEOUT_S:g} s")

    async def _listen(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Link(self).client, self.listen_host, self.listen_port
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        await self._reset_all()

    async def _reset_all(self) -> None:
        links = list(self._links)
        for link in links:
            link.reset()
        if links:
            await asyncio.wait([link.finished for link in links])

    async def _set_mode(self, mode: Mode) -> None:
        self._mode = mode
        for link in list(self._links):  # delivering a reset may end a link
            if mode is Mode.DROP:
                link.up.discard(keep_close=True)
                link.down.discard(keep_close=True)
            elif mode is Mode.PASS:
                link.up.pump()
                link.down.pump()
            if mode is not Mode.HOLD:
                link.connect()

    async def _set_refusing(self, refusing: bool) -> None:
        self._refusing = refusing

    async def _set_delay(self, delay_s: float, jitter_s: float, seed: int | None) -> None:
        self._delay_s = delay_s
        self._jitter_s = jitter_s
        if seed is not None:
            self._random.seed(seed)
