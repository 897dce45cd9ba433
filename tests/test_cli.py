"""The real `stockkeeper` command, run as a subprocess: exit codes, stdout, one-line errors."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from stockkeeper import auth
from stockkeeper.domain import Principal, Role, Unauthenticated, Unavailable
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


async def make_database(database_url: str) -> None:
    """Create stockkeeper's schema, as the first `serve` does: token commands need it."""
    async with await Inventory.open(database_url):
        pass


async def authenticates_as(database_url: str, token: str) -> Principal:
    async with await Inventory.open(database_url) as inventory:
        return await inventory.authenticate(token)


# --- token create ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
async def test_token_create_prints_the_token_alone(
    database_url: str, tmp_path: Path, role: Role
) -> None:
    name = f"till-{role.name.lower()}"
    await make_database(database_url)
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
    await make_database(sqlite_url)
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
    await make_database(sqlite_url)
    args = ("token", "create", name, "--role", "clerk", "--database", sqlite_url)
    line = assert_one_line_error(await run(*args, cwd=tmp_path))
    assert line.count("name:") == 1, line


async def test_token_create_with_an_empty_name_says_so_once(
    sqlite_url: str, tmp_path: Path
) -> None:
    await make_database(sqlite_url)
    args = ("token", "create", "", "--role", "clerk", "--database", sqlite_url)
    line = assert_one_line_error(await run(*args, cwd=tmp_path))
    assert line == "Error: name: required: a token needs a name, it becomes the audit user"


# --- one live token per name ------------------------------------------------------------------


