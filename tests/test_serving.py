"""`stockkeeper serve` stopping under a load balancer's eye, and the limits a client meets: real
server processes, signals and sockets (stockkeeper.serving).

At SIGTERM a server must fail /readyz at once in every worker and go on serving for its grace,
then finish what is in flight (bounded) and exit 0; a second signal skips the grace. A client
that sends no whole request head in time is closed, and others are served meanwhile."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stockkeeper.bench.cluster import TOKEN, Server, stop
from tests.distributed.cluster import fresh_schema
from tests.processes import free_port

EXIT_SLACK_S = 3.0  # a loaded 2-core machine: process exit and reaping
DRAINING_WITHIN_S = 0.5
WORKERS_START_S_MAX = 30.0
PROBES = 16  # fresh connections: SO_REUSEPORT spreads them, so every worker answers some


@dataclass
class Running:
    spec: Server
    process: subprocess.Popen[bytes]
    admin: dict[str, str]

    def signal(self, signum: int, group: bool = False) -> float:
        """Send `signum` to the main process (as `kill PID` or a container runtime does) or to
        its whole process group (as Ctrl-C and systemd's default do); when it was sent."""
        if group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        return time.monotonic()

    def exited_within(self, seconds: float) -> int:
        """The exit status, failing the test if it still runs after `seconds`."""
        try:
            return self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server still ran {seconds:.1f} s later")


@contextmanager
def running(
    tmp_path: Path, database_url: str, settings: Mapping[str, str], workers: int = 1
) -> Iterator[Running]:
    """One `stockkeeper serve` with `settings` in its environment, every worker started."""
    spec = Server(free_port(), database_url, "memory://", tmp_path / "serve", workers, settings)
    process = spec.start()
    try:
        deadline = time.monotonic() + WORKERS_START_S_MAX
        # /readyz answered: one worker is up. One still starting would end at a signal.
        while spec.out.read_text().count("Started worker-") < workers:
            assert time.monotonic() < deadline, spec.out.read_text()
            time.sleep(0.05)
        (admin,) = TOKEN.findall(spec.out.read_text())
        yield Running(spec, process, {"Authorization": f"Bearer {admin}"})
    finally:
        stop(process, group=True)


def new_connections(url: str) -> httpx.Client:
    """A client that opens a new connection for each request."""
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    return httpx.Client(base_url=url, timeout=5, limits=no_reuse)


def sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'serve.db'}"


@pytest.mark.parametrize("group", [False, True], ids=["to-main", "to-group"])
def test_sigterm_fails_readiness_at_once_and_serves_through_the_grace(
    tmp_path: Path, group: bool
) -> None:
    """Whether the signal reaches the main process alone or its workers too, both workers fail
    /readyz within 0.5 s, and serve everything else (new connections and one held open, which
    is then closed) until the grace is over; then the server exits 0."""
    grace_s = 4.0
    settings = {"STOCKKEEPER_DRAIN_GRACE_MS": str(int(grace_s * 1000))}
    with (
        running(tmp_path, sqlite(tmp_path), settings, workers=2) as server,
        new_connections(server.spec.url) as http,
        httpx.Client(base_url=server.spec.url, timeout=5) as held,  # keep-alive
    ):
        assert held.put("/v1/items/G-1", headers=server.admin, json={"on_hand": 5}).is_success
        sent = server.signal(signal.SIGTERM, group)
        while (ready := http.get("/readyz")).status_code == 200:
            assert time.monotonic() - sent < DRAINING_WITHIN_S, "/readyz still 200"
        for _ in range(PROBES):  # every worker, each on a new connection
            ready = http.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["down"] == {"server": "draining"}
        last = held.get("/v1/items/G-1", headers=server.admin)  # on the connection held
        assert last.status_code == 200
        assert last.headers["connection"] == "close"  # its client reconnects, elsewhere
        answered = 0
        while time.monotonic() - sent < grace_s - 1.0:
            read = http.get("/v1/items/G-1", headers=server.admin)
            assert read.status_code == 200, read.text
            answered += 1
        assert answered > 0 and server.process.poll() is None, "it stopped during its grace"
        assert server.exited_within(grace_s + EXIT_SLACK_S) == 0


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_skips_the_grace(tmp_path: Path, second: signal.Signals) -> None:
    settings = {"STOCKKEEPER_DRAIN_GRACE_MS": "60000"}
    with (
        running(tmp_path, sqlite(tmp_path), settings) as server,
        new_connections(server.spec.url) as http,
    ):
        server.signal(signal.SIGTERM)
        deadline = time.monotonic() + DRAINING_WITHIN_S
        while http.get("/readyz").status_code == 200:
            assert time.monotonic() < deadline, "/readyz still 200"
        server.signal(second)
        assert server.exited_within(EXIT_SLACK_S) == 0


