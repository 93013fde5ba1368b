"""`cortex browser ...` end to end: the CLI as a user runs it against `cortex up`, driving
a real Chromium on the local node against the browser tests' local site."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cortex.sdk import BrowserError, SyncBrowserSession, SyncClient
from cortex.skills.browser import find_chromium

sys.path.insert(0, str(Path(__file__).parents[1] / "browser"))
from browser_site import serve_site

if TYPE_CHECKING:
    from conftest import Cortex

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    pytest.mark.timeout(180),
    pytest.mark.skipif(find_chromium() is None, reason="no Chromium: run `make system-deps`"),
]
WAIT_S = 60.0


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with serve_site() as base:
        yield base


def test_browser_cli_tour(cortex: Cortex, site: str, tmp_path: Path) -> None:
    """open, do (navigate, snapshot, type, click, eval, screenshot -o), logs, har, record,
    ls and close all work from the command line, and bad input exits non-zero saying why."""
    name = cortex.ok("browser", "open", "--session", "cli", "--url", f"{site}/login",
                     within=WAIT_S).stdout.strip()
    assert name == "cli"
    snap = cortex.ok("browser", "do", "cli", "snapshot", within=WAIT_S).stdout
    assert 'textbox "User"' in snap
    user_ref = next(x for x in snap.splitlines() if 'textbox "User"' in x
                    ).split("[ref=")[1].split("]")[0]
    cortex.ok("browser", "do", "cli", "type", user_ref, "ann", within=WAIT_S)
    cortex.ok("browser", "do", "cli", "type", "--submit", "selector=input[name=password]",
              "text=secret", within=WAIT_S)
    cortex.ok("browser", "do", "cli", "wait", "url=**/app", within=WAIT_S)
    cortex.ok("browser", "har", "cli", "start", within=WAIT_S)
    clicked = cortex.ok("browser", "do", "cli", "click", "selector=text=Log errors",
                        within=WAIT_S)
    assert "boom from button" in clicked.stderr  # live console event
    assert cortex.ok("browser", "do", "cli", "eval", "document.title",
                     within=WAIT_S).stdout.strip() == '"App"'
    shot = tmp_path / "shot.png"
    cortex.ok("browser", "do", "cli", "screenshot", "--full", "-o", str(shot), within=WAIT_S)
    assert shot.read_bytes().startswith(b"\x89PNG")
    logs = cortex.ok("browser", "logs", "cli", "--kind", "console", within=WAIT_S).stderr
    assert "console/error: boom from button" in logs
    har = tmp_path / "trace.har"
    stopped = json.loads(cortex.ok("browser", "har", "cli", "stop", "-o", str(har),
                                   within=WAIT_S).stdout)
    assert json.loads(har.read_text())["log"]["entries"] is not None
    [har_artifact] = stopped["artifacts"]  # -o downloaded it from the hub's artifact store
    listed_files = json.loads(cortex.ok("artifacts", "ls", har_artifact["task_id"], "--json",
                                        within=WAIT_S).stdout)
    assert [f["name"] for f in listed_files] == [har_artifact["name"]]
    cortex.ok("browser", "record", "cli", "start", "--fps", "5", "--size", "640x360",
              within=WAIT_S)
    video = tmp_path / "v.mp4"
    cortex.ok("browser", "record", "cli", "stop", "-o", str(video), within=WAIT_S)
    assert video.stat().st_size > 0
    listed = json.loads(cortex.ok("browser", "ls", "--json", within=WAIT_S).stdout)
    assert [row["session"] for row in listed] == ["cli"]
    bad = cortex.run("browser", "do", "cli", "navigate", "file:///etc/passwd", within=WAIT_S)
    assert bad.returncode != 0
    assert "file:// is off by default" in bad.stderr
    assert "Traceback" not in bad.stderr
    usage = cortex.run("browser", "do", "cli", "click", "e1", "oops", within=WAIT_S)
    assert usage.returncode == 2
    assert "KEY=VALUE" in usage.stderr
    closed = cortex.ok("browser", "close", "cli", within=WAIT_S)
    assert "closed" in closed.stderr


def test_sync_browser_session_drives_the_same_session_without_await(cortex: Cortex,
                                                                    site: str) -> None:
    """SyncBrowserSession (on a SyncClient found through CORTEX_HOME) opens, acts, reads
    and closes a session with plain calls."""
    with SyncClient(home=cortex.home) as client:
        browser = SyncBrowserSession.open(client, "sync", url=f"{site}/login")
        assert browser.name == "sync"
        assert 'textbox "User"' in browser.snapshot()
        assert browser.eval("document.title") == "Login"
        with pytest.raises(BrowserError, match="not a snapshot ref"):
            browser.click("#css")
        assert browser.close() is True
