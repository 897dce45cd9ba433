"""The README's examples run as written: the embedding script, and every command a new user
meets, from a fresh machine to the distributed setup, `verify` and the benchmarks."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import httpx

from stockkeeper.bench.cluster import private_redis
from stockkeeper.cli import main
from tests.conftest import POSTGRES_URL
from tests.distributed.cluster import fresh_schema
from tests.processes import Serving, free_port, serving
from tests.stress.__main__ import main as stress_main

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def section(heading: str) -> str:
    """The README's text under `## heading`, up to the next heading of that level."""
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def fenced(text: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == language]


def test_the_embedding_example_runs_as_written(tmp_path: Path) -> None:
    embedding = section("Embedding")
    (script, *_) = fenced(embedding, "python")
    (tmp_path / "demo.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKKEEPER_")}
    result = subprocess.run(
        [sys.executable, "demo.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    (expected, *_) = fenced(embedding, "text")
    assert result.stdout == expected
    assert (tmp_path / "demo.db").is_file(), "the example uses sqlite:///demo.db, relative"


# --- every command a new user types -------------------------------------------------------
# Placeholder hosts become local servers and fixed ports free ones; the rest of each command is
# the README's own text, so a README command that stops working fails here.

VENV = Path(sys.executable).parent.parent
CI_RUN = README.parent / ".ci" / "run"
FIRST_START = re.compile(r"line after `([^`]+)`")
RUN_TIMEOUT_S = 180


def shell(heading: str) -> list[str]:
    """The section's `sh` blocks, each with its continued lines joined."""
    return [re.sub(r"\\\n\s*", "", block) for block in fenced(section(heading), "sh")]


def user_environment(**settings: str) -> dict[str, str]:
    """As after `. .venv/bin/activate`, with no stockkeeper settings but `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKKEEPER_")}
    path = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {**env, "PATH": path, "VIRTUAL_ENV": str(VENV), **settings}


def bash(command: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=user_environment(**settings),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def replaced(text: str, *pairs: tuple[str, str]) -> str:
    """`text` with each placeholder replaced; each must be there, so the README still has it."""
    for placeholder, value in pairs:
        assert placeholder in text, f"the README no longer says {placeholder!r}"
        text = text.replace(placeholder, value)
    return text


def admin_token(server: Serving) -> str:
    """The token printed on the line after the one the README quotes."""
    announce = FIRST_START.search(" ".join(section("On a fresh machine").split()))
    assert announce is not None
    lines = server.printed().splitlines()
    return lines[lines.index(announce[1]) + 1]


def json_values(text: str) -> list[Any]:
    """The JSON values curl printed back to back."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    return values


def test_the_suite_command_is_what_ci_runs() -> None:
    """`bash .ci/run` is CI itself; it makes the fresh machine's venv and runs the README's
    re-run command, and installs what the benchmarks need."""
    (install, *_, suite) = shell("On a fresh machine")
    assert suite.strip() == "bash .ci/run"
    ci = CI_RUN.read_text()
    venv, pip_install, _ = install.strip().split(" && ")
    assert venv in ci and pip_install == ".venv/bin/pip install -e ."
    assert "pip install -q -e '.[test,bench]'" in ci, "CI installs the package, with its extras"
    assert "`.venv/bin/python -m pytest -q`" in section("On a fresh machine")
    assert ci.rstrip().endswith(".venv/bin/python -m pytest -q")
    assert "apt-get install -y wrk" in section("Benchmarks") and "apt_install wrk" in ci


def test_a_fresh_machine_serves_the_curl_examples_and_makes_tokens(tmp_path: Path) -> None:
    install, curls, token_create, _ = shell("On a fresh machine")
    serve = install.strip().split(" && ")[-1]
    (tmp_path / ".venv").symlink_to(VENV)  # the venv the README's install made, here
    port = free_port()
    command = f"{serve} --port {port}"  # 8080 may be taken on a test machine
    with serving(["bash", "-c", command], port, tmp_path, user_environment()) as server:
        token = admin_token(server)
        examples = replaced(curls, ("sk_…", token), ("localhost:8080", f"localhost:{port}"))
        answered = bash(examples, tmp_path)
        assert answered.returncode == 0, answered.stderr
        put, purchase = json_values(answered.stdout)
        assert (put["on_hand"], put["version"]) == (7, 1)
        assert (purchase["delta"], purchase["on_hand"], purchase["version"]) == (-1, 6, 2)

        made = bash(token_create, tmp_path)
        assert made.returncode == 0, made.stderr
        assert made.stderr == "using database sqlite:///stockkeeper.db\n"
        headers = {"Authorization": f"Bearer {made.stdout.strip()}"}
        read = httpx.get(f"{server.url}/v1/items/A-1", headers=headers)
    assert read.status_code == 200 and read.json()["on_hand"] == 6
    assert (tmp_path / "stockkeeper.db").is_file()


def test_the_distributed_setup_serves_and_verify_judges_it(tmp_path: Path) -> None:
    (setup,) = shell("Distributed setup")
    serve, token_create = setup.strip().splitlines()
    (verify,) = shell("Checking a deployment: `stockkeeper verify`")
    with fresh_schema() as database_url, private_redis() as redis_url:
        hosts = (
            ("postgresql://stock@db.internal/stock", shlex.quote(database_url)),
            ("redis://cache.internal:6379/0", redis_url),
        )
        ports = free_port(), free_port()
        commands = [replaced(serve, *hosts, ("--port 8080", f"--port {port}")) for port in ports]
        env = user_environment()
        with (
            serving(["bash", "-c", commands[0]], ports[0], tmp_path, env) as first,
            serving(["bash", "-c", commands[1]], ports[1], tmp_path, env) as second,
        ):
            admin = admin_token(first)
            assert "sk_" not in second.printed(), "only the first start makes an admin token"
            made = bash(replaced(token_create, hosts[0]), tmp_path)
            assert made.returncode == 0, made.stderr
            clerk = {"Authorization": f"Bearer {made.stdout.strip()}"}
            for server in (first, second):
                assert httpx.get(f"{server.url}/v1/items/NOPE", headers=clerk).status_code == 404

            judged = bash(
                replaced(
                    verify,
                    ("http://10.0.0.5:8080", first.url),
                    ("http://10.0.0.6:8080", second.url),
                    ("--seconds 30", "--seconds 2"),  # the README's 30 s, shortened
                    ("[", ""),
                    ("]", ""),
                ),
                tmp_path,
                ADMIN_TOKEN=admin,
            )
    assert judged.returncode == 0, judged.stdout + judged.stderr
    assert "verdict: CORRECT" in judged.stdout
    assert json.loads((tmp_path / "verify.json").read_text())["ok"] is True


def parses(argv: list[str]) -> None:
    """A command too long to run here: the real CLI must accept and convert all its options."""
    assert Path(argv[0]).name == "stockkeeper", argv
    command: click.Command = main
    args = argv[1:]
    while isinstance(command, click.Group):
        name, *args = args
        command = command.commands[name]
    command.make_context(name, args)


def test_the_quick_benchmarks_run_and_the_long_ones_parse(tmp_path: Path) -> None:
    benchmarks = section("Benchmarks")
    (quick,) = shell("Benchmarks")
    for line in quick.strip().splitlines():
        if " mixed " in f"{line} ":
            parses(shlex.split(line))  # a minute: tests/bench/test_bench_cli.py runs it, smaller
            continue
        result = tmp_path / "result.json"
        where = f"--database {shlex.quote(POSTGRES_URL)} --json {result}"
        done = bash(f"{line} {where}", tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "verdict: CORRECT" in done.stdout, line
    quoted = re.findall(
        r"`((?:\.venv/bin/)?stockkeeper bench [^`]*)`", " ".join(benchmarks.split())
    )
    long_runs = [command for command in quoted if "SCENARIO" not in command]
    assert any("--rate 10000" in command for command in long_runs), "the figures' command"
    for command in long_runs:
        parses(shlex.split(command))


def test_the_configuration_table_names_real_flags_and_variables() -> None:
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section("Configuration").splitlines()
        if line.startswith("| ") and not line.startswith("| setting")
    ]
    flags = {flag for row in rows for flag in re.findall(r"`(--[a-z-]+)`", row[1])}
    variables = {name for row in rows for name in re.findall(r"`([A-Z_]{4,})`", row[2])}
    assert "--docs-cors-origin" in flags and "STOCKKEEPER_DOCS_CORS_ORIGINS" in variables
    serve = main.commands["serve"]
    assert flags <= {option for param in serve.params for option in param.opts}
    source = "".join(path.read_text() for path in (README.parent / "src").rglob("*.py"))
    for name in variables:
        assert f'"{name}"' in source, f"{name} is read nowhere"


def test_the_stress_command_parses() -> None:
    """Twenty minutes is too long to run here: tests/stress/ runs it for 75 s."""
    (command,) = shell("Stress runs with faults")
    argv = shlex.split(command.replace("[", "").replace("]", "").replace("DIR", "/tmp/history"))
    assert argv[:3] == [".venv/bin/python", "-m", "tests.stress"], argv
    stress_main.make_context("tests.stress", argv[3:])