async def test_token_create_refuses_the_name_of_a_live_token_and_reuses_a_revoked_ones(
    database_url: str, tmp_path: Path
) -> None:
    await make_database(database_url)
    create = ("token", "create", "till", "--database", database_url, "--role")
    first = await run(*create, "clerk", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    taken = assert_one_line_error(await run(*create, "admin", cwd=tmp_path))
    assert taken == (
        "Error: name: live token 1 is already named 'till'; revoke it first "
        "(stockkeeper token revoke 1) or choose another name"
    )
    listed = await run("token", "list", "--database", database_url, cwd=tmp_path)
    assert [row[:3] for row in table(listed.stdout)[1:]] == [["1", "till", "clerk"]]

    revoked = await run("token", "revoke", "1", "--database", database_url, cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    again = await run(*create, "admin", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    token = again.stdout.strip()
    assert await authenticates_as(database_url, token) == Principal("till", Role.ADMIN)
    assert assert_one_line_error(await run(*create, "reader", cwd=tmp_path)).startswith(
        "Error: name: live token 2 is already named 'till'"
    )


# --- token commands never create a database -----------------------------------------------------

TOKEN_COMMANDS = {
    "create": ("token", "create", "checkout", "--role", "clerk"),
    "list": ("token", "list"),
    "revoke": ("token", "revoke", "1"),
}
NO_DATABASE_HINT = "; pass --database or set STOCKKEEPER_DATABASE_URL"


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.mark.parametrize("args", TOKEN_COMMANDS.values(), ids=TOKEN_COMMANDS.keys())
async def test_token_commands_in_an_empty_folder_make_no_database(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    line = assert_one_line_error(await run(*args, cwd=tmp_path))
    assert line == f"Error: no stockkeeper database at stockkeeper.db{NO_DATABASE_HINT}"
    assert files_in(tmp_path) == [], "no database file (or journal) left behind"


@pytest.mark.parametrize("args", TOKEN_COMMANDS.values(), ids=TOKEN_COMMANDS.keys())
async def test_token_commands_refuse_a_postgres_database_without_the_schema(
    postgres_url: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    password_url = postgres_url.replace("postgres@", "postgres:hunter2@", 1)  # trust: ignored
    line = assert_one_line_error(await run(*args, "--database", password_url, cwd=tmp_path))
    assert line == f"Error: no stockkeeper database at {postgres_url}{NO_DATABASE_HINT}"
    schema = postgres_url.partition("search_path=")[2]
    conn = await asyncpg.connect(postgres_url.partition("?")[0])
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
    finally:
        await conn.close()
    assert tables == [], "refused, not migrated"


async def test_token_commands_say_which_database_they_used_without_its_password(
    database_url: str, tmp_path: Path
) -> None:
    await make_database(database_url)
    given = database_url.replace("postgres@", "postgres:hunter2@", 1)
    shown = f"using database {database_url}\n"
    made = await run(
        "token", "create", "kiosk", "--role", "reader", "--database", given, cwd=tmp_path
    )
    assert made.returncode == 0 and made.stderr == shown, made
    token = made.stdout.removesuffix("\n")
    assert made.stdout == token + "\n" and token.startswith("sk_"), "the token alone on stdout"
    listed = await run("token", "list", "--database", given, cwd=tmp_path)
    assert listed.returncode == 0 and listed.stderr == shown, listed
    revoked = await run("token", "revoke", "1", "--database", given, cwd=tmp_path)
    assert revoked.returncode == 0 and revoked.stderr == shown, revoked
    assert "hunter2" not in made.stderr + listed.stderr + revoked.stderr


async def test_token_create_uses_an_existing_default_database(tmp_path: Path) -> None:
    await make_database(f"sqlite:///{tmp_path / 'stockkeeper.db'}")
    made = await run("token", "create", "kiosk", "--role", "reader", cwd=tmp_path)
    assert made.returncode == 0, made
    assert made.stderr == "using database sqlite:///stockkeeper.db\n"
    token = made.stdout.strip()
    database_url = f"sqlite:///{tmp_path / 'stockkeeper.db'}"
    assert await authenticates_as(database_url, token) == Principal("kiosk", Role.READER)


# --- token list and revoke -------------------------------------------------------------------

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def table(stdout: str) -> list[list[str]]:
    """`token list` cut at its header's column starts: only an aligned table reads back right
    (cells may hold spaces)."""
    lines = stdout.splitlines()
    starts = [match.start() for match in re.finditer(r"\S+", lines[0])]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [[line[a:b].strip() for a, b in bounds] for line in lines]


def recent_utc(stamp: str) -> bool:
    at = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return RFC3339_UTC.fullmatch(stamp) is not None and abs(time.time() - at.timestamp()) < 60


async def test_token_list_shows_every_token_and_never_a_secret(
    database_url: str, tmp_path: Path
) -> None:
    async with await Inventory.open(database_url) as inventory:
        first = await inventory.create_first_admin_token()
        till = await inventory.create_token("till 7", Role.CLERK)
        key = await inventory.store.token_key()
    assert first is not None
    revoked = await run("token", "revoke", "2", "--database", database_url, cwd=tmp_path)
    assert (revoked.returncode, revoked.stdout) == (0, "revoked token 2 (till 7, clerk)\n")

    result = await run("token", "list", "--database", database_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, admin, clerk = table(result.stdout)
    assert header == ["ID", "NAME", "ROLE", "CREATED", "REVOKED"]
    assert (admin[:3], admin[4]) == (["1", "admin", "admin"], "no")
    assert clerk[:3] == ["2", "till 7", "clerk"]
    assert recent_utc(admin[3]) and recent_utc(clerk[3]) and recent_utc(clerk[4])
    assert clerk[3] <= clerk[4], "revoked after it was made"
    for token in (first, till):
        assert token.removeprefix("sk_") not in result.stdout
        assert auth.token_hash(token, key).hex() not in result.stdout.lower()


async def test_token_revoke_ends_one_token_and_keeps_its_row(
    database_url: str, tmp_path: Path
) -> None:
    async with await Inventory.open(database_url) as inventory:
        kiosk = await inventory.create_token("kiosk", Role.READER)
        shop = await inventory.create_token("shop", Role.CLERK)
    result = await run("token", "revoke", "1", "--database", database_url, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "revoked token 1 (kiosk, reader)\n")
    async with await Inventory.open(database_url) as inventory:
        with pytest.raises(Unauthenticated):
            await inventory.authenticate(kiosk)
        assert await inventory.authenticate(shop) == Principal("shop", Role.CLERK)
        assert [(t.name, t.revoked_at is not None) for t in await inventory.list_tokens()] == [
            ("kiosk", True),
            ("shop", False),
        ]


async def test_token_revoke_of_an_unknown_or_revoked_id_is_a_one_line_error(
    database_url: str, tmp_path: Path
) -> None:
    async with await Inventory.open(database_url) as inventory:
        await inventory.create_token("kiosk", Role.READER)
    revoke = ("token", "revoke", "--database", database_url)
    assert (await run(*revoke, "1", cwd=tmp_path)).returncode == 0
    again = assert_one_line_error(await run(*revoke, "1", cwd=tmp_path))
    assert re.fullmatch(r"Error: id: token 1 \(kiosk\) was already revoked at \S+Z", again)
    unknown = assert_one_line_error(await run(*revoke, "99", cwd=tmp_path))
    assert unknown == "Error: id: no token has id 99"


@pytest.mark.parametrize(("token_id", "says"), [("x", "not a valid integer"), ("0", "id")])
async def test_token_revoke_rejects_a_malformed_id(
    sqlite_url: str, tmp_path: Path, token_id: str, says: str
) -> None:
    await make_database(sqlite_url)
    result = await run("token", "revoke", token_id, "--database", sqlite_url, cwd=tmp_path)
    assert result.returncode != 0 and result.stdout == ""
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and says in error_lines[0], result.stderr


# The token table as the first release made it: no id, no revoked_at.
FIRST_RELEASE_TOKENS = {
    "postgres": """
        CREATE TABLE stockkeeper_meta (key text PRIMARY KEY, value text NOT NULL);
        CREATE TABLE tokens (
            hash bytea PRIMARY KEY,
            name text NOT NULL,
            role text NOT NULL CHECK (role IN ('reader', 'clerk', 'admin')),
            created_at timestamptz NOT NULL DEFAULT now()
        );
    """,
    "sqlite": """
        CREATE TABLE stockkeeper_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE tokens (
            hash BLOB PRIMARY KEY,
            name TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('reader', 'clerk', 'admin')),
            created_at REAL NOT NULL
        );
    """,
}


async def make_first_release_database(database_url: str, token: str) -> None:
    key = bytes(range(32))
    meta = (("schema_version", "1"), ("token_key", key.hex()))
    row = (auth.token_hash(token, key), "veteran", "admin", time.time())
    if database_url.startswith("postgresql://"):
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(FIRST_RELEASE_TOKENS["postgres"])
            await conn.executemany("INSERT INTO stockkeeper_meta VALUES ($1, $2)", meta)
            await conn.execute(
                "INSERT INTO tokens (hash, name, role) VALUES ($1, $2, $3)", *row[:3]
            )
        finally:
            await conn.close()
        return
    with closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as conn:
        conn.executescript(FIRST_RELEASE_TOKENS["sqlite"])
        conn.executemany("INSERT INTO stockkeeper_meta VALUES (?, ?)", meta)
        conn.execute("INSERT INTO tokens VALUES (?, ?, ?, ?)", row)
        conn.commit()


async def test_a_first_release_database_upgrades_its_tokens(
    database_url: str, tmp_path: Path
) -> None:
    token = auth.new_token()
    await make_first_release_database(database_url, token)
    result = await run("token", "list", "--database", database_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (_, veteran) = table(result.stdout)
    assert veteran[:3] == ["1", "veteran", "admin"] and veteran[4] == "no"
    assert await authenticates_as(database_url, token) == Principal("veteran", Role.ADMIN)
    result = await run("token", "revoke", "1", "--database", database_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with pytest.raises(Unauthenticated):
        await authenticates_as(database_url, token)


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
    "token-list-postgres-unreachable": (
        ("token", "list", "--database", UNREACHABLE_POSTGRES),
        "unreachable",
    ),
    "token-revoke-postgres-unreachable": (
        ("token", "revoke", "1", "--database", UNREACHABLE_POSTGRES),
        "unreachable",
    ),
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


async def test_serve_reports_the_database_before_the_cache_and_names_its_host(
    tmp_path: Path,
) -> None:
    """Both unusable: the one line is about the database (the first thing to fix), naming
    where it looked, without the password."""
    database = "postgresql://postgres:hunter2@nohost.invalid:5432/x"
    args = ("serve", "--database", database, "--cache", "redis://127.0.0.1:1/0")
    line = assert_one_line_error(await run(*args, "--port", str(free_port()), cwd=tmp_path))
    assert line.startswith("Error: database unreachable at "), line
    assert "nohost.invalid:5432" in line
    assert "hunter2" not in line
    assert "redis" not in line.lower() and "cache" not in line.lower(), line


async def test_inventory_open_names_the_database_before_the_cache() -> None:
    with pytest.raises(Unavailable, match=r"database unreachable at .*nohost\.invalid:5432"):
        await Inventory.open(
            "postgresql://postgres@nohost.invalid:5432/x", cache_url=UNREACHABLE_REDIS
        )


# --- serve ----------------------------------------------------------------------------------


async def serve_until_healthy(database_url: str, cwd: Path, *args: str, **settings: str) -> Run:
    """Start `serve` (with `args` and environment `settings`), wait for /healthz, stop it with
    SIGTERM; what it printed."""
    port = free_port()
    started = time.monotonic()
    proc = await start(
        "serve", "--port", str(port), "--database", database_url, *args, cwd=cwd, **settings
    )
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
    await make_database(database_url)
    made = await run(
        "token", "create", "ops", "--role", "admin", "--database", database_url, cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    served = await serve_until_healthy(database_url, tmp_path)
    assert printed_tokens(served) == []
    assert "no live admin token" not in served.stdout + served.stderr


def no_admin_warnings(result: Run, database_url: str) -> list[str]:
    lines = [line for line in result.stderr.splitlines() if "no live admin token" in line]
    command = f"stockkeeper token create NAME --role admin --database {database_url}"
    assert all(command in line for line in lines), lines
    return lines


async def test_serve_warns_when_no_live_admin_token_exists(
    database_url: str, tmp_path: Path
) -> None:
    """A clerk token made before the first start: the database is not empty, so no admin
    token is printed; `serve` must say there is none and how to make one."""
    await make_database(database_url)
    made = await run(*TOKEN_CREATE, database_url, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    served = await serve_until_healthy(database_url, tmp_path)
    assert printed_tokens(served) == []
    assert len(no_admin_warnings(served, database_url)) == 1, served.stderr

    admin = await run(
        "token", "create", "ops", "--role", "admin", "--database", database_url, cwd=tmp_path
    )
    assert admin.returncode == 0, admin.stderr
    assert no_admin_warnings(await serve_until_healthy(database_url, tmp_path), database_url) == []

    revoked = await run("token", "revoke", "2", "--database", database_url, cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    served = await serve_until_healthy(database_url, tmp_path)
    assert len(no_admin_warnings(served, database_url)) == 1, "a revoked admin is no admin"


async def test_serve_names_the_database_without_its_password_in_the_warning(
    postgres_url: str, tmp_path: Path
) -> None:
    await make_database(postgres_url)
    async with await Inventory.open(postgres_url) as inventory:
        await inventory.create_token("checkout", Role.CLERK)
    given = postgres_url.replace("postgres@", "postgres:hunter2@", 1)  # trust: ignored
    served = await serve_until_healthy(given, tmp_path)
    assert len(no_admin_warnings(served, postgres_url)) == 1, served.stderr
    assert "hunter2" not in served.stdout + served.stderr


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


@pytest.mark.parametrize("own_folder", [False, True], ids=["made-by-serve", "the-users"])
async def test_serve_with_workers_removes_only_the_metrics_folder_it_made(
    tmp_path: Path, own_folder: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)  # `environment()` copies it
    temp = tmp_path / "tmp"
    temp.mkdir()
    settings = {"TMPDIR": str(temp)}
    users = tmp_path / "metrics"
    if own_folder:
        users.mkdir()
        settings["PROMETHEUS_MULTIPROC_DIR"] = str(users)
    database_url = f"sqlite:///{tmp_path / 'served.db'}"
    await serve_until_healthy(database_url, tmp_path, "--workers", "2", **settings)
    assert list(temp.glob("stockkeeper-metrics-*")) == []
    if own_folder:
        assert users.is_dir() and any(users.iterdir()), "the user's folder, kept as it was"
