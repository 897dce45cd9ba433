"""The fault proxy against the real Redis and the real PostgreSQL.

Raw connections (one write per command, replies parsed by hiredis) show exactly which bytes
arrive and when; the project's own Redis client and asyncpg show what a server process sees.
Timing asserts are lower bounds only: the machine is noisy, so nothing here says "fast enough".
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import hiredis
import pytest

from stockkeeper.cache.resp import CacheUnavailable, RespClient
from stockkeeper.faults.proxy import FaultProxy, Mode
from tests.conftest import POSTGRES_URL

REDIS_URL = os.environ.get("STOCKKEEPER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS = urlsplit(REDIS_URL)
POSTGRES = urlsplit(POSTGRES_URL)
SILENCE_S = 0.3
"""How long "no reply" is watched for: long against a loopback round trip, short for the suite."""
PATIENCE_S = 5.0
"""The most any expected event may take before the test fails rather than hangs."""
_MORE = object()


def _pack(*args: str | bytes) -> bytes:
    parts = [arg.encode() if isinstance(arg, str) else arg for arg in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class Raw:
    """A Redis connection whose every write and every reply the test controls."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = hiredis.Reader(notEnoughData=_MORE)

    @classmethod
    async def open(cls, proxy: FaultProxy) -> Raw:
        return cls(*await asyncio.open_connection(*proxy.address))

    async def send(self, *args: str | bytes) -> None:
        self.writer.write(_pack(*args))
        await self.writer.drain()

    async def reply(self) -> Any:
        while (reply := self.parser.gets()) is _MORE:
            data = await asyncio.wait_for(self.reader.read(65536), PATIENCE_S)
            assert data, "connection closed while a reply was awaited"
            self.parser.feed(data)
        return reply

    async def silent(self) -> None:
        """Nothing arrives, and the connection stays open, for SILENCE_S."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), SILENCE_S)
        except TimeoutError:
            return
        raise AssertionError(f"expected silence, got {data!r}")

    async def closed(self) -> None:
        """The proxy closed it: EOF or a reset."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), PATIENCE_S)
        except ConnectionResetError:
            return
        assert data == b"", f"expected the connection closed, got {data!r}"

    def close(self) -> None:
        self.writer.transport.abort()


async def refused(proxy: FaultProxy) -> None:
    """A new connection is reset at once: while connecting (the RST can beat the handshake's
    last step on loopback) or right after."""
    try:
        raw = await Raw.open(proxy)
    except ConnectionResetError:
        return
    try:
        await raw.closed()
    finally:
        raw.close()


async def eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def via(url: str, proxy: FaultProxy) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{userinfo}{at}{proxy.listen_host}:{proxy.port}").geturl()


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    assert REDIS.hostname and REDIS.port
    with FaultProxy(REDIS.hostname, REDIS.port) as started:
        yield started


@pytest.fixture
def pg_proxy() -> Iterator[FaultProxy]:
    assert POSTGRES.hostname and POSTGRES.port
    with FaultProxy(POSTGRES.hostname, POSTGRES.port) as started:
        yield started


def client(proxy: FaultProxy, timeout_ms: float = 2000) -> RespClient:
    return RespClient.from_url(via(REDIS_URL, proxy), timeout_ms=timeout_ms)


async def test_pass_through_redis_and_counters(proxy: FaultProxy) -> None:
    redis = client(proxy)
    try:
        assert await redis.call("PING") == b"PONG"
        assert await redis.call("ECHO", "x" * 100_000) == b"x" * 100_000
        assert proxy.connections_accepted == 1
        assert proxy.connections_open == 1
        assert proxy.bytes_forwarded > 200_000  # the echo went both ways
        assert proxy.mode is Mode.PASS
    finally:
        await redis.close()
    await eventually(lambda: proxy.connections_open == 0)
    assert proxy.bytes_held == 0


async def test_pass_through_postgres(pg_proxy: FaultProxy) -> None:
    conn = await asyncpg.connect(via(POSTGRES_URL, pg_proxy))
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    await eventually(lambda: pg_proxy.connections_open == 0)


