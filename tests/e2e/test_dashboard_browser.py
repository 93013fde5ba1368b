"""The web dashboard in real Chromium (Debian's, driven by Playwright): log in, see a node,
watch a task started from the CLI stream its log live, cancel a task, look at every page.

Each page visited is saved as a screenshot under test-artifacts/dashboard/ for a person to
look at. Every test also fails on any console error or page error (a CSP violation, a
broken htmx swap), so the pages are checked as a browser runs them, not only as HTML.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import (
    APIResponse,
    Browser,
    ConsoleMessage,
    Page,
    Route,
    async_playwright,
    expect,
)

from cortex.hub.server import Hub
from cortex.node.agent import Agent
from cortex.sdk import Client
from cortex.testing import cli_env

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
CORTEX_BIN = Path(sys.executable).with_name("cortex")
PY = sys.executable
FOREVER = "import time\nprint('up', flush=True)\ntime.sleep(600)\n"
WAIT_MS = 20_000
# Every wait on the page gets the same patience (Playwright's default is 5 s): a loaded
# CI machine can take longer than that to answer a re-read or swap a fragment.
expect.set_options(timeout=WAIT_MS)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """SQLite only: the HTTP tests cover both stores; here the browser is the subject."""
    return str(tmp_path / "hub" / "hub.db")


@pytest_asyncio.fixture
async def chromium() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.skip("needs Debian chromium: CORTEX_NEED_BROWSER=1 bash "
                    "scripts/ensure_system_deps.sh")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest_asyncio.fixture
async def page(chromium: Browser, hub: Hub) -> AsyncIterator[Page]:
    """A fresh browser context on the hub's HTTP port; no console error may occur in it."""
    context = await chromium.new_context(base_url=f"http://127.0.0.1:{hub.http_port}",
                                         viewport={"width": 1280, "height": 800})
    tab = await context.new_page()
    problems: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        # A refused login answers 401 on purpose; Chromium logs every 4xx document.
        if msg.type == "error" and "status of 401" not in msg.text:
            problems.append(f"console: {msg.text}")

    tab.on("console", on_console)
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    try:
        yield tab
    finally:
        await context.close()
    assert problems == []


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def log_in(page: Page, token: str, *, start: str = "/ui/tasks") -> None:
    await page.goto(start)
    await expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    await page.fill("#token", token)
    await page.click("#login")
    await expect(page).to_have_url(re.compile(re.escape(start) + "$"))


async def cli_run(hub: Hub, *argv: str) -> str:
    """`cortex run --detach -- argv` as a user would type it; the task id it prints."""
    proc = await asyncio.create_subprocess_exec(
        str(CORTEX_BIN), "run", "--detach", "--", *argv,
        env=cli_env(hub.config.data_dir), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    (task_id,) = re.findall(r"t-[0-9a-z]+", out.decode())
    return task_id


@pytest.mark.asyncio
async def test_log_in_and_see_the_node(hub: Hub, node: Agent, page: Page) -> None:
    """A wrong token is refused on the form; the right one opens the node list, which
    shows the connected node and refreshes itself."""
    await page.goto("/ui/nodes")
    await shot(page, "01-login")
    await page.fill("#token", "ctk_nosuch.secret")
    await page.click("#login")
    await expect(page.locator("#login-error")).to_contain_text("unknown API token")
    await page.fill("#token", hub.admin_token)
    await page.click("#login")
    await expect(page).to_have_url(re.compile(r"/ui/nodes$"))
    (conn,) = hub.registry.all()
    row = page.locator(f'tr[data-node="{conn.node_id}"]')
    await expect(row).to_contain_text("online")
    await expect(row).to_contain_text("shell")
    await expect(page.locator("#who-role")).to_have_text("hub-admin")
    await shot(page, "02-nodes")


@pytest.mark.asyncio
async def test_a_task_started_from_the_cli_streams_its_log_live(
        hub: Hub, node: Agent, page: Page, tmp_path: Path) -> None:
    """The task page shows the first line while the task still waits, the second line
    once the test lets it go on, then its final state: all without reloading."""
    gate = tmp_path / "go"
    script = ("import os, time\nprint('first line', flush=True)\n"
              f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.05)\n"
              "print('second line', flush=True)\n")
    task_id = await cli_run(hub, PY, "-c", script)
    await log_in(page, hub.admin_token, start=f"/ui/tasks/{task_id}")
    log = page.locator("#log")
    await expect(log).to_contain_text("first line", timeout=WAIT_MS)
    await expect(page.locator("#task-state")).to_contain_text("running")
    await shot(page, "03-task-running")
    assert "second line" not in await log.inner_text()
    gate.touch()
    await expect(log).to_contain_text("second line", timeout=WAIT_MS)
    await expect(page.locator("#task-state")).to_contain_text("succeeded", timeout=WAIT_MS)
    await expect(page.locator("#log-end")).to_have_text("succeeded")
    # The details (attempts, timing, buttons) were re-read when the state changed.
    await expect(page.locator("#attempts")).to_contain_text("succeeded")
    await expect(page.locator("#cancel")).to_have_count(0)
    await shot(page, "04-task-succeeded")

    await page.goto("/ui/tasks")
    await expect(page.locator(f'tr[data-task="{task_id}"]')).to_contain_text("succeeded")
    await page.select_option("#f-state", "succeeded")
    await page.click("#f-apply")
    await expect(page).to_have_url(re.compile(r"state=succeeded"))
    await expect(page.locator(f'tr[data-task="{task_id}"]')).to_be_visible()
    await shot(page, "05-tasks")


