"""The dashboard's sessions and tenants pages in real Chromium: a browser session opened
through the SDK appears with the screenshot it took, and while it records video its live
view shows the newest frame streaming into the hub (a real JPEG that changes as the page
animates); a hub-admin changes a tenant's limits with the page's form.

Pages are saved under test-artifacts/dashboard/ for a person to look at; any console or
page error fails the test.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import pytest
import pytest_asyncio
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from cortex.hub.auth import issue_api_token
from cortex.hub.server import Hub
from cortex.node.agent import Agent
from cortex.sdk import BrowserSession, Client
from cortex.skills.browser import find_chromium

sys.path.insert(0, str(Path(__file__).parents[1] / "browser"))
from browser_site import serve_site

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(180),
              pytest.mark.skipif(find_chromium() is None,
                                 reason="no Chromium: run `make system-deps`")]

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
WAIT_MS = 30_000
# Every wait on the page gets the same patience (Playwright's default is 5 s): a loaded
# CI machine can take longer than that to answer a re-read or swap a fragment.
expect.set_options(timeout=WAIT_MS)
_LOADED = "img => img.complete && img.naturalWidth > 0"


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with serve_site() as base:
        yield base


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """SQLite only: the HTTP tests cover both stores; here the browser is the subject."""
    return str(tmp_path / "hub" / "hub.db")


@pytest_asyncio.fixture
async def page(hub: Hub) -> AsyncIterator[Page]:
    """A dashboard tab in Debian's Chromium; no console error may occur in it."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip("needs Debian chromium: CORTEX_NEED_BROWSER=1 bash "
                    "scripts/ensure_system_deps.sh")
    problems: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            problems.append(f"console: {msg.text}")

    async with async_playwright() as pw:
        browser: Browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            context = await browser.new_context(
                base_url=f"http://127.0.0.1:{hub.http_port}",
                viewport={"width": 1280, "height": 900})
            tab = await context.new_page()
            tab.on("console", on_console)
            tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            yield tab
            await context.close()
        finally:
            await browser.close()
    assert problems == []


async def browser_of_tenant(hub: Hub, tenant: str) -> httpx2.AsyncClient:
    """A plain HTTP client logged in to the dashboard as an admin of `tenant`."""
    await hub.store.ensure_tenant(tenant, now=time.time())
    token = await issue_api_token(hub.store, tenant=tenant, role="admin", name="t",
                                  now=time.time())
    http = httpx2.AsyncClient(base_url=f"http://127.0.0.1:{hub.http_port}")
    form = await http.get("/ui/login")
    (secret,) = re.findall(r'name="csrf" value="([^"]+)"', form.text)
    assert (await http.post("/ui/login", data={"token": token, "csrf": secret})
            ).status_code == 303
    return http


async def log_in(page: Page, token: str, start: str) -> None:
    await page.goto(start)
    await expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    await page.fill("#token", token)
    await page.click("#login")
    await expect(page).to_have_url(re.compile(re.escape(start) + "$"))


