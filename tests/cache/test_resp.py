"""The pipelined Redis client against the real Redis (and a fake one for what Redis won't do).

Keys live under a random prefix per test and are deleted afterwards: other tests share this
Redis, so nothing here flushes data. redis-py is the independent witness for what was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis.asyncio as redis
import uvloop

from stockkeeper.cache.resp import (
    CacheReplyError,
    CacheUnavailable,
    Endpoint,
    RespClient,
    Script,
)

HOST = "127.0.0.1"
PORT = 6379
URL = f"redis://{HOST}:{PORT}/0"
OTHER_DB = 5
HMGET = Script("return redis.call('HMGET', KEYS[1], 'v', 'q')")


@pytest.fixture
def prefix() -> str:
    return f"sk-test-resp:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def admin(prefix: str) -> AsyncIterator[redis.Redis]:
    """A plain redis-py connection: checks what the client wrote, kills and pauses it."""
    witness = redis.Redis(host=HOST, port=PORT, protocol=2)
    yield witness
    for db in (0, OTHER_DB):
        await witness.execute_command("SELECT", db)
        keys = [key async for key in witness.scan_iter(match=f"{prefix}*")]
        if keys:
            await witness.delete(*keys)
    await witness.aclose()


@pytest.fixture
async def client(admin: redis.Redis) -> AsyncIterator[RespClient]:
    # Deadlines have their own tests; here a loaded CI machine must not turn into a failure.
    opened = RespClient.from_url(URL, timeout_ms=2000)
    yield opened
    await opened.close()


async def elapsed(awaitable: Awaitable[Any]) -> tuple[float, BaseException | None]:
    """How long it took to fail (or not), in seconds; a hang shows as TimeoutError."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(3):
            await awaitable
    except Exception as error:
        return time.perf_counter() - started, error
    return time.perf_counter() - started, None