@pytest.mark.asyncio
async def test_cancel_a_running_task_from_its_page(hub: Hub, node: Agent, page: Page,
                                                  client: Client) -> None:
    """The Cancel button (a CSRF-protected POST) ends the task; the page shows it."""
    task = await client.submit(argv=[PY, "-c", FOREVER])
    await log_in(page, hub.admin_token, start=f"/ui/tasks/{task.id}")
    await expect(page.locator("#log")).to_contain_text("up", timeout=WAIT_MS)
    await page.click("#cancel")
    await expect(page.locator("#task-state")).to_contain_text("cancelled", timeout=WAIT_MS)
    await expect(page.locator("#attempts")).to_contain_text("cancelled")
    await shot(page, "06-task-cancelled")
    assert (await client.get(task.id)).state == 6   # cancelled


@pytest.mark.asyncio
async def test_details_end_on_the_final_state_when_an_older_read_answers_last(
        hub: Hub, node: Agent, page: Page, client: Client, tmp_path: Path) -> None:
    """State changes in quick succession (a replayed stream, a fast cancel) each re-read
    the details; a read answered while the task still ran may land after the task ended.
    The page must still end on the final state: the newest read wins, and no re-read is
    dropped because an older answer replaced the element it was queued on."""
    gate = tmp_path / "go"
    script = ("import os, time\nprint('first line', flush=True)\n"
              f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.05)\n")
    task = await client.submit(argv=[PY, "-c", script])
    await log_in(page, hub.admin_token, start=f"/ui/tasks/{task.id}")
    await expect(page.locator("#log")).to_contain_text("first line", timeout=WAIT_MS)

    held: list[tuple[Route, APIResponse]] = []
    holding = True

    async def hold(route: Route) -> None:
        response = await route.fetch()
        if holding:
            held.append((route, response))    # answered now (running), delivered later
        else:
            await route.fulfill(response=response)

    await page.route(re.compile(r"/ui/tasks/t-[0-9a-z]+\?fragment=1$"), hold)
    await page.reload()           # the stream replays every state: a burst of re-reads
    await expect(page.locator("#log")).to_contain_text("first line", timeout=WAIT_MS)
    gate.touch()
    assert (await client.wait(task.id)).state == 4   # succeeded
    await expect(page.locator("#task-state")).to_contain_text("succeeded", timeout=WAIT_MS)
    holding = False
    assert held, "the page re-read no details while the task ran"
    for route, response in held:  # answers read while the task ran, delivered after its end
        await route.fulfill(response=response)
    await expect(page.locator("#attempts")).to_contain_text("succeeded", timeout=WAIT_MS)
    await expect(page.locator("#cancel")).to_have_count(0)


@pytest.mark.asyncio
async def test_retry_and_the_tenant_page(hub: Hub, node: Agent, page: Page,
                                         client: Client) -> None:
    """Retry opens the new task's page (its shareable link); the admin sees the tenant."""
    task = await client.submit(argv=["echo", "retry me"])
    await log_in(page, hub.admin_token, start=f"/ui/tasks/{task.id}")
    await expect(page.locator("#log-end")).to_have_text("succeeded", timeout=WAIT_MS)
    await page.click("#retry")
    await expect(page).not_to_have_url(re.compile(re.escape(task.id)))
    await expect(page.locator("#log")).to_contain_text("retry me", timeout=WAIT_MS)
    new_id = await page.locator("#task-id").inner_text()
    await expect(page.locator("#share")).to_have_attribute("href", f"/ui/tasks/{new_id}")
    await page.click("#nav-tenant")
    await expect(page.locator("#tenant-counts")).to_contain_text("succeeded")
    await shot(page, "07-tenant")


@pytest.mark.asyncio
async def test_download_an_artifact(hub: Hub, node: Agent, page: Page, client: Client,
                                    tmp_path: Path) -> None:
    """A task's output file is listed on its page and downloads byte for byte."""
    work = tmp_path / "work"
    work.mkdir()
    done = await client.run(command="printf 'report: 42\\n' > report.txt", cwd=str(work),
                            artifacts=["report.txt"])
    assert done.ok, done.stderr
    await log_in(page, hub.admin_token, start=f"/ui/tasks/{done.task.id}")
    link = page.locator("#artifacts a.artifact")
    await expect(link).to_contain_text("report.txt")
    await shot(page, "08-task-artifacts")
    async with page.expect_download() as info:
        await link.click()
    download = await info.value
    saved = tmp_path / "got.txt"
    await download.save_as(saved)
    assert saved.read_bytes() == b"report: 42\n"
    assert download.suggested_filename == "report.txt"

    # Any name may be an artifact's: it reaches the browser whole (RFC 6266 filename*).
    odd = "отчёт 截图.txt"   # (Chromium itself would turn a quote into _)
    (work / odd).write_text("odd\n")
    done = await client.run(command="true", cwd=str(work), artifacts=[odd])
    assert done.ok, done.stderr
    await page.goto(f"/ui/tasks/{done.task.id}")
    async with page.expect_download() as info:
        await page.locator("#artifacts a.artifact").click()
    download = await info.value
    assert download.suggested_filename == odd