async def test_hold_makes_the_client_time_out_while_redis_answers_directly(
    proxy: FaultProxy,
) -> None:
    redis = client(proxy, timeout_ms=100)
    direct = RespClient.from_url(REDIS_URL, timeout_ms=2000)
    try:
        assert await redis.call("PING") == b"PONG"
        proxy.hold()
        with pytest.raises(CacheUnavailable):
            await redis.call("PING")
        assert await direct.call("PING") == b"PONG"
    finally:
        await redis.close()
        await direct.close()


async def test_hold_delivers_on_heal_on_the_same_connection(proxy: FaultProxy) -> None:
    raw = await Raw.open(proxy)
    try:
        await raw.send("ECHO", "before")
        assert await raw.reply() == b"before"
        proxy.hold()
        await raw.send("ECHO", "held")
        await raw.silent()
        assert proxy.bytes_held > 0
        proxy.heal()
        assert await raw.reply() == b"held"
        await raw.send("ECHO", "after")
        assert await raw.reply() == b"after"
        assert proxy.connections_accepted == 1
        assert proxy.bytes_held == 0
    finally:
        raw.close()


async def test_a_connection_made_during_hold_completes_after_heal(proxy: FaultProxy) -> None:
    proxy.hold()
    raw = await Raw.open(proxy)
    try:
        await raw.send("PING")
        await raw.silent()
        await eventually(lambda: proxy.connections_open == 1)
        proxy.heal()
        assert await raw.reply() == b"PONG"
    finally:
        raw.close()


async def test_hold_then_heal_keeps_order_in_both_directions(proxy: FaultProxy) -> None:
    """Replies held on the way back and requests held on the way out come out in order."""
    raw = await Raw.open(proxy)
    try:
        proxy.delay(250)  # the first requests are still on their way out when hold starts
        for i in range(5):
            await raw.send("ECHO", str(i))
        proxy.hold()
        for i in range(5, 10):
            await raw.send("ECHO", str(i))
        proxy.delay(0)
        await raw.silent()
        proxy.heal()
        assert [await raw.reply() for _ in range(10)] == [str(i).encode() for i in range(10)]
    finally:
        raw.close()


async def test_drop_loses_bytes_and_a_new_connection_works_after_heal(proxy: FaultProxy) -> None:
    redis = client(proxy, timeout_ms=100)
    raw = await Raw.open(proxy)
    try:
        assert await redis.call("PING") == b"PONG"
        proxy.drop()
        with pytest.raises(CacheUnavailable):
            await redis.call("PING")
        await raw.send("ECHO", "lost")
        await raw.silent()
        assert proxy.bytes_held == 0
        proxy.heal()
        await raw.send("ECHO", "kept")
        assert await raw.reply() == b"kept"  # "lost" never reached Redis
        assert await redis.call("PING") == b"PONG"  # on a new connection: the old one timed out
        assert proxy.connections_accepted == 3
    finally:
        raw.close()
        await redis.close()


async def test_drop_discards_what_hold_kept(proxy: FaultProxy) -> None:
    raw = await Raw.open(proxy)
    try:
        proxy.hold()
        await raw.send("ECHO", "lost")
        await eventually(lambda: proxy.bytes_held > 0)
        proxy.drop()
        assert proxy.bytes_held == 0
        proxy.heal()
        await raw.send("ECHO", "kept")
        assert await raw.reply() == b"kept"
    finally:
        raw.close()


async def test_reset_aborts_open_connections_and_keeps_the_mode(proxy: FaultProxy) -> None:
    raw = await Raw.open(proxy)
    redis = client(proxy)
    try:
        assert await redis.call("PING") == b"PONG"
        await raw.send("PING")
        assert await raw.reply() == b"PONG"
        proxy.hold()
        proxy.reset()
        assert proxy.connections_open == 0
        await raw.closed()
        held = await Raw.open(proxy)
        try:
            await held.send("PING")
            await held.silent()  # still holding
            proxy.heal()
            assert await held.reply() == b"PONG"
        finally:
            held.close()
        assert await redis.call("PING") == b"PONG"  # it reconnected
    finally:
        raw.close()
        await redis.close()


