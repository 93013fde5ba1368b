"""Session lifetime on a node: idle sessions are closed, a Chromium killed underneath is
started again (and the caller told), a node agent restart adopts the running browser,
and close works for a browser the current agent never started."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv
import pytest
import pytest_asyncio
from helpers import act, ok

from cortex.skills.browser import BrowserPolicy, BrowserSkill, find_chromium
from cortex.skills.worker import WorkerPool

# By name, not `from conftest import`: several test folders have a conftest module.
CHROMIUM = find_chromium()

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    workers = WorkerPool()
    yield workers
    await workers.aclose()


def make(pool: WorkerPool, data_dir: Path, clock: Clock, **kw: object) -> BrowserSkill:
    assert CHROMIUM is not None
    return BrowserSkill(pool, data_dir=data_dir, chromium=CHROMIUM, max_sessions=4,
                        idle_timeout_s=60, clock=clock, **kw)  # type: ignore[arg-type]


def chromium_pid(skill: BrowserSkill, key: str) -> int:
    return int(json.loads((skill._sessions[key].dir / "chromium.json").read_text())["pid"])


async def test_idle_session_is_closed_and_frees_its_browser(pool: WorkerPool, tmp_path: Path,
                                                            site: str) -> None:
    """A session idle past the timeout is closed (browser killed) on the next browser task."""
    clock = Clock()
    skill = make(pool, tmp_path, clock)
    try:
        await ok(skill, "t/idle", "open", url=f"{site}/login")
        pid = chromium_pid(skill, "t/idle")
        clock.now += 61
        await ok(skill, "t/busy", "open")
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        assert [s["session"] for s in (await ok(skill, "t/.ls", "sessions"))["sessions"]] == [
            "busy"]
    finally:
        await skill.aclose()


async def test_chromium_killed_underneath_is_restarted_and_reported(
        pool: WorkerPool, tmp_path: Path, site: str) -> None:
    """Killing the session's Chromium: the next action starts a new one, says what was
    lost, and works; cookies persisted in the profile survive."""
    skill = make(pool, tmp_path, Clock())
    try:
        await ok(skill, "t/s", "open", url=f"{site}/login")
        os.killpg(chromium_pid(skill, "t/s"), signal.SIGKILL)
        answer = await act(skill, "t/s", "navigate", url=f"{site}/scroll")
        told = answer.stderr
        if answer.reason:  # a call racing the kill fails on the old connection, saying so
            assert "went away underneath" in answer.reason
            answer = await act(skill, "t/s", "navigate", url=f"{site}/scroll")
            told += answer.stderr
        # the failed call killed and reaped what was left of the old browser, so this one
        # started a new one rather than finding the old one still exiting
        assert answer.result.get("title") == "Scroll", (answer.state, answer.reason, told)
        assert "was started again with the same profile" in told
    finally:
        await skill.aclose()


async def test_agent_restart_adopts_the_running_browser(pool: WorkerPool, tmp_path: Path,
                                                        site: str) -> None:
    """A new skill object and worker pool (an agent restarted after a crash) find the Chromium
    still running and attach to it: the tab and its typed input are still there; close
    kills it."""
    first = make(pool, tmp_path, Clock())
    await ok(first, "t/keep", "open", url=f"{site}/login")
    await ok(first, "t/keep", "type", selector="input[name=user]", text="kept")
    pid = chromium_pid(first, "t/keep")
    await pool.aclose()  # the agent stops: its workers exit (detaching), Chromium stays
    pool = WorkerPool()
    second = make(pool, tmp_path, Clock(), policy=BrowserPolicy())
    value = await ok(second, "t/keep", "eval",
                     expression="document.querySelector('input[name=user]').value")
    assert value["value"] == "kept"
    assert chromium_pid(second, "t/keep") == pid
    third = make(pool, tmp_path, Clock())
    assert (await ok(third, "t/keep", "close"))["closed"] is True
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    await pool.aclose()
