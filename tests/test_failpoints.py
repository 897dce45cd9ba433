"""Named failpoints: arming, disarming, actions, and the environment syntax."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockkeeper import failpoints
from stockkeeper.failpoints import ENV_VAR, POINTS, FailpointError

POINT = "store.write.before_audit"
OTHER = "store.write.before_commit"


@pytest.fixture(autouse=True)
def disarm_all() -> Iterator[None]:
    yield
    for name in POINTS:
        failpoints.disarm(name)


async def fires(name: str) -> bool:
    """Whether hitting `name` now raises FailpointError."""
    try:
        await failpoints.hit(name)
    except FailpointError:
        return True
    return False


async def seconds_to_hit(name: str) -> float:
    started = time.monotonic()
    await failpoints.hit(name)
    return time.monotonic() - started


async def test_arm_then_hit_raises_and_disarm_makes_it_a_no_op_again() -> None:
    failpoints.arm(POINT, "error")
    with pytest.raises(FailpointError, match=POINT):
        await failpoints.hit(POINT)
    assert not await fires(OTHER)
    failpoints.disarm(POINT)
    assert not await fires(POINT)


async def test_armed_disarms_on_exit_even_after_an_error() -> None:
    with pytest.raises(FailpointError), failpoints.armed(POINT, "error"):
        await failpoints.hit(POINT)
    assert not await fires(POINT)


async def test_arming_again_replaces_the_action() -> None:
    failpoints.arm(POINT, "error")
    failpoints.arm(POINT, "sleep(1)")
    assert not await fires(POINT)


def test_disarming_an_unarmed_point_is_harmless() -> None:
    failpoints.disarm(POINT)
    failpoints.disarm("no.such.point")


@pytest.mark.parametrize("name", ["", "store.write", "store.write.before_audit ", "typo.point"])
def test_unknown_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="unknown failpoint"):
        failpoints.arm(name, "error")
    with pytest.raises(ValueError, match="unknown failpoint"), failpoints.armed(name, "error"):
        pass


@pytest.mark.parametrize(
    "action",
    [
        "",
        "boom",
        "Error",
        "error ",
        "sleep",
        "sleep()",
        "sleep(x)",
        "sleep(-1)",
        "sleep(1.5)",
        f"sleep({failpoints.SLEEP_MS_MAX + 1})",
        "sleep(5)x",
    ],
)
async def test_bad_actions_are_rejected_and_leave_the_point_unarmed(action: str) -> None:
    with pytest.raises(ValueError, match="failpoint action"):
        failpoints.arm(POINT, action)
    assert not await fires(POINT)


@pytest.mark.parametrize("action", ["sleep(0)", f"sleep({failpoints.SLEEP_MS_MAX})"])
def test_sleep_bounds_are_accepted(action: str) -> None:
    failpoints.arm(POINT, action)


async def test_sleep_waits_the_given_milliseconds() -> None:
    with failpoints.armed(POINT, "sleep(60)"):
        assert await seconds_to_hit(POINT) >= 0.055
    assert await seconds_to_hit(POINT) < 0.05


async def test_a_callable_action_is_awaited_at_every_hit() -> None:
    calls: list[str] = []

    async def action() -> None:
        calls.append("hit")

    with failpoints.armed(POINT, action):
        await failpoints.hit(POINT)
        await failpoints.hit(OTHER)
        await failpoints.hit(POINT)
    await failpoints.hit(POINT)
    assert calls == ["hit", "hit"]


async def test_a_callable_action_can_raise() -> None:
    async def action() -> None:
        raise RuntimeError("held")

    with failpoints.armed(POINT, action), pytest.raises(RuntimeError, match="held"):
        await failpoints.hit(POINT)


@pytest.mark.parametrize("name", [*sorted(POINTS), "not.a.point"])
async def test_hit_is_a_no_op_when_unarmed(name: str) -> None:
    await failpoints.hit(name)  # raises nothing, waits for nothing


@pytest.mark.parametrize(
    "spec",
    [
        f"{POINT}=error;{OTHER}=sleep(5)",
        f" {POINT} = error ; {OTHER}=sleep(5) ;",
        f";;{OTHER}=sleep(5);{POINT}=error;",
    ],
)
async def test_arm_from_env_parses_semicolon_separated_points(spec: str) -> None:
    failpoints.arm_from_env({ENV_VAR: spec})
    assert await fires(POINT)
    assert not await fires(OTHER)
    assert await seconds_to_hit(OTHER) >= 0.004


@pytest.mark.parametrize("environ", [{}, {ENV_VAR: ""}, {ENV_VAR: " ; ;"}])
async def test_arm_from_env_without_a_spec_arms_nothing(environ: dict[str, str]) -> None:
    failpoints.arm_from_env(environ)
    for name in POINTS:
        assert not await fires(name)


def test_arm_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "no.such.point=error")
    with pytest.raises(ValueError, match="unknown failpoint"):
        failpoints.arm_from_env()


@pytest.mark.parametrize(
    "spec", [f"{POINT}=explode", f"{POINT}", "typo=error", f"{POINT}=sleep(fast)"]
)
def test_arm_from_env_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="failpoint"):
        failpoints.arm_from_env({ENV_VAR: spec})


async def test_a_percent_prefix_fires_at_about_that_share_of_hits() -> None:
    failpoints.arm(POINT, "30%error")
    fired = sum([await fires(POINT) for _ in range(2000)])
    assert 450 < fired < 750, fired
    failpoints.arm(POINT, "0%error")
    assert not any([await fires(POINT) for _ in range(200)])
    failpoints.arm(POINT, "100%error")
    assert await fires(POINT)


@pytest.mark.parametrize("action", ["101%error", "%error", "30%", "30%boom", "30% error"])
def test_bad_percentages_are_rejected(action: str) -> None:
    with pytest.raises(ValueError, match="failpoint action"):
        failpoints.arm(POINT, action)


def test_a_bad_part_of_a_spec_arms_none_of_it() -> None:
    with pytest.raises(ValueError, match="failpoint action"):
        failpoints.arm_from_env({ENV_VAR: f"{POINT}=error;{OTHER}=boom"})
    assert POINT not in failpoints._armed


async def test_follow_file_rearms_on_every_change_and_a_bad_spec_disarms_all(
    tmp_path: Path,
) -> None:
    path = tmp_path / "failpoints"
    follower = asyncio.create_task(failpoints.follow_file(str(path), poll_s=0.01))

    async def settled() -> None:
        await asyncio.sleep(0.05)

    try:
        await settled()
        assert not await fires(POINT)
        path.write_text(f"{POINT}=error")
        await settled()
        assert await fires(POINT)
        path.write_text(f"{OTHER}=error")
        await settled()
        assert not await fires(POINT) and await fires(OTHER)
        path.write_text(f"{OTHER}=boom")
        await settled()
        assert not await fires(OTHER)
        path.write_text(f"{POINT}=error")
        await settled()
        path.unlink()
        await settled()
        assert not await fires(POINT)
    finally:
        follower.cancel()
