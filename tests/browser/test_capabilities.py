"""Every browser action against the local test site, through the real node-side skill, a
real worker process and a real Chromium (one session shared by the module's tests)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import pytest
import pytest_asyncio
from helpers import act, fails, ok

from cortex.core.states import State
from cortex.errors import InvalidArgument, NotFound, Unavailable
from cortex.skills.browser import BrowserSkill, find_chromium
from cortex.skills.worker import WorkerPool
from cortex.testing import eventually

# By name, not `from conftest import`: several test folders have a conftest module.
CHROMIUM = find_chromium()

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

S = "tenant-a/main"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def skill(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BrowserSkill]:
    """A browser skill with its own worker pool and session S open; every browser is
    killed at the end."""
    pool = WorkerPool()
    assert CHROMIUM is not None
    browser = BrowserSkill(pool, data_dir=tmp_path_factory.mktemp("node"), chromium=CHROMIUM,
                           max_sessions=2)
    try:
        await ok(browser, S, "open")  # every test may run alone (-k): the session exists
        yield browser
    finally:
        await pool.aclose()
        await browser.aclose()


async def login(skill: BrowserSkill, site: str, session: str = S) -> None:
    await ok(skill, session, "open", url=f"{site}/login")
    await ok(skill, session, "type", selector="input[name=user]", text="ann")
    await ok(skill, session, "type", selector="input[name=password]", text="secret",
             submit=True)
    await ok(skill, session, "wait", url="**/app")


async def test_open_navigate_back_forward_reload(skill: BrowserSkill, site: str) -> None:
    """Navigation moves between pages with a wait condition and reports status and title."""
    opened = await ok(skill, S, "open", url=f"{site}/login")
    assert opened["tabs"][0]["url"].endswith("/login")
    went = await ok(skill, S, "navigate", url=f"{site}/scroll", wait_until="domcontentloaded")
    assert (went["status"], went["title"]) == (200, "Scroll")
    assert (await ok(skill, S, "back"))["page"]["url"].endswith("/login")
    assert (await ok(skill, S, "forward"))["page"]["url"].endswith("/scroll")
    assert (await ok(skill, S, "reload", wait_until="load"))["title"] == "Scroll"


async def test_snapshot_text_json_scoped_boxes_diff_verbose(skill: BrowserSkill,
                                                            site: str) -> None:
    """The ai snapshot has refs, converts to JSON, scopes, shows boxes and diffs."""
    await login(skill, site)
    text = (await ok(skill, S, "snapshot"))["text"]
    assert 'heading "Welcome ann"' in text
    assert "[ref=" in text
    tree = (await ok(skill, S, "snapshot", format="json"))["tree"]
    flat = json.dumps(tree)
    assert '"name": "Welcome ann"' in flat
    assert '"ref": "' in flat
    scoped = (await ok(skill, S, "snapshot", selector="#order"))["text"]
    assert "Order" in scoped
    assert "Welcome" not in scoped
    boxes = (await ok(skill, S, "snapshot", selector="#order", boxes=True, depth=1))["text"]
    assert "[box=" in boxes
    await ok(skill, S, "snapshot")
    await ok(skill, S, "click", selector="text=Later")
    await ok(skill, S, "wait", text="Arrived late")
    diff = (await ok(skill, S, "snapshot", diff=True))["text"]
    assert diff.startswith("+") or "\n+" in diff
    assert "Arrived late" in diff
    assert "Welcome" not in diff
    verbose = await ok(skill, S, "snapshot", verbose=True)
    assert verbose["format"] == "cdp"
    assert "Welcome ann" in verbose["text"]


async def test_oversized_snapshot_and_eval_are_cut_and_marked(skill: BrowserSkill,
                                                              site: str) -> None:
    """A snapshot or an eval result past its cap is cut with a note saying so."""
    await ok(skill, S, "navigate", url=f"{site}/big")
    snap = await ok(skill, S, "snapshot", max_chars=2000)
    assert snap["cut"]
    assert "[cut: showing 2000 of" in snap["text"]
    value = await ok(skill, S, "eval", expression="'x'.repeat(5000)", max_chars=100)
    assert value["cut"]
    assert value["value"] is None
    assert "[cut:" in value["text"]


async def test_click_by_ref_and_stale_ref(skill: BrowserSkill, site: str) -> None:
    """A ref from the snapshot clicks its element; a ref that is gone says to re-snapshot."""
    await login(skill, site)
    text = (await ok(skill, S, "snapshot"))["text"]
    line = next(x for x in text.splitlines() if 'button "Log errors"' in x)
    ref = line.split("[ref=")[1].split("]")[0]
    clicked = await act(skill, S, "click", ref=ref)
    assert clicked.state is State.SUCCEEDED
    assert any(e["kind"] == "console" and e["text"] == "boom from button"
               for e in clicked.events), clicked.stderr
    reason = await fails(skill, S, "click", ref="e9999")
    assert "not on the page any more" in reason
    assert "fresh snapshot" in reason
    assert "not a snapshot ref" in await fails(skill, S, "click", ref="#css")


async def test_form_fill_select_check_upload_and_submit(skill: BrowserSkill, site: str,
                                                        tmp_path: Path) -> None:
    """fill sets text, checkbox and select; upload attaches a node file; the form submits."""
    await login(skill, site)
    upload = tmp_path / "notes.txt"
    upload.write_text("hello")
    await ok(skill, S, "fill", fields=[
        {"selector": "input[name=name]", "value": "Ann"},
        {"selector": "textarea[name=notes]", "value": "ring twice"},
        {"selector": "input[name=gift]", "value": True},
        {"selector": "select[name=size]", "value": "L"},
    ])
    await ok(skill, S, "select", selector="select[name=size]", values=["M"])
    await ok(skill, S, "upload", selector="input[type=file]", paths=[str(upload)])
    await ok(skill, S, "click", selector="button:has-text('Order')", count=1)
    out = json.loads((await ok(skill, S, "eval",
                               expression="document.getElementById('out').textContent"))["value"])
    assert out["name"] == "Ann"
    assert out["notes"] == "ring twice"
    assert out["gift"] == "on"
    assert out["size"] == "M"
    assert (await ok(skill, S, "eval", expression="document.getElementById('fname')"
                                                   ".textContent"))["value"] == "notes.txt"
    missing = await fails(skill, S, "upload", selector="input[type=file]",
                          paths=["/no/such/file"])
    assert "no such file on the node" in missing


async def test_hover_drag_keys_scroll(skill: BrowserSkill, site: str) -> None:
    """Hover opens a CSS menu, drag and drop moves data, chords reach handlers, scroll loads."""
    await login(skill, site)
    await ok(skill, S, "hover", selector="#menu button")
    assert (await ok(skill, S, "eval", expression="getComputedStyle(document.querySelector("
                                                  "'#menu .sub')).display"))["value"] == "block"
    await ok(skill, S, "drag", from_selector="#apple", to_selector="#bin")
    assert (await ok(skill, S, "eval", expression="document.getElementById('bin')"
                                                  ".textContent"))["value"] == "dropped apple"
    await ok(skill, S, "press", selector="#keys", keys="Control+Shift+K")
    assert (await ok(skill, S, "eval", expression="document.getElementById('chord')"
                                                  ".textContent"))["value"] == "chord!"
    await ok(skill, S, "click", selector="#keys", modifiers=["Shift"], button="left")
    await ok(skill, S, "navigate", url=f"{site}/scroll")
    before = (await ok(skill, S, "eval", expression="document.querySelectorAll('li').length")
              )["value"]
    for _ in range(4):
        await ok(skill, S, "scroll", dy=3000)
    await ok(skill, S, "wait", predicate=f"document.querySelectorAll('li').length > {before}")
    scrolled = await ok(skill, S, "scroll", selector="li:nth-child(20)", into_view=True)
    assert scrolled["scroll"][1] >= 0


async def test_waits_and_their_timeouts(skill: BrowserSkill, site: str) -> None:
    """Each wait kind succeeds when its condition comes, and names it when it does not."""
    await login(skill, site)
    await ok(skill, S, "click", selector="text=Later")
    await ok(skill, S, "wait", selector="#late", state="visible")
    await ok(skill, S, "wait", text_gone="no such text anywhere")
    await ok(skill, S, "wait", load_state="load")
    await ok(skill, S, "wait", url="**/app")
    reason = await fails(skill, S, "wait", selector="#never", timeout_s=0.5)
    assert "timed out after 0.5 s waiting for selector='#never' state=visible" in reason
    reason = await fails(skill, S, "wait", text="Never shown", timeout_s=0.3)
    assert "waiting for text='Never shown'" in reason
    assert "exactly one of" in await fails(skill, S, "wait", text="a", url="b")
    slow = await fails(skill, S, "navigate", url=f"{site}/slow?ms=3000", timeout_s=0.5)
    assert "Timeout" in slow or "timed out" in slow
    await ok(skill, S, "navigate", url=f"{site}/slow?ms=200")


async def test_eval_on_page_and_element_and_js_errors(skill: BrowserSkill, site: str) -> None:
    """eval returns JSON values, runs on an element, and returns the JS error text."""
    await login(skill, site)
    assert (await ok(skill, S, "eval", expression="({a: [1, 2], b: document.title})")
            )["value"] == {"a": [1, 2], "b": "App"}
    assert (await ok(skill, S, "eval", expression="(x) => x * 2", arg=21))["value"] == 42
    assert (await ok(skill, S, "eval", selector="h1", expression="el => el.tagName")
            )["value"] == "H1"
    reason = await fails(skill, S, "eval", expression="null.boom")
    assert "TypeError" in reason
    assert "null" in reason


async def test_console_network_logs_and_bodies(skill: BrowserSkill, site: str) -> None:
    """Console messages, page errors, 404s and refused requests are logged and filterable."""
    await login(skill, site)
    since = (await ok(skill, S, "status"))["events_seq"]
    for button in ("Log errors", "Fetch missing", "Fetch refused", "Throw"):
        await ok(skill, S, "click", selector=f"text={button}")

    # The page fetches and throws on its own, apart from the actions: poll the records.
    async def logged() -> list[dict[str, Any]] | None:
        logs: list[dict[str, Any]] = (await ok(skill, S, "logs", since=since))["events"]
        kinds = {(e["kind"], e.get("level")) for e in logs}
        done = {("console", "error"), ("pageerror", "error")} <= kinds
        return logs if done else None

    logs = await eventually(logged, "the console error and the page error")
    assert any("uncaught kaboom" in e.get("text", "") for e in logs)

    async def failed_both() -> bool:
        failed = (await ok(skill, S, "network", since=since, failed_only=True))["events"]
        return any(e["kind"] == "requestfailed" and "ERR_CONNECTION_REFUSED" in e["error"]
                   for e in failed) \
            and any(e["kind"] == "response" and e["status"] == 404 for e in failed)

    await eventually(failed_both, "the refused fetch and the 404 in the network log")
    errors = (await ok(skill, S, "logs", since=since, kinds=["console"], level="error"))
    assert errors["events"]
    assert all(e["level"] == "error" for e in errors["events"])
    app = (await ok(skill, S, "network", url="/app", kinds=["response"]))["events"][-1]
    body = await ok(skill, S, "network", body_of=app["seq"])
    assert "Welcome ann" in body["body"]
    assert "unknown event kinds" in await fails(skill, S, "logs", kinds=["bogus"])


async def test_screenshots_viewport_full_element_jpeg(skill: BrowserSkill, site: str) -> None:
    """Screenshots come back as PNG or JPEG bytes and are kept as files in the session dir."""
    await ok(skill, S, "navigate", url=f"{site}/scroll")
    shot = await ok(skill, S, "screenshot")
    png = base64.b64decode(shot["base64"])
    assert png.startswith(b"\x89PNG")
    assert Path(shot["path"]).read_bytes() == png  # noqa: ASYNC240 - a small local file
    full = base64.b64decode((await ok(skill, S, "screenshot", full=True))["base64"])
    assert len(full) > len(png)
    element = await ok(skill, S, "screenshot", selector="li", format="jpeg", quality=50)
    assert base64.b64decode(element["base64"]).startswith(b"\xff\xd8")
    capped = await ok(skill, S, "screenshot", max_bytes=10)
    assert "base64" not in capped
    assert "artifact" in capped["note"]
    # This skill has no artifact store: nothing is published and the outbox is not kept.
    assert "artifacts" not in capped
    assert not (Path(shot["path"]).parent.parent / "outbox.jsonl").exists()


async def test_dialog_accept_and_dismiss(skill: BrowserSkill, site: str) -> None:
    """A dialog is reported at once and answered by the dialog action."""
    await login(skill, site)
    clicked = await ok(skill, S, "click", selector="text=Confirm")
    assert clicked["dialog_opened"]
    assert clicked["page"]["dialog"]["text"] == "Sure?"
    await ok(skill, S, "dialog", accept=False)
    assert (await ok(skill, S, "eval", expression="document.getElementById('dlg').textContent")
            )["value"] == "false"
    assert "no dialog is open" in await fails(skill, S, "dialog")


async def test_download_lands_in_the_session_dir(skill: BrowserSkill, site: str) -> None:
    """A download the page triggers is saved and reported as an event with its path."""
    await login(skill, site)
    since = (await ok(skill, S, "status"))["events_seq"]
    await ok(skill, S, "click", selector="text=Get report")

    async def downloaded() -> list[dict[str, Any]]:  # the download ends after the click
        events: list[dict[str, Any]] = (await ok(skill, S, "logs", since=since,
                                                 kinds=["download"], follow_s=0.2))["events"]
        return events

    events = await eventually(downloaded, "the download event")
    saved = Path(events[-1]["path"]).read_text()  # noqa: ASYNC240 - a small local file
    assert saved == "id,total\n1,42\n"
    fetched = await ok(skill, S, "fetch", path=events[-1]["path"])
    assert base64.b64decode(fetched["base64"]) == b"id,total\n1,42\n"
    assert fetched["eof"]
    assert "only the session's own files" in await fails(skill, S, "fetch", path="/etc/passwd")


async def test_tabs_list_new_select_close(skill: BrowserSkill, site: str) -> None:
    """Tabs open, get selected and close; actions follow the selected tab."""
    base = len((await ok(skill, S, "tabs"))["tabs"])
    tabs = (await ok(skill, S, "tabs", op="new", url=f"{site}/scroll"))["tabs"]
    assert len(tabs) == base + 1
    assert tabs[-1]["selected"]
    assert (await ok(skill, S, "eval", expression="document.title"))["value"] == "Scroll"
    await ok(skill, S, "tabs", op="select", index=0)
    assert (await ok(skill, S, "tabs", op="close", index=base))["tabs"][-1]["index"] == base - 1
    assert "needs index" in await fails(skill, S, "tabs", op="select", index=99)


async def test_har_has_the_expected_entries(skill: BrowserSkill, site: str) -> None:
    """A HAR recorded around some actions is valid JSON holding those requests; har=true
    on one action gives a HAR of that action alone."""
    await ok(skill, S, "har", op="start")
    assert "already being recorded" in await fails(skill, S, "har", op="start")
    await login(skill, site)
    await ok(skill, S, "click", selector="text=Fetch missing")
    await ok(skill, S, "wait", predicate="true")
    stopped = await ok(skill, S, "har", op="stop")
    har = json.loads(Path(stopped["path"]).read_text())  # noqa: ASYNC240 - a small local file
    urls = [(e["request"]["method"], e["request"]["url"].replace(site, ""),
             e["response"]["status"]) for e in har["log"]["entries"]]
    assert ("POST", "/login", 303) in urls
    assert ("GET", "/missing", 404) in urls
    assert stopped["entries"] == len(urls)
    one = await ok(skill, S, "click", selector="text=Fetch missing", har=True)
    task_har = json.loads(Path(one["har"]["path"]).read_text())  # noqa: ASYNC240
    assert [e["request"]["url"].replace(site, "") for e in task_har["log"]["entries"]] == [
        "/missing"]
    await ok(skill, S, "har", op="start")
    assert "one HAR records at a time" in await fails(skill, S, "eval", expression="1",
                                                      har=True)
    await ok(skill, S, "har", op="stop")


async def test_video_decodes_back_to_frames(skill: BrowserSkill, site: str) -> None:
    """A screencast recording is a playable H.264 MP4 with about fps x seconds frames."""
    await ok(skill, S, "navigate", url=f"{site}/animate")
    await ok(skill, S, "record", op="start", fps=10, width=640, height=360)
    await ok(skill, S, "eval", expression="new Promise(r => setTimeout(r, 1500))")
    video = await ok(skill, S, "record", op="stop")
    assert video["frames"] > 3
    assert "error" not in video
    with av.open(video["path"]) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 640, 360)
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == video["frames"]
    assert "fps must be" in await fails(skill, S, "record", op="start", fps=99)


async def test_bad_input_is_refused_precisely(skill: BrowserSkill, site: str) -> None:
    """Unknown actions and args, wrong types, file URLs and unreachable hosts say so."""
    await ok(skill, S, "open")
    assert "unknown browser action 'fly'" in await fails(skill, S, "fly")
    assert "does not take bogus" in await fails(skill, S, "click", bogus=1)
    assert "count must be int" in await fails(skill, S, "click", selector="h1", count="x")
    reason = await fails(skill, S, "navigate", url="file:///etc/passwd")
    assert "file:// is off by default" in reason
    reason = await fails(skill, S, "navigate", url="http://127.0.0.1:1/")
    assert "could not be loaded: net::ERR_" in reason
    with pytest.raises(InvalidArgument, match="the node's"):
        await act(skill, S, "open", _cdp="http://evil")
    with pytest.raises(InvalidArgument, match="needs a session"):
        await act(skill, "", "open")
    with pytest.raises(NotFound, match="no browser session 'never-opened' on this node"):
        await act(skill, "tenant-a/never-opened", "click", ref="e1")


async def test_renderer_crash_is_reported_and_reload_recovers(skill: BrowserSkill,
                                                              site: str) -> None:
    """A crashed renderer fails actions saying so; reload brings the page back. (A session
    of its own: an earlier test's navigation to an unreachable host can still land its
    error page in the shared one.)"""
    from playwright.async_api import async_playwright

    crash = "tenant-a/crash"
    await login(skill, site, crash)
    port = json.loads((skill._sessions[crash].dir / "chromium.json").read_text())["port"]
    async with async_playwright() as pw:  # a second CDP client crashes the tab for us
        browser = await pw.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
        page = next(p for p in browser.contexts[0].pages if p.url.endswith("/app"))
        cdp = await browser.contexts[0].new_cdp_session(page)
        async with page.expect_event("crash", timeout=10_000):  # it has crashed: no race
            with contextlib.suppress(Exception):  # the renderer dies before it can answer
                await asyncio.wait_for(cdp.send("Page.crash"), 5)
    crashed = await act(skill, crash, "eval", expression="1")
    assert crashed.state is State.FAILED
    assert "crashed" in crashed.reason
    assert (await ok(skill, crash, "reload"))["recovered"] is True
    assert (await ok(skill, crash, "eval", expression="document.title"))["value"] == "App"
    assert (await ok(skill, crash, "close"))["closed"] is True   # the skill allows 2 sessions


async def test_worker_kill_9_reattaches_with_tabs_cookies_and_typed_input(
        skill: BrowserSkill, site: str) -> None:
    """A killed worker leaves Chromium running; the next action's worker re-attaches and
    finds the tabs, the login cookie, localStorage and half-typed input. (A session of its
    own: the killed worker takes its coverage data along.)"""
    K = "tenant-a/kill"
    await login(skill, site, K)
    await ok(skill, K, "type", selector="input[name=name]", text="half typed")
    await ok(skill, K, "eval", expression="localStorage.setItem('k', 'v')")
    tabs = (await ok(skill, K, "tabs"))["tabs"]
    pid = skill._worker.pool._pid_of(("browser", K))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(20):  # until the pool has seen its worker go
        while skill._worker.pool._pid_of(("browser", K)) == pid:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    again = await act(skill, K, "eval",
                      expression="[document.querySelector('input[name=name]').value, "
                                 "localStorage.getItem('k'), document.cookie]")
    assert again.state is State.SUCCEEDED, again.reason
    assert again.result["value"] == ["half typed", "v", "user=ann"]
    assert "re-attached to the running browser" in again.stderr
    assert skill._worker.pool._pid_of(("browser", K)) not in (None, pid)
    assert [t["url"] for t in (await ok(skill, K, "tabs"))["tabs"]] == [t["url"] for t in tabs]
    await ok(skill, K, "close")


async def test_save_restore_in_another_session_and_close(skill: BrowserSkill,
                                                         site: str) -> None:
    """save gives cookies, storage and tabs; restore in a new session logs it in; close
    kills the browser and deletes the profile."""
    await login(skill, site)
    state = (await ok(skill, S, "save"))["state"]
    other = "tenant-a/other"
    await ok(skill, other, "open")
    restored = await ok(skill, other, "restore", state=state)
    assert any(t["url"].endswith("/app") for t in restored["tabs"])
    assert "Welcome ann" in (await ok(skill, other, "snapshot"))["text"]
    listed = await ok(skill, "tenant-a/.ls", "sessions")
    assert {"main", "other"} <= {r["session"] for r in listed["sessions"]}
    assert (await ok(skill, "tenant-b/.ls", "sessions"))["sessions"] == []
    folder = skill._sessions[other].dir
    assert (await ok(skill, other, "close"))["closed"] is True
    assert not folder.exists()
    assert (await ok(skill, other, "close"))["closed"] is False


async def test_session_limit_says_why(skill: BrowserSkill, site: str) -> None:
    """Past the node's session limit a new session is refused with the way out."""
    await ok(skill, "tenant-a/second", "open")
    with pytest.raises(Unavailable, match="limit of 2 browser sessions"):
        await act(skill, "tenant-a/third", "open")
    await ok(skill, "tenant-a/second", "close")
