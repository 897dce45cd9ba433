"""The open-loop load generator of `stockkeeper bench mixed`: wrk (C, cheap: it leaves the
servers most of the CPU) driven by openloop.lua, which paces each connection to a fixed schedule
and records every answer. Measured here, Python clients top out near 7,400 req/s on a whole
core; wrk offers that for a fraction of one (the report gives its CPU per request)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

WRK = shutil.which("wrk") or "wrk"
WRK_TIMEOUT_S = 2
LEAD_S = 1.0  # between starting wrk and the first intended send: its threads connect meanwhile
SKU_FORMAT = "MX-%05d"  # Zipf rank k is SKU MX-0000k: MX-00001 is the hottest
OPS = ("get", "purchase", "restock")
SUMMARY = re.compile(r"^@@ (\w+) (\d+)$", re.MULTILINE)


def require_wrk() -> None:
    if shutil.which(WRK) is None:
        raise RuntimeError("wrk not found: apt-get install -y wrk")


def target_of(url: str) -> tuple[str, int]:
    """(host, port) of a server's base URL."""
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def sku_name(rank: int) -> str:
    return SKU_FORMAT % rank


@dataclass(frozen=True)
class Mix:
    """What the load asks for: reads, purchases and restocks of Zipf-drawn SKUs."""

    read_share: float = 0.95
    restock_share: float = 0.5  # of the writes
    skus: int = 1000
    zipf: float = 1.0

    def __post_init__(self) -> None:
        assert 0.0 <= self.read_share <= 1.0 and 0.0 <= self.restock_share <= 1.0
        assert self.skus >= 1 and self.zipf >= 0.0


@dataclass(frozen=True)
class Schedule:
    """When each connection means to send: connection c (1-based) sends at
    start_us + (c-1)·interval/C + k·interval, for k = 0, 1, … while before end_us. The first
    `warmup_s` are not measured; the window is the next `window_s`; `drain_s` more lets late
    answers arrive."""

    rate_per_s: float
    connections: int
    start_us: int
    warmup_s: float
    window_s: float
    drain_s: float = 2.0

    def __post_init__(self) -> None:
        assert self.rate_per_s > 0 and self.connections >= 1
        assert self.warmup_s >= 0 and self.window_s > 0 and self.drain_s >= 0

    @property
    def interval_us(self) -> float:
        return self.connections * 1e6 / self.rate_per_s

    @property
    def window_us(self) -> tuple[int, int]:
        """[from, until) in intended send times: the measured requests."""
        begin = self.start_us + round(self.warmup_s * 1e6)
        return begin, begin + round(self.window_s * 1e6)

    @property
    def end_us(self) -> int:
        return self.window_us[1]

    def intended_us(self, connection: int, k: int) -> float:
        """Connection `connection`'s k-th intended send (0-based)."""
        phase = math.floor((connection - 1) * self.interval_us / self.connections)
        return self.start_us + phase + k * self.interval_us

    def first_slot(self, connection: int, at_us: int) -> int:
        """The index of the connection's first intended send at or after `at_us`."""
        return max(0, math.ceil((at_us - self.intended_us(connection, 0)) / self.interval_us))

    def window_slots(self, connection: int) -> range:
        """The indexes of the connection's sends intended in the window."""
        begin, until = self.window_us
        return range(self.first_slot(connection, begin), self.first_slot(connection, until))

    def offered(self) -> int:
        """Requests intended in the window, over all connections."""
        return sum(len(self.window_slots(c)) for c in range(1, self.connections + 1))


@dataclass(frozen=True, slots=True)
class Record:
    """One answered request, times in CLOCK_REALTIME microseconds."""

    connection: int
    op: str
    rank: int
    intended_us: int
    sent_us: int
    done_us: int
    status: int
    version: int | None
    on_hand: int | None
    cache: str | None

    @property
    def sku(self) -> str:
        return sku_name(self.rank)

    @property
    def latency_us(self) -> int:
        return open_loop_latency_us(self.intended_us, self.sent_us, self.done_us)

    @property
    def service_us(self) -> int:
        """What a closed-loop tool reports: from the actual send only."""
        return self.done_us - self.sent_us


def open_loop_latency_us(intended_us: int, sent_us: int, done_us: int) -> int:
    """From the intended send time when the request left late (it waited behind a slow answer,
    and that wait is the server's doing), from the actual send when a millisecond timer fired
    early (counting from the intended time would flatter the server)."""
    return done_us - min(intended_us, sent_us)


def parse_records(connection: int, text: str) -> Iterator[Record]:
    for line in text.splitlines():
        op, rank, intended, sent, done, status, version, on_hand, cache = line.split()
        yield Record(
            connection,
            op,
            int(rank),
            int(intended),
            int(sent),
            int(done),
            int(status),
            None if version == "-1" else int(version),
            None if on_hand == "-1" else int(on_hand),
            None if cache == "-" else cache,
        )


