"""The worker's hold on one session's Chromium: a Playwright connection over CDP, the
listeners that feed the event log, the tabs and the selected one, and how a ref or a
selector becomes an element. Runs on the worker's event loop thread (async Playwright).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
from pathlib import Path
from typing import Any

from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Download,
    Locator,
    Page,
    Playwright,
    Request,
    Response,
    async_playwright,
)

from cortex.workers.browser._args import ActionError, Args
from cortex.workers.browser._events import EventLog
from cortex.workers.browser._outbox import publish

__all__ = ["Driver"]

_CONNECT_TIMEOUT_MS = 15_000
_BODIES_KEPT = 500  # responses whose bodies can still be asked for, newest
_REF = re.compile(r"^[a-z]+\d+(?:[a-z]+\d+)*$")  # e12, or f1e5 in a frame
_ALLOWED_SCHEMES = ("http", "https", "about", "data")


class Driver:
    def __init__(self, cdp_url: str, session_dir: Path, policy: dict[str, Any]) -> None:
        self.cdp_url = cdp_url
        self.dir = session_dir
        self.allow_file_urls = bool(policy.get("allow_file_urls", False))
        self.events = EventLog(session_dir / "events.jsonl")
        self._pw: Playwright | None = None
        self._browser: Browser | None = None
        self._context: BrowserContext | None = None
        self._page: Page | None = None
        self.crashed: set[Page] = set()
        self.dialogs: dict[Page, Dialog] = {}
        self.responses: collections.OrderedDict[int, Response] = collections.OrderedDict()
        self.snapshots: dict[Page, str] = {}  # the last snapshot per tab, for diff=true
        self.recorder: Any = None
        self.har: Path | None = None
        self._downloads: set[asyncio.Task[None]] = set()
        self._download_n = 0
        self._dialog_waiters: list[asyncio.Future[None]] = []

    # --- connection ------------------------------------------------------------------

    async def connect(self) -> None:
        self._pw = await async_playwright().start()
        self._browser = await self._pw.chromium.connect_over_cdp(
            self.cdp_url, timeout=_CONNECT_TIMEOUT_MS)
        contexts = self._browser.contexts
        self._context = contexts[0] if contexts else await self._browser.new_context()
        self._context.on("page", self._watch)
        self._context.on("request", self._on_request)
        self._context.on("response", self._on_response)
        self._context.on("requestfailed", self._on_failed)
        for page in self._context.pages:
            self._watch(page)
        pages = self._context.pages
        index = self._saved_index()
        self._page = pages[index] if 0 <= index < len(pages) else (pages[-1] if pages else None)

    @property
    def connected(self) -> bool:
        return self._browser is not None and self._browser.is_connected()

    async def disconnect(self) -> None:
        """Drop the connection; Chromium and its pages stay (close over CDP only detaches)."""
        with contextlib.suppress(Exception):
            if self._browser is not None:
                await self._browser.close()
        with contextlib.suppress(Exception):
            if self._pw is not None:
                await self._pw.stop()
        self._browser = self._pw = None

    @property
    def context(self) -> BrowserContext:
        if self._context is None:
            raise ActionError("not connected to the session's browser")
        return self._context

    # --- tabs --------------------------------------------------------------------------

    async def page(self, *, usable: bool = True) -> Page:
        """The selected tab (one is opened if none is left)."""
        page = self._page
        if page is None or page.is_closed():
            pages = self.context.pages
            page = pages[-1] if pages else await self.context.new_page()
            self.select(page)
        if usable and page in self.crashed:
            raise ActionError("the page crashed (its renderer is gone): reload it (action "
                              "reload) or open another tab (tabs op=new)")
        return page

    def select(self, page: Page) -> None:
        self._page = page
        with contextlib.suppress(ValueError, OSError):
            (self.dir / "selected-tab").write_text(str(self.context.pages.index(page)))

    def _saved_index(self) -> int:
        try:
            return int((self.dir / "selected-tab").read_text())
        except (OSError, ValueError):
            return -1

    async def tabs(self) -> list[dict[str, Any]]:
        current = self._page
        rows = []
        for i, page in enumerate(self.context.pages):
            title = ""
            if page not in self.crashed:
                with contextlib.suppress(Exception):
                    title = await asyncio.wait_for(page.title(), 2)
            rows.append({"index": i, "url": page.url, "title": title,
                         "selected": page is current, "crashed": page in self.crashed})
        return rows

    # --- targets -----------------------------------------------------------------------

    async def optional_target(self, args: Args) -> Locator | None:
        """The element named by ref/selector, or None when the action names none."""
        if args.given("ref") or args.given("selector"):
            return await self.target(args)
        return None

    async def target(self, args: Args, *, ref: str = "ref", selector: str = "selector"
                     ) -> Locator:
        """The element an action names by snapshot ref or by Playwright selector."""
        page = await self.page()
        if args.given(ref):
            value = args[ref]
            if not _REF.match(value):
                raise ActionError(f"{ref} {value!r} is not a snapshot ref (like e12); "
                                  "take a snapshot to get refs")
            loc = page.locator(f"aria-ref={value}")
            if await loc.count() == 0:
                raise ActionError(f"ref {value} is not on the page any more (the page changed "
                                  "since that snapshot, or the worker restarted): take a "
                                  "fresh snapshot and use its refs")
            return loc
        if args.given(selector):
            return page.locator(args[selector]).first
        raise ActionError(f"{args.action} needs {ref} (from a snapshot) or {selector}")

    def check_url(self, url: str) -> None:
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "file" and self.allow_file_urls:
            return
        if scheme not in _ALLOWED_SCHEMES:
            note = (" (file:// is off by default: the node must allow it)" if scheme == "file"
                    else "")
            raise ActionError(f"URL scheme {scheme or '(none)'!r} is not allowed on this node"
                              f"{note}; allowed: {', '.join(_ALLOWED_SCHEMES)} - give a full "
                              "URL like https://example.test/")

    # --- listeners ---------------------------------------------------------------------

    def _watch(self, page: Page) -> None:
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self._on_pageerror(page, exc))
        page.on("crash", self._on_crash)
        page.on("dialog", self._on_dialog)
        page.on("download", self._on_download)

    def _on_console(self, msg: ConsoleMessage) -> None:
        loc = msg.location or {}
        self.events.add("console", level=msg.type, text=msg.text[:2000],
                        url=loc.get("url", ""), line=loc.get("lineNumber", 0),
                        column=loc.get("columnNumber", 0))

    def _on_pageerror(self, page: Page, exc: Exception) -> None:
        self.events.add("pageerror", level="error", text=str(exc)[:2000], url=page.url)

    def _on_crash(self, page: Page) -> None:
        self.crashed.add(page)
        self.events.add("crash", level="error", url=page.url,
                        text="the page's renderer crashed; reload it to go on")

    def _on_dialog(self, dialog: Dialog) -> None:
        if dialog.page is not None:
            self.dialogs[dialog.page] = dialog
        self.events.add("dialog", type=dialog.type, text=dialog.message[:2000],
                        default=dialog.default_value)
        for waiter in self._dialog_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._dialog_waiters.clear()

    def next_dialog(self) -> asyncio.Future[None]:
        """Resolved when a dialog opens: it blocks the page until the dialog action."""
        waiter = asyncio.get_running_loop().create_future()
        self._dialog_waiters.append(waiter)
        return waiter

    def _on_request(self, request: Request) -> None:
        self.events.add("request", method=request.method, url=request.url[:2000],
                        resource=request.resource_type)

    def _on_response(self, response: Response) -> None:
        event = self.events.add("response", method=response.request.method,
                                url=response.url[:2000], status=response.status,
                                resource=response.request.resource_type)
        self.responses[event["seq"]] = response
        while len(self.responses) > _BODIES_KEPT:
            self.responses.popitem(last=False)

    def _on_failed(self, request: Request) -> None:
        self.events.add("requestfailed", level="error", method=request.method,
                        url=request.url[:2000], error=request.failure or "failed",
                        resource=request.resource_type)

    def _on_download(self, download: Download) -> None:
        task = asyncio.get_running_loop().create_task(self._save_download(download))
        self._downloads.add(task)
        task.add_done_callback(self._downloads.discard)

    async def _save_download(self, download: Download) -> None:
        self._download_n += 1
        name = Path(download.suggested_filename).name or "download"
        path = self.dir / "downloads" / f"{self._download_n}-{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            await download.save_as(path)
        except Exception as exc:  # noqa: BLE001 - reported as an event, the page goes on
            self.events.add("download", level="error", url=download.url, error=str(exc)[:500])
            return
        self.events.add("download", url=download.url[:2000], path=str(path),
                        bytes=path.stat().st_size, suggested=download.suggested_filename)
        publish(self.dir, "file", path)

    async def settle_downloads(self, timeout_s: float) -> None:
        if self._downloads:
            await asyncio.wait(list(self._downloads), timeout=timeout_s)