@pytest.mark.asyncio
async def test_a_session_shows_its_screenshot_and_a_live_view_while_recording(
        hub: Hub, node: Agent, client: Client, site: str, page: Page) -> None:
    """Open a session with the SDK and take a screenshot: the page shows that very image.
    Start recording an animated page: a live frame (JPEG) appears and changes; stopping
    the recording brings the screenshot back."""
    browser = await BrowserSession.open(client, "shop", url=f"{site}/app")
    png = await browser.screenshot()
    await log_in(page, hub.admin_token, "/ui/sessions")
    row = page.locator("#session-shop")
    await expect(row).to_contain_text("browser")
    await expect(row).to_contain_text("screenshot")
    img = row.locator("img.screenshot")
    await img.wait_for(timeout=WAIT_MS)
    await page.wait_for_function(_LOADED, arg=await img.element_handle(), timeout=WAIT_MS)
    served = await page.request.get(await img.get_attribute("src") or "")
    assert served.ok
    assert await served.body() == png
    assert served.headers["cache-control"] == "private, max-age=3600"   # immutable
    assert served.headers["vary"] == "Cookie"      # cached for this login only
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "09-sessions.png"), full_page=True)

    await browser.navigate(f"{site}/animate")
    await browser.record_start(fps=10)
    try:
        live = row.locator("img.live")
        await expect(row.locator(".recording")).to_be_visible(timeout=WAIT_MS)
        await live.wait_for(timeout=WAIT_MS)
        await page.wait_for_function(
            "() => { const i = document.querySelector('#session-shop img.live');"
            " return i && i.complete && i.naturalWidth > 0; }", timeout=WAIT_MS)
        src = await live.get_attribute("src") or ""
        frame = await page.request.get(src)
        assert frame.headers["content-type"] == "image/jpeg"
        assert frame.headers["cache-control"] == "private, max-age=30"  # a refresh reuses it
        assert frame.headers["vary"] == "Cookie"
        first = await frame.body()
        assert first[:3] == b"\xff\xd8\xff"
        await page.screenshot(path=str(SHOTS / "10-session-live.png"), full_page=True)
        changed = False
        for _ in range(40):   # a new fragment lands every keyframe interval (2 s)
            await page.wait_for_timeout(500)
            if (await (await page.request.get(src)).body()) != first:
                changed = True
                break
        assert changed, "the live frame never changed while the page animated"
        # The image's URL names the newest fragment: it moves on when a newer one lands.
        await expect(live).not_to_have_attribute("src", src, timeout=WAIT_MS)
        other = await browser_of_tenant(hub, "other")
        try:
            assert (await other.get(src)).status_code == 404   # acme's recording, unseen
            assert 'id="session-shop"' not in (await other.get("/ui/sessions")).text
        finally:
            await other.aclose()
    finally:
        await browser.record_stop()
    await expect(row.locator(".recording")).to_have_count(0, timeout=WAIT_MS)
    await expect(row.locator("img.screenshot")).to_be_visible(timeout=WAIT_MS)
    await browser.close()
    await expect(row).to_contain_text("closed", timeout=WAIT_MS)

    # The screenshot is in this browser's cache now; another login in the same browser
    # must not be shown it from there: it is fetched again, and refused.
    shot_src = await row.locator("img.screenshot").get_attribute("src") or ""
    await page.click("#logout")
    await hub.store.ensure_tenant("other", now=time.time())
    token = await issue_api_token(hub.store, tenant="other", role="admin", name="t",
                                  now=time.time())
    await log_in(page, token, "/ui/sessions")
    probe = await page.context.new_page()   # same cache and cookies; its 404 is expected
    again = await probe.goto(shot_src)
    assert again is not None
    assert again.status == 404, "another tenant's login was shown a cached screenshot"
    await probe.close()


@pytest.mark.asyncio
async def test_a_hub_admin_changes_limits_in_the_browser(hub: Hub, page: Page) -> None:
    """The form (with its hidden CSRF token) stores the new weight and quota; the page
    shows them after the redirect."""
    await hub.store.ensure_tenant("acme", now=time.time())
    await log_in(page, hub.admin_token, "/ui/tenant")
    form = page.locator("#limits-acme")
    await form.locator('input[name="weight"]').fill("3")
    await form.locator('input[name="tasks"]').fill("5")
    await form.locator('input[name="cpus"]').fill("2.5")
    await form.locator("button").click()
    await expect(page).to_have_url(re.compile(r"/ui/tenant#tenant-acme$"))
    acme = page.locator("#tenant-acme")
    await expect(acme.locator(".weight")).to_have_text("3")
    await expect(acme.locator(".quota-tasks .limit")).to_have_text("5")
    await expect(acme.locator(".quota-cpus .limit")).to_have_text("2.5")
    rec = await hub.store.get_tenant("acme")
    assert rec is not None
    assert (rec.weight, rec.quota) == (3.0, {"tasks": 5, "cpus": 2.5})
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "11-tenants-limits.png"), full_page=True)