@dataclass
class LoadResult:
    schedule: Schedule
    records: list[Record]
    command: list[str]
    wrk_cpu_s: float
    ended_us: int  # when wrk had stopped: an unanswered request waited at least until then
    wrk_errors: dict[str, int] = field(default_factory=dict)

    @cached_property
    def measured(self) -> list[Record]:
        """The answers to requests intended in the window."""
        begin, until = self.schedule.window_us
        return [r for r in self.records if begin <= r.intended_us < until]

    @cached_property
    def unanswered_latencies_us(self) -> list[int]:
        """For every send intended in the window that got no answer before wrk stopped, how
        long it had waited by then (a lower bound of its latency). A connection's answers come
        in order, so these are its last slots. Dropping them would hide the worst stalls."""
        answered = Counter(record.connection for record in self.measured)
        waits = []
        for c in range(1, self.schedule.connections + 1):
            slots = self.schedule.window_slots(c)
            for k in slots[answered[c] :]:
                waits.append(self.ended_us - math.floor(self.schedule.intended_us(c, k)))
        return waits


LuaValue = str | int | float | Sequence["LuaValue"]


def _lua(value: LuaValue) -> str:
    if isinstance(value, str):
        assert not any(c in value for c in '"\\\n'), f"not a plain Lua string: {value!r}"
        return f'"{value}"'
    if isinstance(value, int | float):
        return repr(value)
    return "{" + ", ".join(_lua(item) for item in value) + "}"


def wrk_script(name: str, config: Mapping[str, LuaValue]) -> str:
    """A wrk script: `local CONFIG = {...}`, the prelude every script shares (common.lua), then
    the script `name`."""
    table = ",\n  ".join(f"{key} = {_lua(value)}" for key, value in config.items())
    files = resources.files("stockkeeper.bench")
    prelude = files.joinpath("common.lua").read_text()
    return f"local CONFIG = {{\n  {table}\n}}\n{prelude}{files.joinpath(name).read_text()}"


def lua_targets(targets: Sequence[tuple[str, int]]) -> list[LuaValue]:
    """(host, port) pairs as wrk.lookup takes them: both strings."""
    return [[host, str(port)] for host, port in targets]


def schedule_from_now(
    rate_per_s: float, connections: int, warmup_s: float, window_s: float, drain_s: float = 2.0
) -> Schedule:
    """A schedule whose first send is LEAD_S from now: wrk's threads connect meanwhile."""
    start_us = time.time_ns() // 1000 + round(LEAD_S * 1e6)
    return Schedule(rate_per_s, connections, start_us, warmup_s, window_s, drain_s)


def run_load(
    targets: Sequence[tuple[str, int]],
    admin_token: str,
    clerk_token: str,
    mix: Mix,
    schedule: Schedule,
    seed: int = 1,
) -> LoadResult:
    """Run wrk once (blocking: call it in a thread) and collect every answer it recorded.
    Thread n of `schedule.connections` drives targets[n mod K] over one connection."""
    require_wrk()
    connections = schedule.connections
    lead_s = max(0.0, (schedule.start_us - time.time_ns() // 1000) / 1e6)
    duration_s = math.ceil(lead_s + schedule.warmup_s + schedule.window_s + schedule.drain_s)
    with tempfile.TemporaryDirectory(prefix="sk-load-") as workdir:
        records_dir = Path(workdir)
        config: dict[str, LuaValue] = {
            "targets": lua_targets(targets),
            "admin_token": admin_token,
            "clerk_token": clerk_token,
            "skus": mix.skus,
            "zipf": mix.zipf,
            "read_share": mix.read_share,
            "restock_share": mix.restock_share,
            "sku_format": SKU_FORMAT,
            "connections": schedule.connections,
            "interval_us": schedule.interval_us,
            "start_us": schedule.start_us,
            "end_us": schedule.end_us,
            "records_dir": str(records_dir),
            "seed": seed,
        }
        script_path = records_dir / "openloop.lua"
        script_path.write_text(wrk_script("openloop.lua", config))
        host, port = targets[0]
        command = [
            WRK,
            f"-t{connections}",
            f"-c{connections}",
            f"-d{duration_s}s",
            f"--timeout={WRK_TIMEOUT_S}s",
            "-s",
            str(script_path),
            f"http://{host}:{port}",
        ]
        output_path = records_dir / "wrk.out"
        with output_path.open("wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        ended_us = time.time_ns() // 1000
        process.returncode = os.waitstatus_to_exitcode(status)
        text = output_path.read_text(errors="replace")
        if process.returncode != 0 or "@@ requests" not in text:
            raise RuntimeError(f"wrk exited with {process.returncode}: {text.strip()[-2000:]}")
        records: list[Record] = []
        for c in range(1, connections + 1):
            path = records_dir / f"connection-{c}.txt"
            if path.exists():
                records.extend(parse_records(c, path.read_text()))
    errors = {key: int(value) for key, value in SUMMARY.findall(text) if key != "requests"}
    return LoadResult(schedule, records, command, usage.ru_utime + usage.ru_stime, ended_us, errors)
