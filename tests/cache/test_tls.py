"""`rediss://`: the Redis client over TLS, against real redis-servers that have a TLS port only
(`--port 0`), so every command that gets an answer went over TLS. Under asyncio and uvloop
alike, since the server runs on uvloop and the tests on asyncio."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop

from stockkeeper.cache import check_cache_url
from stockkeeper.cache.resp import CacheUnavailable, Endpoint, RespClient, Script, TlsSettings
from tests.cache.conftest import REDIS_URL
from tests.distributed.redis_server import RedisServer, RedisTls, running_redis
from tests.tls import OTHER_HOST, Pki

LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}
PLAIN_TEXT_REDIS = "rediss" + REDIS_URL.removeprefix("redis")  # the shared, plain-text Redis
CONNECT_TIMEOUT_MS = 1500  # a handshake on a loaded machine takes up to tens of ms
PLAIN_TEXT_TIMEOUT_MS = 300  # all that a plain-text port makes a client wait
GET = Script("return redis.call('GET', KEYS[1])")


@pytest.fixture(scope="module")
def mutual_redis(pki: Pki) -> Iterator[RedisServer]:
    """Refuses a client without a certificate from pki's CA (`--tls-auth-clients yes`)."""
    tls = RedisTls(pki.server.cert, pki.server.key, pki.ca, auth_clients=True)
    with running_redis(tls) as server:
        yield server


