"""The real `stockkeeper` command, run as a subprocess: exit codes, stdout, one-line errors."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stockkeeper.domain import Principal, Role
from stockkeeper.service import Inventory
from tests.processes import STOCKKEEPER, free_port

UNREACHABLE_POSTGRES = "postgresql://postgres@127.0.0.1:1/test"
UNREACHABLE_REDIS = "redis://127.0.0.1:1"
EXIT_TIMEOUT_S = 20.0
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def environment(**settings: str) -> dict[str, str]:
    """This process's environment, without stockkeeper settings but those given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STOCKKEEPER_")}
    return {**clean, **settings}


async def start(*args: str, cwd: Path, **settings: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        STOCKKEEPER,
        *args,
        cwd=cwd,
        env=environment(**settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, started: float) -> Run:
    """Wait for `proc` to exit; one still running after EXIT_TIMEOUT_S fails the test."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), EXIT_TIMEOUT_S)
    except TimeoutError:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        pytest.fail(f"stockkeeper (pid {proc.pid}) still ran after {EXIT_TIMEOUT_S} s")
    return Run(proc.returncode or 0, out.decode(), err.decode(), time.monotonic() - started)


async def run(*args: str, cwd: Path, **settings: str) -> Run:
    started = time.monotonic()
    return await finish(await start(*args, cwd=cwd, **settings), started)


def assert_one_line_error(result: Run) -> str:
    """Failed with a non-zero status, nothing on stdout, and one clear line on stderr."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


async def authenticates_as(database_url: str, token: str) -> Principal:
    async with await Inventory.open(database_url) as inventory:
        return await inventory.authenticate(token)


# --- token create ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
async def test_token_create_prints_the_token_alone(
    database_url: str, tmp_path: Path, role: Role
) -> None:
    name = f"till-{role.name.lower()}"
    args = ("token", "create", name, "--role", role.name.lower(), "--database", database_url)
    result = await run(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    token = result.stdout.removesuffix("\n")
    assert result.stdout == token + "\n" and "\n" not in token
    assert token.startswith("sk_") and len(token) > 20
    assert await authenticates_as(database_url, token) == Principal(name, role)


async def test_token_create_reads_the_database_from_the_environment(
    sqlite_url: str, tmp_path: Path
) -> None:
    args = ("token", "create", "envy", "--role", "reader")
    result = await run(*args, cwd=tmp_path, STOCKKEEPER_DATABASE_URL=sqlite_url)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert await authenticates_as(sqlite_url, token) == Principal("envy", Role.READER)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--role", "boss"), "'boss'"),
        (("--role", ""), "--role"),
        ((), "--role"),
    ],
    ids=["unknown-role", "empty-role", "missing-role"],
)
async def test_token_create_rejects_a_bad_role(
    sqlite_url: str, tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    result = await run("token", "create", "alice", *args, "--database", sqlite_url, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and says in error_lines[0], result.stderr


@pytest.mark.parametrize("name", ["", "caf\u00e9", "x" * 256])
async def test_token_create_rejects_a_bad_name(sqlite_url: str, tmp_path: Path, name: str) -> None:
    args = ("token", "create", name, "--role", "clerk", "--database", sqlite_url)
    assert "name" in assert_one_line_error(await run(*args, cwd=tmp_path))


# --- unusable database or cache: one line, non-zero, fast -----------------------------------

TOKEN_CREATE = ("token", "create", "x", "--role", "clerk", "--database")
NO_SUCH_DB = "postgresql://postgres@127.0.0.1:5432/sk_no_such_db"
LOCAL_DB = ("--database", "sqlite:///local.db")

# args → what the one line must name (a regular expression, case-insensitive)
UNUSABLE = {
    "token-postgres-unreachable": ((*TOKEN_CREATE, UNREACHABLE_POSTGRES), "unreachable"),
    "token-postgres-no-such-database": ((*TOKEN_CREATE, NO_SUCH_DB), "sk_no_such_db"),
    "token-postgres-no-such-user": (
        (*TOKEN_CREATE, "postgresql://sk_no_such_user@127.0.0.1:5432/test"),
        "sk_no_such_user",
    ),
    "token-sqlite-no-such-directory": (
        (*TOKEN_CREATE, "sqlite:////sk-no-such-dir/x.db"),
        "sk-no-such-dir",
    ),
    "token-unsupported-url": ((*TOKEN_CREATE, "mysql://127.0.0.1/x"), "mysql"),
    "serve-postgres-unreachable": (("serve", "--database", UNREACHABLE_POSTGRES), "unreachable"),
    "serve-postgres-no-such-database": (("serve", "--database", NO_SUCH_DB), "sk_no_such_db"),
    "serve-sqlite-no-such-directory": (
        ("serve", "--database", "sqlite:////sk-no-such-dir/x.db"),
        "sk-no-such-dir",
    ),
    "serve-redis-unreachable": (("serve", *LOCAL_DB, "--cache", UNREACHABLE_REDIS), "cache|redis"),
    "serve-unsupported-cache": (
        ("serve", *LOCAL_DB, "--cache", "memcached://127.0.0.1:1"),
        "memcached",
    ),
}


@pytest.mark.parametrize(("args", "says"), UNUSABLE.values(), ids=UNUSABLE.keys())
async def test_an_unusable_database_or_cache_is_a_one_line_error(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    if args[0] == "serve":
        args = (*args, "--port", str(free_port()))
    result = await run(*args, cwd=tmp_path)
    line = assert_one_line_error(result)
    assert line.startswith("Error: ")
    assert re.search(says, line, re.IGNORECASE), line
    assert result.seconds < 15, "a dead dependency must fail the start fast"


# --- serve ----------------------------------------------------------------------------------


async def serve_until_healthy(database_url: str, cwd: Path) -> Run:
    """Start `serve`, wait for /healthz, stop it with SIGTERM; what it printed."""
    port = free_port()
    started = time.monotonic()
    proc = await start("serve", "--port", str(port), "--database", database_url, cwd=cwd)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as http:
        while True:
            if proc.returncode is not None or time.monotonic() - started > START_TIMEOUT_S:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                pytest.fail(f"serve never became healthy: {await finish(proc, started)}")
            try:
                if (await http.get("/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    result = await finish(proc, started)
    assert result.returncode == 0, result
    return result


def printed_tokens(result: Run) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("sk_")]


async def test_serve_prints_the_first_admin_token_once(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'served.db'}"
    first = await serve_until_healthy(database_url, tmp_path)
    (token,) = printed_tokens(first)
    assert await authenticates_as(database_url, token) == Principal("admin", Role.ADMIN)
    second = await serve_until_healthy(database_url, tmp_path)
    assert printed_tokens(second) == []
    assert token not in second.stdout + second.stderr


async def test_serve_prints_no_token_when_tokens_exist(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'served.db'}"
    made = await run(
        "token", "create", "ops", "--role", "admin", "--database", database_url, cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    assert printed_tokens(await serve_until_healthy(database_url, tmp_path)) == []


def test_the_command_is_installed_beside_this_python() -> None:
    assert Path(STOCKKEEPER).is_file() and os.access(STOCKKEEPER, os.X_OK)


async def test_serve_on_a_taken_port_is_a_one_line_error_before_any_token(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        database_url = f"sqlite:///{tmp_path / 'served.db'}"
        result = await run("serve", "--port", str(port), "--database", database_url, cwd=tmp_path)
    line = assert_one_line_error(result)
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert not (tmp_path / "served.db").exists(), "no database (or admin token) made for nothing"
