"""A database outage is a few log lines, not a flood: a real `stockkeeper serve` reaching
PostgreSQL through a FaultProxy that refuses (and resets) every connection for ~3 s."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from stockkeeper.faults.proxy import FaultProxy
from tests.distributed.cluster import fresh_schema, running_servers

pytestmark = pytest.mark.distributed

DOWN_S = 3.0
BACK_S_MAX = 15.0  # the slowest loop (the change feed) retries every ~1 s
# "<time> WARNING <pid> <logger>: <component>: <what>"
LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) \d+ (?P<logger>[\w.]+): (?P<text>.*)$")
WENT_DOWN = re.compile(r"^(?P<who>[^:]+): .*; retrying \(a reminder every \d+ s\)$")
CAME_BACK = re.compile(r"^(?P<who>[^:]+): working again after \d+ s \(\d+ failed attempts\)$")


def through(proxy: FaultProxy, database_url: str) -> str:
    parts = urllib.parse.urlsplit(database_url)
    netloc = f"{parts.username or 'postgres'}@{proxy.listen_host}:{proxy.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def call(method: str, url: str, token: str | None = None, body: object = None) -> int:
    request = urllib.request.Request(
        url, method=method, data=None if body is None else json.dumps(body).encode()
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def new_lines(log: Path, skip: int) -> list[str]:
    return log.read_text(errors="replace").splitlines()[skip:]


def test_a_database_outage_logs_one_line_per_loop_down_and_one_back(tmp_path: Path) -> None:
    with (
        FaultProxy("127.0.0.1", 5432) as proxy,
        fresh_schema() as direct_url,
        running_servers(
            tmp_path, through(proxy, direct_url), 1, cache_url="redis://127.0.0.1:6379/0"
        ) as cluster,
    ):
        url, log = cluster.urls[0], tmp_path / "server-0.log"
        assert call("PUT", f"{url}/v1/items/outage-a", cluster.admin_token, {"on_hand": 3}) in (
            200,
            201,
        )
        skip = len(new_lines(log, 0))

        proxy.refuse(True)
        proxy.reset()  # the pool's open connections die too
        time.sleep(DOWN_S)
        down = new_lines(log, skip)
        proxy.refuse(False)

        # Back: every loop that said it went down says it is back, and the server serves.
        def texts() -> list[str]:
            return [m["text"] for line in new_lines(log, skip) if (m := LINE.match(line))]

        def back() -> bool:
            went = {m["who"] for t in texts() if (m := WENT_DOWN.match(t))}
            came = {m["who"] for t in texts() if (m := CAME_BACK.match(t))}
            return bool(went) and went <= came

        deadline = time.monotonic() + BACK_S_MAX
        while not back() and time.monotonic() < deadline:
            time.sleep(0.1)
        written = 0
        while time.monotonic() < deadline:
            written = call("PUT", f"{url}/v1/items/outage-b", cluster.admin_token, {"on_hand": 5})
            if written in (200, 201):
                break
            time.sleep(0.1)
        after = new_lines(log, skip)

        assert back(), "\n".join(after)
        assert written in (200, 201), "\n".join(after)
        assert call("GET", f"{url}/healthz") == 200

    report = "\n".join(after)
    assert "Traceback" not in report, report
    assert all(LINE.match(line) for line in after), report  # no continuation lines at all
    assert len(after) <= 10, report
    went_down = Counter(m["who"] for t in texts() if (m := WENT_DOWN.match(t)))
    came_back = Counter(m["who"] for t in texts() if (m := CAME_BACK.match(t)))
    assert went_down and set(went_down.values()) == {1}, report
    assert came_back == went_down, report
    assert len(down) <= len(went_down), "\n".join(down)  # while down: the first lines only