async def test_refuse_closes_new_connections_at_once(proxy: FaultProxy) -> None:
    open_before = await Raw.open(proxy)
    try:
        await eventually(lambda: proxy.connections_open == 1)  # accepted, not just connected
        proxy.refuse(True)
        await refused(proxy)
        redis = client(proxy)
        try:
            with pytest.raises(CacheUnavailable):
                await redis.call("PING")
            proxy.refuse(False)
            assert await redis.call("PING") == b"PONG"
        finally:
            await redis.close()
        assert proxy.connections_refused >= 2
        await open_before.send("PING")  # refusing spares open connections
        assert await open_before.reply() == b"PONG"
    finally:
        open_before.close()


async def test_delay_applies_both_ways(proxy: FaultProxy) -> None:
    redis = client(proxy)
    try:
        assert await redis.call("PING") == b"PONG"  # connected before the delay
        proxy.delay(50)
        started = time.monotonic()
        assert await redis.call("PING") == b"PONG"
        assert time.monotonic() - started >= 0.099
        proxy.delay(0)
        assert await redis.call("PING") == b"PONG"
    finally:
        await redis.close()


async def test_jitter_never_reorders_one_connection(proxy: FaultProxy) -> None:
    proxy.delay(3, jitter_ms=3, seed=7)
    raw = await Raw.open(proxy)
    try:
        for i in range(200):
            await raw.send("ECHO", str(i))
            await asyncio.sleep(0.001)  # separate chunks, each with its own jitter
        assert [await raw.reply() for _ in range(200)] == [str(i).encode() for i in range(200)]
    finally:
        raw.close()


async def test_connections_overtake_each_other_but_not_their_own_chunks(
    proxy: FaultProxy,
) -> None:
    slow = await Raw.open(proxy)
    fast = await Raw.open(proxy)
    try:
        proxy.delay(600)
        await slow.send("ECHO", "first")
        await eventually(lambda: proxy.bytes_held > 0)  # it is in the proxy, delayed
        proxy.delay(0)
        await slow.send("ECHO", "second")  # not delayed, but queued behind "first"
        await fast.send("ECHO", "other")
        assert await fast.reply() == b"other"
        assert proxy.bytes_held > 0  # "first" (and so "second") not delivered yet
        assert await slow.reply() == b"first"
        assert await slow.reply() == b"second"
    finally:
        slow.close()
        fast.close()


async def test_held_bytes_beyond_the_bound_reset_the_connection() -> None:
    assert REDIS.hostname and REDIS.port
    with FaultProxy(REDIS.hostname, REDIS.port, held_bytes_max=1000) as proxy:
        raw = await Raw.open(proxy)
        other = await Raw.open(proxy)
        try:
            proxy.hold()
            await raw.send("ECHO", "x" * 2000)
            await raw.closed()
            await eventually(lambda: proxy.connections_open == 1)
            assert proxy.bytes_held == 0
            proxy.heal()
            await other.send("PING")
            assert await other.reply() == b"PONG"
        finally:
            raw.close()
            other.close()


async def test_connections_beyond_the_bound_are_refused() -> None:
    assert REDIS.hostname and REDIS.port
    with FaultProxy(REDIS.hostname, REDIS.port, connections_max=2) as proxy:
        raws = [await Raw.open(proxy) for _ in range(2)]
        try:
            await eventually(lambda: proxy.connections_open == 2)
            await refused(proxy)
            for raw in raws:
                await raw.send("PING")
                assert await raw.reply() == b"PONG"
            assert proxy.connections_refused == 1
        finally:
            for raw in raws:
                raw.close()


async def test_unreachable_upstream_resets_the_client() -> None:
    with socket.socket() as unused:  # bound, never listening: connects are refused
        unused.bind(("127.0.0.1", 0))
        with FaultProxy("127.0.0.1", unused.getsockname()[1]) as proxy:
            await refused(proxy)
            await eventually(lambda: proxy.connections_open == 0)
            assert proxy.connections_accepted == 1


