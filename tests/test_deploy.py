"""The shipped systemd unit and its environment file (deploy/) agree with `serve`: systemd waits
longer than a server's grace and drain, the command line is one `serve` accepts, and the
environment file names settings `serve` reads, at their defaults. deploy/haproxy.cfg is run by
tests/distributed/test_rolling_restart.py."""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from stockkeeper import serving
from stockkeeper.cli import main
from tests.processes import STOCKKEEPER

DEPLOY = Path(__file__).parents[1] / "deploy"
UNIT = DEPLOY / "stockkeeper.service"


def service() -> dict[str, str]:
    """The unit's [Service] settings (each is given once)."""
    section, settings = "", {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_systemd_stops_the_server_as_it_drains() -> None:
    settings = service()
    assert settings["KillSignal"] == "SIGTERM"
    assert settings["KillMode"] == "mixed"  # the main process relays it to its workers
    assert settings["Restart"] == "on-failure"
    assert settings["EnvironmentFile"] == "/etc/stockkeeper/stockkeeper.env"
    drain_s = serving.DRAIN_GRACE_MS / 1000 + serving.DRAIN_TIMEOUT_S
    assert float(settings["TimeoutStopSec"].removesuffix("s")) > drain_s + 1  # time to exit


def test_the_unit_runs_a_command_line_serve_accepts() -> None:
    program, command, *args = shlex.split(service()["ExecStart"])
    assert Path(program).name == "stockkeeper" and command == "serve"
    serve = main.commands["serve"]
    serve.make_context("serve", args)  # raises on an option serve does not have


def test_the_environment_file_holds_serve_settings_at_their_defaults() -> None:
    serve = main.commands["serve"]
    names = {
        param.envvar: param.name
        for param in serve.params
        if isinstance(param, click.Option) and isinstance(param.envvar, str)
    }
    lines = (DEPLOY / "stockkeeper.env").read_text().splitlines()
    settings = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert set(settings) <= set(names), set(settings) - set(names)
    limits = dataclasses.asdict(serving.Limits())
    given = {names[env]: int(value) for env, value in settings.items() if names[env] in limits}
    assert given == limits


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_finds_nothing_wrong(tmp_path: Path) -> None:
    """With ExecStart pointing at this checkout's `stockkeeper` (systemd checks that it runs)."""
    installed = UNIT.read_text().replace("/opt/stockkeeper/.venv/bin/stockkeeper", STOCKKEEPER)
    (tmp_path / "stockkeeper.service").write_text(installed)
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "stockkeeper.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