def purchase_on(url: str, admin: dict[str, str], sku: str) -> Callable[[], object]:
    """Start a keyed purchase in a thread (keyed: a transaction, so the failpoint holds it);
    the returned callable waits for its status code, or the exception it met."""
    outcome: list[object] = []

    def buy() -> None:
        headers = {**admin, "Idempotency-Key": f"drain-{sku}"}
        try:
            with httpx.Client(base_url=url, timeout=30) as http:
                path = f"/v1/items/{sku}/purchase"
                outcome.append(http.post(path, headers=headers, json={"quantity": 1}).status_code)
        except httpx.TransportError as error:
            outcome.append(error)

    thread = threading.Thread(target=buy)
    thread.start()

    def result() -> object:
        thread.join(timeout=30)
        return outcome[0]

    return result


def test_requests_in_flight_finish_and_the_stop_is_bounded(tmp_path: Path) -> None:
    """A purchase in flight when the grace ends is answered; one that would outlast the drain
    timeout is cut at it, and the server exits 0 within grace + timeout."""
    grace_s, timeout_s = 1.0, 2
    failpoints = tmp_path / "failpoints"
    failpoints.write_text("")
    settings = {
        "STOCKKEEPER_DRAIN_GRACE_MS": str(int(grace_s * 1000)),
        "STOCKKEEPER_DRAIN_TIMEOUT_S": str(timeout_s),
        "STOCKKEEPER_FAILPOINTS_FILE": str(failpoints),
    }
    with fresh_schema() as database_url, running(tmp_path, database_url, settings) as server:
        url = server.spec.url
        for sku in ("F-1", "F-2"):
            put = httpx.put(f"{url}/v1/items/{sku}", headers=server.admin, json={"on_hand": 1})
            assert put.status_code == 201, put.text
        failpoints.write_text("store.write.before_commit=sleep(3000)")
        time.sleep(0.3)  # the app polls the file every 50 ms
        finishes = purchase_on(url, server.admin, "F-1")  # in flight at the stop
        time.sleep(0.3)
        failpoints.write_text("store.write.before_commit=sleep(20000)")
        time.sleep(0.3)
        outlasts = purchase_on(url, server.admin, "F-2")
        time.sleep(0.3)
        sent = server.signal(signal.SIGTERM)
        assert server.exited_within(grace_s + timeout_s + EXIT_SLACK_S) == 0
        took_s = time.monotonic() - sent
        assert finishes() == 200
        assert isinstance(outlasts(), httpx.TransportError)
        assert took_s >= grace_s + timeout_s - 0.5, "it did not wait for the request in flight"


SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: " + b"a" * 10_000


