"""The open-loop generator against a tiny server that can stall: pacing, records, and the
coordinated-omission handling that charges a stall to every request it held back."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from stockkeeper.bench.latency import Latencies
from stockkeeper.bench.loadgen import (
    Mix,
    Schedule,
    open_loop_latency_us,
    run_load,
    schedule_from_now,
)

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)"
)

BODY = b'{"sku":"MX-00001","on_hand":41,"version":7}'
ANSWER = (
    b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\netag: "7"\r\nx-cache: hit\r\n'
    b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


@dataclass
class Stall:
    """Answers wait while time.time() is in [from_s, until_s)."""

    from_s: float = float("inf")
    until_s: float = float("inf")


def _serve(
    port_box: list[int], stall: Stall, ready: threading.Event, stop: threading.Event
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                if stall.from_s <= time.time() < stall.until_s:
                    await asyncio.sleep(min(stall.until_s - time.time(), 3600.0))
                writer.write(ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_box.append(server.sockets[0].getsockname()[1])
        ready.set()
        await asyncio.to_thread(stop.wait)
        server.close()

    asyncio.run(main())


@pytest.fixture
def server() -> Iterator[tuple[int, Stall]]:
    port_box: list[int] = []
    stall = Stall()
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=_serve, args=(port_box, stall, ready, stop), daemon=True)
    thread.start()
    assert ready.wait(5)
    yield port_box[0], stall
    stop.set()
    thread.join(5)


def test_latency_counts_from_the_intended_time_when_late_and_the_send_when_early() -> None:
    assert open_loop_latency_us(intended_us=1_000, sent_us=1_500, done_us=1_700) == 700
    assert open_loop_latency_us(intended_us=1_000, sent_us=400, done_us=600) == 200


def test_schedule_offers_the_rate_over_the_window() -> None:
    schedule = Schedule(rate_per_s=1000, connections=8, start_us=0, warmup_s=1, window_s=2)
    assert schedule.interval_us == 8000
    assert schedule.offered() == 2000
    assert schedule.window_us == (1_000_000, 3_000_000)


def test_it_sends_at_the_rate_and_records_every_answer(server: tuple[int, Stall]) -> None:
    port, _ = server
    result = run_load(
        [("127.0.0.1", port)], "admin", "clerk", Mix(), schedule_from_now(400, 4, 0.5, 2.0)
    )
    measured = result.measured
    assert len(measured) == result.schedule.offered() == 800
    assert not result.unanswered_latencies_us
    assert {r.op for r in measured} == {"get", "purchase", "restock"}
    first = measured[0]
    assert (first.status, first.version, first.on_hand, first.cache) == (200, 7, 41, "hit")
    # Pacing: no request left long after its slot (the server never made it wait).
    late = [r for r in measured if r.sent_us - r.intended_us > 20_000]
    assert len(late) < len(measured) * 0.01


def test_a_stall_is_charged_to_every_request_it_held_back(server: tuple[int, Stall]) -> None:
    """A closed-loop tool sees one slow answer per connection; the open-loop record sees the
    ~1 s stall in every request scheduled during it."""
    port, stall = server
    stall.from_s = time.time() + 1.5  # 0.5 s into the 2.5 s window (after 1 s lead, 0 warmup)
    stall.until_s = stall.from_s + 1.0
    result = run_load(
        [("127.0.0.1", port)], "admin", "clerk", Mix(), schedule_from_now(200, 2, 0.0, 2.5)
    )
    measured = result.measured
    assert len(measured) == result.schedule.offered() == 500
    open_loop = Latencies().record_all(r.latency_us for r in measured)
    closed_loop = Latencies().record_all(r.service_us for r in measured)
    assert (closed_loop.percentile_ms(99) or 0.0) < 100
    assert (open_loop.percentile_ms(90) or 0.0) > 300
    assert (open_loop.max_ms() or 0.0) > 900


def test_requests_never_answered_count_as_waiting_until_the_end(server: tuple[int, Stall]) -> None:
    port, stall = server
    stall.from_s = time.time() + 2.0  # 1 s into the window, and to the end of the run
    result = run_load(
        [("127.0.0.1", port)], "admin", "clerk", Mix(), schedule_from_now(100, 2, 0.0, 2.0, 1.0)
    )
    unanswered = result.unanswered_latencies_us
    assert len(result.measured) + len(unanswered) == result.schedule.offered() == 200
    assert len(unanswered) >= 80
    assert min(unanswered) >= 1_000_000  # each waited at least the 1 s drain