async def within(awaitable: Awaitable[Any], seconds: float = 3) -> Any:
    """A call after a lost connection must not hang on a dead socket: bound it."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def kill(admin: redis.Redis, client_id: int) -> None:
    assert await admin.execute_command("CLIENT", "KILL", "ID", client_id) == 1


class FakeRedis:
    """A TCP or unix server that records each connection's commands and answers +OK, or never
    answers (a hung server whose kernel still accepts connections)."""

    def __init__(self, *, answer: bool) -> None:
        self.answer = answer
        self.connections: list[list[list[bytes]]] = []
        self.disconnected = asyncio.Event()  # the client closed a connection
        self._writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        commands: list[list[bytes]] = []
        self.connections.append(commands)
        self._writers.append(writer)
        parser = hiredis.Reader()
        with contextlib.suppress(ConnectionError):  # the client drops late connections
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    commands.append(command)
                    if self.answer:
                        writer.write(b"+OK\r\n")
        self.disconnected.set()

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


@pytest.fixture
async def fake_server() -> AsyncIterator[Callable[..., Awaitable[tuple[FakeRedis, str]]]]:
    servers: list[tuple[FakeRedis, asyncio.Server]] = []

    async def start(*, answer: bool, unix: Path | None = None) -> tuple[FakeRedis, str]:
        fake = FakeRedis(answer=answer)
        if unix is not None:
            server = await asyncio.start_unix_server(fake.serve, path=str(unix))
            url = f"unix://{unix}"
        else:
            server = await asyncio.start_server(fake.serve, HOST, 0)
            url = f"redis://{HOST}:{server.sockets[0].getsockname()[1]}/0"
        servers.append((fake, server))
        return fake, url

    yield start
    for fake, server in servers:
        fake.close()
        server.close()
        await server.wait_closed()


# --- commands and replies ---------------------------------------------------------------------


async def test_strings_and_hashes_round_trip_undecoded(
    client: RespClient, admin: redis.Redis, prefix: str
) -> None:
    assert await client.call("SET", f"{prefix}s", "caf\u00e9") == b"OK"
    assert await client.call("GET", f"{prefix}s") == "caf\u00e9".encode()
    assert await admin.get(f"{prefix}s") == "caf\u00e9".encode()
    assert await client.call("GET", f"{prefix}missing") is None
    assert await client.call("SET", f"{prefix}n", 41) == b"OK"
    assert await client.call("INCR", f"{prefix}n") == 42
    assert await client.call("SET", f"{prefix}f", 2.5) == b"OK"
    assert await client.call("INCRBYFLOAT", f"{prefix}f", 0.25) == b"2.75"
    assert await client.call("SET", f"{prefix}b", b"\x00\xff\r\n") == b"OK"
    assert await admin.get(f"{prefix}b") == b"\x00\xff\r\n"

    assert await client.call("HSET", f"{prefix}h", "v", 7, "q", b"x") == 2
    assert await client.call("HGETALL", f"{prefix}h") == [b"v", b"7", b"q", b"x"]
    assert await admin.hgetall(f"{prefix}h") == {b"v": b"7", b"q": b"x"}


async def test_evalsha_runs_the_script_with_keys_and_args(
    client: RespClient, admin: redis.Redis, prefix: str
) -> None:
    await admin.hset(f"{prefix}h", mapping={"v": "3", "q": "10"})
    assert await client.evalsha(HMGET, [f"{prefix}h"]) == [b"3", b"10"]
    assert await client.evalsha(HMGET, [f"{prefix}missing"]) == [None, None]
    echo = Script("return {KEYS[1], ARGV[1], ARGV[2], #ARGV}")
    assert await client.evalsha(echo, [f"{prefix}k"], ["a", 5]) == [
        f"{prefix}k".encode(),
        b"a",
        b"5",
        2,
    ]
    assert echo.sha == await admin.script_load(echo.source)


async def test_noscript_after_script_flush_loads_and_retries(
    client: RespClient, admin: redis.Redis, prefix: str
) -> None:
    script = Script(f"return redis.call('INCR', KEYS[1]) -- {prefix}")
    await admin.script_flush()
    assert await admin.script_exists(script.sha) == [False]
    assert await client.evalsha(script, [f"{prefix}n"]) == 1
    assert await admin.script_exists(script.sha) == [True]
    assert await client.evalsha(script, [f"{prefix}n"]) == 2
    await admin.script_flush()
    assert await client.evalsha(script, [f"{prefix}n"]) == 3
    assert await admin.get(f"{prefix}n") == b"3"  # each call ran the script exactly once


async def test_pipeline_replies_in_order_in_one_write(client: RespClient, prefix: str) -> None:
    replies = await client.pipeline(
        [("SET", f"{prefix}a", 1), ("INCR", f"{prefix}a"), ("GET", f"{prefix}a"), ("PING",)]
    )
    assert replies == [b"OK", 2, b"2", b"PONG"]
    assert await client.pipeline([]) == []


async def test_two_thousand_concurrent_callers_each_get_their_own_reply(
    client: RespClient, admin: redis.Redis, prefix: str
) -> None:
    async def echo(i: int) -> bytes:
        # Some replies are large, so they arrive split across reads.
        payload = f"{i}:".encode() * (2000 if i % 97 == 0 else 1 + i % 5)
        assert await client.call("ECHO", payload) == payload
        return payload

    async def incr(i: int) -> None:
        assert await client.call("INCRBY", f"{prefix}{i}", i + 1) == i + 1

    async def batch(i: int) -> None:
        assert await client.pipeline([("ECHO", i), ("INCRBY", f"{prefix}b{i}", i)]) == [
            str(i).encode(),
            i,
        ]

    connection_ids = await asyncio.gather(*(client.call("CLIENT", "ID") for _ in range(3)))
    async with asyncio.timeout(10):
        await asyncio.gather(
            *(echo(i) for i in range(1000)),
            *(incr(i) for i in range(800)),
            *(batch(i) for i in range(200)),
        )
    connection_ids.append(await client.call("CLIENT", "ID"))
    assert len(set(connection_ids)) == 1  # all of it went over one connection
    assert await admin.get(f"{prefix}799") == b"800"


async def test_a_cancelled_caller_does_not_shift_the_replies(client: RespClient) -> None:
    assert await client.call("PING") == b"PONG"  # connected, so the next call is sent at once
    abandoned = asyncio.ensure_future(client.call("ECHO", "abandoned"))
    await asyncio.sleep(0)
    abandoned.cancel()
    assert await client.call("ECHO", "mine") == b"mine"
    assert abandoned.cancelled()


# --- error replies ------------------------------------------------------------------------------


async def test_error_replies_raise_and_the_connection_goes_on(
    client: RespClient, admin: redis.Redis, prefix: str
) -> None:
    await admin.set(f"{prefix}s", "text")
    with pytest.raises(CacheReplyError, match="not an integer"):
        await client.call("INCR", f"{prefix}s")
    with pytest.raises(CacheReplyError, match="WRONGTYPE"):
        await client.call("HGET", f"{prefix}s", "f")
    with pytest.raises(CacheReplyError, match="unknown command"):
        await client.call("NO-SUCH-COMMAND")
    with pytest.raises(CacheReplyError, match="boom"):
        await client.evalsha(Script("return redis.error_reply('boom')"))
    with pytest.raises(CacheReplyError, match="not an integer"):
        await client.pipeline([("SET", f"{prefix}a", 1), ("INCR", f"{prefix}s"), ("PING",)])
    assert await admin.get(f"{prefix}a") == b"1"  # the rest of the pipeline ran
    nested = await client.call("EVAL", "return {1, redis.error_reply('inner')}", 0)
    assert nested[0] == 1 and isinstance(nested[1], CacheReplyError)
    assert await client.call("ECHO", "still in step") == b"still in step"


# --- a limit on everything ------------------------------------------------------------------


async def test_a_hung_server_costs_one_bounded_timeout_then_the_client_reconnects(
    admin: redis.Redis,
) -> None:
    client = RespClient.from_url(URL, timeout_ms=50)
    try:
        before = await client.call("CLIENT", "ID")
        paused_at = time.perf_counter()
        await admin.execute_command("CLIENT", "PAUSE", 500, "ALL")
        started = time.perf_counter()
        outcomes = await within(
            asyncio.gather(
                *(client.call("GET", "whatever") for _ in range(20)), return_exceptions=True
            )
        )
        took = time.perf_counter() - started
        assert all(isinstance(outcome, CacheUnavailable) for outcome in outcomes), outcomes
        # One timeout for all twenty, not twenty in a row; the slack is for a loaded machine.
        assert 0.049 <= took <= 0.2
        await asyncio.sleep(max(0.0, paused_at + 0.6 - time.perf_counter()))
        after = await within(client.call("CLIENT", "ID"))
        assert after != before
        assert await client.call("ECHO", "back") == b"back"
    finally:
        await client.close()


async def test_a_busy_event_loop_is_not_mistaken_for_a_hung_redis() -> None:
    """The replies arrived while this process's loop was blocked for three timeouts (a server
    under CPU load): the calls succeed and the connection stays."""
    client = RespClient.from_url(URL, timeout_ms=50)
    try:
        before = await client.call("CLIENT", "ID")
        calls = [asyncio.ensure_future(client.call("ECHO", f"m{n}")) for n in range(20)]
        await asyncio.sleep(0)  # sent
        time.sleep(0.15)  # noqa: ASYNC251 (the point: the loop is stuck; Redis answers meanwhile)
        replies = await within(asyncio.gather(*calls))
        assert replies == [f"m{n}".encode() for n in range(20)]
        assert await client.call("CLIENT", "ID") == before
    finally:
        await client.close()


async def test_a_silent_server_fails_every_pending_call_at_the_deadline(
    fake_server: Callable[..., Awaitable[tuple[FakeRedis, str]]],
) -> None:
    fake, url = await fake_server(answer=False)
    client = RespClient.from_url(url, timeout_ms=60)
    try:
        calls = [asyncio.ensure_future(elapsed(client.call("GET", f"k{i}"))) for i in range(50)]
        outcomes = await asyncio.gather(*calls)
        for took, error in outcomes:
            assert isinstance(error, CacheUnavailable) and "60 ms" in str(error)
            assert 0.059 <= took <= 0.2
        assert len(fake.connections) == 1  # one connect attempt shared by all fifty callers
        assert len(fake.connections[0]) == 50
        took, error = await elapsed(client.call("GET", "again"))
        assert isinstance(error, CacheUnavailable) and took <= 0.2
        assert len(fake.connections) == 2  # the late connection was dropped, a new one made
    finally:
        await client.close()


async def test_a_handshake_that_hangs_fails_within_the_connect_timeout(
    fake_server: Callable[..., Awaitable[tuple[FakeRedis, str]]],
) -> None:
    _, url = await fake_server(answer=False)
    client = RespClient.from_url(
        url.replace("redis://", "redis://:secret@"), timeout_ms=5000, connect_timeout_ms=80
    )
    try:
        took, error = await elapsed(client.call("PING"))
        assert isinstance(error, CacheUnavailable)
        assert 0.079 <= took <= 0.25
    finally:
        await client.close()


async def test_a_connection_killed_server_side_fails_its_calls_then_reconnects(
    admin: redis.Redis, prefix: str
) -> None:
    client = RespClient.from_url(URL, timeout_ms=5000)
    try:
        first = await client.call("CLIENT", "ID")
        blocked = asyncio.ensure_future(elapsed(client.call("BLPOP", f"{prefix}never", 3)))
        queued = asyncio.ensure_future(elapsed(client.call("ECHO", "behind it")))
        await asyncio.sleep(0.05)
        await kill(admin, first)
        for outcome in (blocked, queued):
            took, error = await outcome
            assert isinstance(error, CacheUnavailable) and took < 1

        second = await within(client.call("CLIENT", "ID"))
        assert second != first
        await kill(admin, second)  # now while idle: noticed before the next call is sent
        await asyncio.sleep(0.05)
        third = await within(client.call("CLIENT", "ID"))
        assert third not in (first, second)
    finally:
        await client.close()


async def test_unreachable_redis_fails_fast_on_every_call() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]  # closed again before the client dials it
    client = RespClient.from_url(f"redis://{HOST}:{port}/0", connect_timeout_ms=2000)
    try:
        for _ in range(2):
            took, error = await elapsed(client.call("PING"))
            assert isinstance(error, CacheUnavailable) and str(port) in str(error)
            assert took < 0.5
    finally:
        await client.close()


async def test_beyond_pending_max_calls_fail_fast_and_the_connection_stays(
    admin: redis.Redis, prefix: str
) -> None:
    client = RespClient.from_url(URL, timeout_ms=5000, pending_max=5)
    try:
        connection_id = await client.call("CLIENT", "ID")
        # The first BLPOP blocks the connection, so all five stay in flight.
        blocked = [client.call("BLPOP", f"{prefix}{i}", 2) for i in range(5)]
        waiting = asyncio.ensure_future(asyncio.gather(*blocked))
        await asyncio.sleep(0.02)
        took, error = await elapsed(client.call("PING"))
        assert isinstance(error, CacheUnavailable) and took < 0.01
        took, error = await elapsed(client.pipeline([("PING",)]))
        assert isinstance(error, CacheUnavailable) and took < 0.01

        async with admin.pipeline(transaction=False) as push:
            for i in range(5):
                push.rpush(f"{prefix}{i}", f"v{i}")
            await push.execute()
        assert await waiting == [[f"{prefix}{i}".encode(), f"v{i}".encode()] for i in range(5)]
        assert await client.call("CLIENT", "ID") == connection_id
    finally:
        await client.close()


async def test_close_fails_pending_calls_and_refuses_new_ones(prefix: str) -> None:
    client = RespClient.from_url(URL, timeout_ms=5000)
    await client.call("PING")
    blocked = asyncio.ensure_future(elapsed(client.call("BLPOP", f"{prefix}never", 3)))
    await asyncio.sleep(0.02)
    await client.close()
    took, error = await blocked
    assert isinstance(error, CacheUnavailable) and took < 0.5
    with pytest.raises(CacheUnavailable, match="closed"):
        await client.call("PING")


async def test_close_during_a_connect_fails_its_waiters_and_drops_the_socket(
    fake_server: Callable[..., Awaitable[tuple[FakeRedis, str]]],
) -> None:
    fake, url = await fake_server(answer=False)
    client = RespClient.from_url(
        url.replace("redis://", "redis://:pw@"), timeout_ms=5000, connect_timeout_ms=5000
    )
    waiting = [asyncio.ensure_future(elapsed(client.call("PING"))) for _ in range(3)]
    await asyncio.sleep(0.05)  # connected; AUTH is never answered
    assert fake.connections == [[[b"AUTH", b"pw"]]]
    await client.close()
    for took, error in await asyncio.gather(*waiting):
        assert isinstance(error, CacheUnavailable) and "closed" in str(error) and took < 1
    await within(fake.disconnected.wait(), 1)


# --- URLs and the handshake --------------------------------------------------------------------


def test_urls_parse_into_endpoints() -> None:
    assert Endpoint.parse("redis://:p%40ss@cache.internal:6380/3") == Endpoint(
        host="cache.internal", port=6380, path=None, db=3, username=None, password="p@ss"
    )
    assert Endpoint.parse("redis://app:pw@cache") == Endpoint(
        host="cache", port=6379, path=None, db=0, username="app", password="pw"
    )
    assert Endpoint.parse("unix:///run/redis.sock?db=2") == Endpoint(
        host=None, port=0, path="/run/redis.sock", db=2, username=None, password=None
    )
    for bad in ("memory://", "http://cache:6379", "unix://"):
        with pytest.raises(ValueError, match="unsupported Redis URL"):
            Endpoint.parse(bad)


async def test_the_url_database_is_selected(admin: redis.Redis, prefix: str) -> None:
    client = RespClient.from_url(f"redis://{HOST}:{PORT}/{OTHER_DB}")
    try:
        await client.call("SET", f"{prefix}db", "here")
    finally:
        await client.close()
    assert await admin.get(f"{prefix}db") is None
    await admin.execute_command("SELECT", OTHER_DB)
    assert await admin.get(f"{prefix}db") == b"here"


async def test_a_refused_password_is_unavailable_not_a_reply_error() -> None:
    client = RespClient.from_url(f"redis://:wrong@{HOST}:{PORT}/0")
    try:
        with pytest.raises(CacheUnavailable, match="AUTH"):
            await client.call("PING")
    finally:
        await client.close()


async def test_unix_socket_url_sends_auth_and_select_first(
    fake_server: Callable[..., Awaitable[tuple[FakeRedis, str]]], tmp_path: Path
) -> None:
    fake, url = await fake_server(answer=True, unix=tmp_path / "redis.sock")
    client = RespClient.from_url(f"{url}?db=4&password=pw")
    try:
        assert await client.call("SET", "k", "v") == b"OK"
    finally:
        await client.close()
    assert fake.connections == [[[b"AUTH", b"pw"], [b"SELECT", b"4"], [b"SET", b"k", b"v"]]]


# --- the server's event loop ------------------------------------------------------------------


def test_works_on_uvloop(prefix: str) -> None:
    async def scenario() -> None:
        client = RespClient.from_url(URL, timeout_ms=1000)
        witness = redis.Redis(host=HOST, port=PORT, protocol=2)
        try:
            replies = await asyncio.gather(*(client.call("ECHO", i) for i in range(500)))
            assert replies == [str(i).encode() for i in range(500)]
            await kill(witness, await client.call("CLIENT", "ID"))
            await asyncio.sleep(0.05)
            assert await within(client.evalsha(HMGET, [f"{prefix}h"])) == [None, None]
        finally:
            await client.close()
            await witness.aclose()

    uvloop.run(scenario())


@pytest.mark.parametrize("loss", ["reset", "closing"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_connection_lost_while_connecting_fails_its_callers_at_once(loop: str, loss: str) -> None:
    """G2, G5: Redis resets a fresh connection (at `maxclients`, or restarting) before the
    callers waiting on the connect resume. A command queued on it then would wait forever: its
    pending calls were already failed and its watchdog stopped (asyncio drops the write; uvloop
    raises RuntimeError, which is no cache error). It must fail at once with CacheUnavailable.
    `reset`: the loss has been handled; `closing`: the transport is closed, the loss not yet
    handled."""

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async def scenario() -> None:
        server = await asyncio.start_server(reset, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        client = RespClient.from_url(f"redis://{HOST}:{port}/0", timeout_ms=100)
        real_open = client._open

        async def open_then_lose() -> Any:
            connection = await real_open()
            if loss == "reset":
                await within(connection.closed, 1)
            else:
                connection._transport.close()
            return connection

        client._open = open_then_lose  # type: ignore[method-assign]
        try:
            for command in (
                lambda: client.call("PING"),
                lambda: client.pipeline([("PING",), ("PING",)]),
            ):
                took, error = await elapsed(command())
                assert isinstance(error, CacheUnavailable), error
                assert took < 1, took
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    (uvloop.run if loop == "uvloop" else asyncio.run)(scenario())