def ping(url: str, loop: str = "asyncio", timeout_ms: float = CONNECT_TIMEOUT_MS) -> Any:
    """PING through a fresh client on `loop`; the reply, or the error it failed with."""

    async def scenario() -> Any:
        client = RespClient.from_url(url, timeout_ms=timeout_ms, connect_timeout_ms=timeout_ms)
        try:
            return await client.call("PING")
        except CacheUnavailable as error:
            return error
        finally:
            await client.close()

    return LOOPS[loop](scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_commands_pipelined_over_tls_and_a_reconnect(
    tls_redis: RedisServer, pki: Pki, loop: str
) -> None:
    """The client's whole hot path over TLS: 500 concurrent calls share the connection (one
    write per loop turn), a pipeline and a script run, and after the server drops the
    connection the next call makes a new TLS connection."""

    async def scenario() -> None:
        client = RespClient.from_url(f"{tls_redis.url}?ssl_ca_certs={pki.ca}", timeout_ms=2000)
        try:
            replies = await asyncio.gather(*(client.call("ECHO", n) for n in range(500)))
            assert replies == [str(n).encode() for n in range(500)]
            assert await client.pipeline([("SET", "sk-tls", "v"), ("GET", "sk-tls")]) == [
                b"OK",
                b"v",
            ]
            assert await client.evalsha(GET, ["sk-tls"]) == b"v"
            own_id = await client.call("CLIENT", "ID")
            killed = await client.call("CLIENT", "KILL", "ID", own_id, "SKIPME", "no")
            assert killed == 1
            await asyncio.sleep(0.05)
            assert await client.call("GET", "sk-tls") == b"v"
        finally:
            await client.close()

    LOOPS[loop](scenario())


def refused(url: str, loop: str, *reasons: str, timeout_ms: float = CONNECT_TIMEOUT_MS) -> None:
    error = ping(url, loop, timeout_ms)
    assert isinstance(error, CacheUnavailable), error
    assert any(reason in str(error) for reason in reasons), error


@pytest.mark.parametrize("loop", LOOPS)
def test_the_certificate_is_verified_by_default(tls_redis: RedisServer, loop: str) -> None:
    """No ssl_ca_certs: the system's CAs, which never signed the test CA's certificate."""
    refused(tls_redis.url, loop, "TLS: certificate verify failed")


@pytest.mark.parametrize("loop", LOOPS)
def test_a_wrong_ca_an_expired_certificate_or_another_host_is_refused(
    tls_redis: RedisServer, expired_redis: RedisServer, pki: Pki, loop: str
) -> None:
    # OpenSSL names the wrong CA one way or the other, as the server sends its CA or not.
    wrong_ca = f"{tls_redis.url}?ssl_ca_certs={pki.other_ca}"
    refused(wrong_ca, loop, "local issuer certificate", "self-signed certificate in certificate")
    refused(f"{expired_redis.url}?ssl_ca_certs={pki.ca}", loop, "certificate has expired")
    other_host = f"rediss://{OTHER_HOST}:{tls_redis.port}/0?ssl_ca_certs={pki.ca}"
    refused(other_host, loop, f"IP address mismatch, certificate is not valid for '{OTHER_HOST}'")


@pytest.mark.parametrize("loop", LOOPS)
def test_a_plain_text_port_behind_rediss_is_named_as_such(pki: Pki, loop: str) -> None:
    """Plain-text Redis reads the ClientHello as an unfinished inline command and never
    answers: the error must say why, and come after the connect timeout, not hang."""
    url, started = f"{PLAIN_TEXT_REDIS}?ssl_ca_certs={pki.ca}", time.monotonic()
    refused(url, loop, "no answer to the TLS handshake", timeout_ms=PLAIN_TEXT_TIMEOUT_MS)
    assert time.monotonic() - started < PLAIN_TEXT_TIMEOUT_MS / 1000 + 2


def test_ssl_cert_reqs_none_turns_verification_off(
    tls_redis: RedisServer, expired_redis: RedisServer
) -> None:
    """Unsafe, and documented so: an unknown CA and an expired certificate both pass."""
    assert ping(f"{tls_redis.url}?ssl_cert_reqs=none") == b"PONG"
    assert ping(f"{expired_redis.url}?ssl_cert_reqs=none") == b"PONG"


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_certificate_for_a_server_that_demands_one(
    mutual_redis: RedisServer, pki: Pki, loop: str
) -> None:
    url = f"{mutual_redis.url}?ssl_ca_certs={pki.ca}"
    refused(url, loop, "client certificate missing or refused")
    client = f"&ssl_certfile={pki.client.cert}&ssl_keyfile={pki.client.key}"
    assert ping(f"{url}{client}", loop) == b"PONG"


def test_tls_urls_parse_with_redis_pys_parameter_names() -> None:
    endpoint = Endpoint.parse(
        "rediss://:pw@cache:6380/2?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem"
        "&ssl_keyfile=/k.pem&ssl_cert_reqs=optional"
    )
    assert endpoint == Endpoint(
        host="cache",
        port=6380,
        path=None,
        db=2,
        username=None,
        password="pw",
        tls=TlsSettings("/ca.pem", "/c.pem", "/k.pem", ssl.CERT_OPTIONAL),
    )
    assert Endpoint.parse("rediss://cache").tls == TlsSettings(cert_reqs=ssl.CERT_REQUIRED)
    assert Endpoint.parse("redis://cache").tls is None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("rediss://cache?ssl_cert_reqs=maybe", "ssl_cert_reqs=maybe: use none, optional or"),
        ("rediss://cache?ssl_keyfile=/k.pem", "ssl_keyfile needs ssl_certfile"),
        ("rediss://cache?ssl_check_hostname=false", "unsupported ssl_check_hostname: use"),
        ("redis://cache?ssl_ca_certs=/ca.pem", "ssl_* parameters need rediss://"),
        ("rediss://cache?ssl_ca_certs=/sk-no-such/ca.pem", "cannot load ssl_ca_certs: No such"),
    ],
)
def test_a_tls_setting_that_cannot_work_is_refused_before_any_connect(url: str, says: str) -> None:
    """A typo must not quietly weaken TLS, nor send a TLS setting over plain text."""
    with pytest.raises(ValueError, match=f"^{re.escape(f'cache URL {url}: {says}')}"):
        check_cache_url(url)
