"""The browser worker's Handler: validates a call, runs its action on the worker's event
loop thread (async Playwright), streams the session's new console and network events to
stderr while the action runs, and prints the action's result as one JSON line on stdout.

Private args the node adds to every call: ``_cdp`` (the session's Chromium), ``_dir`` (its
files on the node) and ``_policy``. A new ``_cdp`` (the node restarted the browser) makes
the worker connect afresh; a browser gone underneath fails the call saying so, and the
node's next call starts a new one.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import json
import sys
import threading
from pathlib import Path
from typing import Any

from google.protobuf import json_format, struct_pb2
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeout

from cortex._proto.cortex.v1 import common_pb2, worker_pb2
from cortex.workers.browser import _evidence as evidence
from cortex.workers.browser._actions import ACTIONS
from cortex.workers.browser._args import ActionError, Args
from cortex.workers.browser._driver import Driver

__all__ = ["BrowserHandler"]

_EVENT_POLL_S = 0.05
_CANCEL_GRACE_S = 3.0
_DETACH_TIMEOUT_S = 3.0
_MAX_ERROR = 1000


class BrowserHandler:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="cortex-browser-loop", daemon=True)
        self._thread.start()
        self._driver: Driver | None = None
        atexit.register(self._detach)

    def _detach(self) -> None:
        """At exit: let go of the browser (it keeps running) and stop Playwright's driver,
        so the worker ends promptly instead of being killed after its grace."""
        driver = self._driver
        if driver is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(driver.disconnect(), self._loop).result(
                _DETACH_TIMEOUT_S)

    def handle(self, args: struct_pb2.Struct) -> worker_pb2.WorkerResult:
        raw: dict[str, Any] = json_format.MessageToDict(args)
        cdp, folder = raw.pop("_cdp", None), raw.pop("_dir", None)
        policy = raw.pop("_policy", {})
        task_har = raw.pop("har", False) if raw.get("action") != "har" else False
        if not isinstance(task_har, bool):
            return _failed(f"har must be true or false (a HAR of this action alone), "
                           f"got {task_har!r}")
        action = raw.get("action")
        if not isinstance(cdp, str) or not isinstance(folder, str):
            return _failed("the browser worker needs _cdp and _dir from its node")
        if action not in ACTIONS:
            known = ", ".join(sorted(ACTIONS))
            return _failed(f"unknown browser action {action!r}; known: {known}")
        fn, params = ACTIONS[action]
        try:
            parsed = Args(action, raw, params)
        except ActionError as exc:
            return _failed(str(exc))
        future = asyncio.run_coroutine_threadsafe(
            self._run(cdp, Path(folder), policy, fn, parsed, task_har=task_har), self._loop)
        return self._await(action, future)

    async def _run(self, cdp: str, folder: Path, policy: dict[str, Any], fn: Any,
                   args: Args, *, task_har: bool) -> dict[str, Any]:
        driver = self._driver
        if driver is None or driver.cdp_url != cdp or not driver.connected:
            if driver is not None:
                await driver.disconnect()
            self._driver = None
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            driver = Driver(cdp, folder, policy)
            await driver.connect()
            self._driver = driver
            for note in await evidence.resume(driver):
                driver.events.add("note", text=note)
        if task_har:  # a HAR of this one action: its own file, whatever else records
            await evidence.har_start(driver, content="embed", url_filter=None, task=True)
            try:
                result = await _until_dialog(driver, fn(driver, args))
            finally:
                har = await evidence.har_stop(driver, task=True)
            result["har"] = har
        else:
            result = await _until_dialog(driver, fn(driver, args))
        with contextlib.suppress(TimeoutError, ActionError, PlaywrightError):
            result["page"] = await asyncio.wait_for(_page_info(driver), 2)
        return result

    def _await(self, action: str, future: concurrent.futures.Future[dict[str, Any]]
               ) -> worker_pb2.WorkerResult:
        shown = self._driver.events.last_seq if self._driver is not None else 0
        try:
            while True:
                try:
                    result = future.result(timeout=_EVENT_POLL_S)
                    break
                except concurrent.futures.TimeoutError:
                    shown = self._stream_events(shown)
        except KeyboardInterrupt:
            future.cancel()
            with contextlib.suppress(BaseException):  # cancelled: how it ended does not matter
                future.result(timeout=_CANCEL_GRACE_S)
            return worker_pb2.WorkerResult(state=common_pb2.CANCELLED, error="interrupted")
        except ActionError as exc:
            self._stream_events(shown)
            return _failed(f"{action}: {exc}")
        except PlaywrightTimeout as exc:
            self._stream_events(shown)
            return _failed(f"{action}: {_first_line(exc)} (raise timeout_s, or wait for the "
                           "page first)")
        except PlaywrightError as exc:
            self._stream_events(shown)
            return _failed(f"{action}: {_explain(exc)}")
        self._stream_events(shown)
        text = json.dumps({"ok": True, "action": action, **result}, default=str)
        print(text)
        return worker_pb2.WorkerResult(state=common_pb2.SUCCEEDED, text=text[:4096])

    def _stream_events(self, shown: int) -> int:
        driver = self._driver
        if driver is None:
            return shown
        events, _ = driver.events.since(shown, limit=1000)
        for event in events:
            print(json.dumps(event, default=str), file=sys.stderr)
            shown = event["seq"]
        return shown


async def _until_dialog(driver: Driver, action: Any) -> dict[str, Any]:
    """The action's result; or, when the page opens a dialog first (which blocks the page
    until it is answered), a note saying so instead of waiting out the action's timeout."""
    task: asyncio.Task[dict[str, Any]] = asyncio.ensure_future(action)
    dialog = driver.next_dialog()
    try:
        either: list[asyncio.Future[Any]] = [task, dialog]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        return {"dialog_opened": True,
                "note": "a dialog opened and blocks the page: answer it with the dialog action "
                        "(accept=true/false, text= for a prompt)"}
    finally:
        dialog.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _page_info(driver: Driver) -> dict[str, Any]:
    from cortex.workers.browser._actions import _page_info as info

    return await info(driver)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line[:_MAX_ERROR]


def _explain(exc: PlaywrightError) -> str:
    text = str(exc)
    if "Target page, context or browser has been closed" in text or "Browser closed" in text:
        return ("the session's browser or tab went away underneath (killed or crashed); the "
                "next call restarts the browser - state not saved with save is lost")
    if "net::ERR_" in text:
        code = text[text.index("net::ERR_"):].split()[0]
        return f"the page could not be loaded: {code} (is the host reachable from the node?)"
    return _first_line(exc)


def _failed(reason: str) -> worker_pb2.WorkerResult:
    return worker_pb2.WorkerResult(state=common_pb2.FAILED, error=reason[:_MAX_ERROR])