class SlowClients:
    """Connections that send a request head a byte at a time and never finish it, and ones
    that send nothing; each notes when the server closed it."""

    def __init__(self, port: int, byte_every_s: float, seconds_max: float) -> None:
        self._port = port
        self._byte_every_s = byte_every_s
        self._seconds_max = seconds_max
        self.closed_after_s: list[float] = []

    async def run(self, trickling: int, silent: int) -> None:
        await asyncio.gather(
            *(self._one(trickle=True) for _ in range(trickling)),
            *(self._one(trickle=False) for _ in range(silent)),
        )

    async def _one(self, trickle: bool) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self._port)
        opened = time.monotonic()
        try:
            closed = await self._closed(reader, writer, trickle)
        except ConnectionError:
            closed = True
        finally:
            writer.close()
        if closed:
            self.closed_after_s.append(time.monotonic() - opened)

    async def _closed(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trickle: bool
    ) -> bool:
        """Whether the server closed (or answered) it within seconds_max."""
        deadline = time.monotonic() + self._seconds_max
        for byte in SLOW_HEAD:
            if time.monotonic() > deadline:
                return False
            if trickle:
                writer.write(bytes([byte]))
                await writer.drain()
            try:
                await asyncio.wait_for(reader.read(1), self._byte_every_s)
            except TimeoutError:
                continue
            return True
        return False


def latencies_s(url: str, headers: dict[str, str], until: threading.Event) -> list[float]:
    """Reads one after another, each on a new connection, until `until` is set."""
    taken = []
    with new_connections(url) as http:
        while not until.is_set():
            started = time.monotonic()
            read = http.get("/v1/items/S-1", headers=headers)
            assert read.status_code == 200, read.text
            taken.append(time.monotonic() - started)
            time.sleep(0.01)
    return taken


def test_slow_and_silent_clients_are_closed_while_others_are_served(tmp_path: Path) -> None:
    """2,000 connections holding a request head open (1,500 trickling it, 500 sending nothing;
    2 workers hold 1,024 each) are all closed after the header read timeout, and reads meanwhile
    (from a thread of their own, so the slow clients' event loop does not hold them up) take
    about what they took before."""
    timeout_s = 1.0
    settings = {"STOCKKEEPER_HEADER_READ_TIMEOUT_MS": str(int(timeout_s * 1000))}
    with running(tmp_path, sqlite(tmp_path), settings, workers=2) as server:
        url = server.spec.url
        put = httpx.put(f"{url}/v1/items/S-1", headers=server.admin, json={"on_hand": 1})
        assert put.is_success, put.text
        calm = threading.Event()
        threading.Timer(1.0, calm.set).start()
        before = latencies_s(url, server.admin, calm)
        during: list[float] = []
        done = threading.Event()
        reads = threading.Thread(target=lambda: during.extend(latencies_s(url, server.admin, done)))
        reads.start()
        slow = SlowClients(server.spec.port, 0.2, timeout_s + EXIT_SLACK_S)
        try:
            asyncio.run(slow.run(trickling=1_500, silent=500))
        finally:
            done.set()
            reads.join()
        still_open = 2_000 - len(slow.closed_after_s)
        assert still_open == 0, f"{still_open} still open {timeout_s + EXIT_SLACK_S} s later"
        assert max(during) < 1.0, f"a read took {max(during):.2f} s"
        assert statistics.median(during) < 5 * statistics.median(before) + 0.02, (before, during)


def test_connections_past_the_limit_wait_for_a_free_one(tmp_path: Path) -> None:
    settings = {"STOCKKEEPER_CONNECTIONS_MAX": "4", "STOCKKEEPER_HEADER_READ_TIMEOUT_MS": "1500"}
    with running(tmp_path, sqlite(tmp_path), settings) as server:
        held = [socket.create_connection(("127.0.0.1", server.spec.port)) for _ in range(4)]
        try:
            time.sleep(0.2)  # all four accepted: every slot is taken
            started = time.monotonic()
            assert httpx.get(f"{server.spec.url}/healthz", timeout=5).status_code == 200
            waited_s = time.monotonic() - started
        finally:
            for sock in held:
                sock.close()
        assert waited_s > 1.0, "a fifth connection was served at once"


def test_a_request_head_over_the_limit_is_refused(tmp_path: Path) -> None:
    with (
        running(tmp_path, sqlite(tmp_path), {}) as server,
        new_connections(server.spec.url) as http,
    ):
        assert http.get("/healthz", headers={"X-Big": "a" * 12_000}).status_code == 200
        assert http.get("/healthz", headers={"X-Big": "a" * 20_000}).status_code == 431