async def _pending(awaitable: Awaitable[Any]) -> asyncio.Future[Any]:
    """Start `awaitable` and check it does not finish within SILENCE_S."""
    future = asyncio.ensure_future(awaitable)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(future), SILENCE_S)
    return future


async def test_postgres_hold_hangs_queries_and_connects_until_heal(pg_proxy: FaultProxy) -> None:
    url = via(POSTGRES_URL, pg_proxy)
    conn = await asyncpg.connect(url)
    try:
        pg_proxy.hold()
        query = await _pending(conn.fetchval("SELECT 2"))
        connect = await _pending(asyncpg.connect(url))
        pg_proxy.heal()
        assert await asyncio.wait_for(query, PATIENCE_S) == 2
        late = await asyncio.wait_for(connect, PATIENCE_S)
        try:
            assert await late.fetchval("SELECT 3") == 3
        finally:
            await late.close()
    finally:
        await conn.close()


def test_runs_while_the_caller_blocks_and_obeys_any_thread(proxy: FaultProxy) -> None:
    """No event loop in this thread at all: the proxy runs on its own."""
    with socket.create_connection(proxy.address, timeout=PATIENCE_S) as sock:
        sock.sendall(_pack("PING"))
        assert sock.recv(100) == b"+PONG\r\n"
        other = threading.Thread(target=proxy.hold)
        other.start()
        other.join(PATIENCE_S)
        assert proxy.mode is Mode.HOLD
        sock.sendall(_pack("PING"))
        sock.settimeout(SILENCE_S)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        proxy.heal()
        sock.settimeout(PATIENCE_S)
        assert sock.recv(100) == b"+PONG\r\n"


def test_delay_rejects_out_of_range_values(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="delay"):
        proxy.delay(-1)
    with pytest.raises(ValueError, match="delay"):
        proxy.delay(10, jitter_ms=1e9)


async def test_stop_closes_everything_and_ends_the_thread() -> None:
    assert REDIS.hostname and REDIS.port
    proxy = FaultProxy(REDIS.hostname, REDIS.port).start()
    name = f"FaultProxy :{proxy.port} "
    assert any(thread.name.startswith(name) for thread in threading.enumerate())
    raw = await Raw.open(proxy)
    try:
        proxy.hold()
        await raw.send("PING")
        proxy.stop()
        await raw.closed()
    finally:
        raw.close()
    assert not any(thread.name.startswith(name) for thread in threading.enumerate())
    with pytest.raises(RuntimeError, match="not running"):
        proxy.heal()
    proxy.stop()  # again: nothing to do


def test_start_fails_when_the_port_is_taken(proxy: FaultProxy) -> None:
    other = FaultProxy(proxy.upstream_host, proxy.upstream_port, listen_port=proxy.port)
    with pytest.raises(OSError, match="in use"):
        other.start()
    with pytest.raises(RuntimeError, match="not running"):
        other.hold()


async def test_heal_delivers_a_held_end_to_a_client_that_closed_meanwhile() -> None:
    """A client gave up and closed; its upstream answers late and closes, while the proxy holds.
    At heal the client's socket is gone (it reset what it was sent): heal must still heal every
    connection, not raise ENOTCONN half-way (Redis closing connections its clients gave up on
    while it was frozen does this)."""

    async def late_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        await asyncio.sleep(0.2)
        writer.write(b"late reply")
        writer.close()

    server = await asyncio.start_server(late_upstream, "127.0.0.1", 0)
    with FaultProxy("127.0.0.1", server.sockets[0].getsockname()[1]) as proxy:
        gave_up = socket.create_connection(proxy.address)
        gave_up.sendall(b"request")
        gave_up.close()
        await asyncio.sleep(0.05)
        await asyncio.to_thread(proxy.hold)
        await asyncio.sleep(0.4)  # the late reply and the upstream's end are held
        await asyncio.to_thread(proxy.heal)
        assert proxy.mode is Mode.PASS
    server.close()
    await server.wait_closed()
