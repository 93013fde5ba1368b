"""MCP tools for the browser: a persistent Chromium session on a node, driven by refs from
accessibility snapshots. Every call is one browser task on the session's node (audited,
cancellable, with a deadline); answers are compact, screenshots come back as images.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from mcp.types import CallToolResult, ImageContent
from pydantic import BaseModel, Field

from cortex.mcp._binding import Binding, Resolve
from cortex.mcp._errors import ToolError, tool_errors
from cortex.mcp._models import result
from cortex.sdk import BrowserError, BrowserSession

__all__ = ["BROWSER_TOOLS", "SNAPSHOT_CHARS", "BrowserTools"]

BROWSER_TOOLS = (
    "browser_open", "browser_navigate", "browser_snapshot", "browser_click", "browser_type",
    "browser_fill", "browser_press", "browser_act", "browser_screenshot", "browser_eval",
    "browser_wait", "browser_console", "browser_network", "browser_record", "browser_close",
)
TASK_TIMEOUT_S = 45.0
"""Each action's task deadline on the node: below the tools' 50 s bound."""
CALL_LIMIT_S = 50.0
"""The longest a browser tool waits (MCP clients give up on a call at about 60 s)."""
SNAPSHOT_CHARS = 20_000
"""A snapshot's text is cut here (with a hint to scope it); about 5k tokens."""
IMAGE_BYTES = 2 * 1024 * 1024
"""The largest screenshot returned as an image."""
ActName = Literal["hover", "scroll", "drag", "select", "dialog", "upload", "tabs", "back",
                  "forward", "reload"]

Session = Annotated[str, Field(description=(
    "The browser session's name (from browser_open); its tabs, cookies and storage persist "
    "between calls."))]
Ref = Annotated[str | None, Field(description=(
    'An element ref from the latest browser_snapshot, e.g. "e12".'))]
Selector = Annotated[str | None, Field(description=(
    "A CSS or Playwright selector, when there is no ref (prefer refs)."))]
Since = Annotated[int | None, Field(ge=0, description=(
    "Only events after this seq (the last_seq of the previous call)."))]
Limit = Annotated[int, Field(ge=1, le=200, description="At most this many events.")]


class BrowserAnswer(BaseModel):
    """One browser action's answer: what the node's worker returned, and what to do next."""

    session: str
    action: str
    answer: dict[str, Any]
    hint: str | None = None


class Snapshot(BaseModel):
    session: str
    snapshot: str
    cut: bool = False
    url: str | None = None
    hint: str | None = None


def _session(b: Binding, name: str) -> BrowserSession:
    return BrowserSession(b.client, name, timeout=TASK_TIMEOUT_S)


@asynccontextmanager
async def _browser_call(b: Binding, session: str, action: str) -> AsyncIterator[None]:
    """Node failures as tool errors (their reason already says what to do, e.g. "ref e12 is
    not on the page any more ...: take a fresh snapshot"), bounded by CALL_LIMIT_S."""
    with tool_errors(credentials=b.credentials):
        try:
            async with asyncio.timeout(CALL_LIMIT_S):
                yield
        except BrowserError as e:
            raise ToolError(str(e)) from e
        except TimeoutError as e:
            # Leaving run() cancelled the action's task: nothing keeps going on the node.
            raise ToolError(
                f"browser {action} in session {session} did not finish within "
                f"{CALL_LIMIT_S:g} s and was cancelled: the session's node may be busy or "
                "offline (list_nodes shows it); retry, or wait for the page first") from e


def _clean(answer: dict[str, Any]) -> dict[str, Any]:
    """The worker's answer without what the tool result already says."""
    return {k: v for k, v in answer.items() if k not in ("ok", "action")}


class BrowserTools:
    """Mixed into `CortexTools`."""

    _resolve: Resolve

    async def _do(self, session: str, action: str, /, *, _hint: str | None = None,
                  **args: Any) -> CallToolResult:
        b = self._resolve()
        async with _browser_call(b, session, action):
            answer = await _session(b, session).do(action, **args)
        hint = _hint
        if answer.get("dialog_opened"):
            hint = "a dialog blocks the page: browser_act(action='dialog', args={'accept': true})"
        return result(BrowserAnswer(session=session, action=action, answer=_clean(answer),
                                    hint=hint))

    async def _events(self, session: str, action: str, /, **args: Any) -> CallToolResult:
        b = self._resolve()
        async with _browser_call(b, session, action):
            answer = _clean(await _session(b, session).do(action, **args))
        events = answer.get("events") or []
        hint = None
        if answer.get("more") and events:
            hint = (f"more events match: call again with since={events[-1]['seq']} for the "
                    "next ones")
        return result(BrowserAnswer(session=session, action=action, answer=answer,
                                    hint=hint))

    async def browser_open(
        self,
        session: Annotated[str | None, Field(description=(
            "A name for the session (reuse it in every later call); omit for a fresh one."
        ))] = None,
        url: Annotated[str | None, Field(description="A page to open first.")] = None,
        labels: Annotated[list[str] | None, Field(description=(
            'Open it on a node carrying these labels, each "key=value".'))] = None,
        node_id: Annotated[str | None, Field(description=(
            "Open it on this node (list_nodes shows the ones offering the browser)."))] = None,
    ) -> Annotated[CallToolResult, BrowserAnswer]:
        """Open (or rejoin) a persistent browser session on a node and answer its name and
        tabs. Then: browser_snapshot to see the page with element refs, and
        browser_click / browser_type to act on those refs."""
        b = self._resolve()
        name = session or "(new)"
        async with _browser_call(b, name, "open"):
            s = await BrowserSession.open(b.client, session, node_id=node_id, labels=labels,
                                          url=url, timeout=TASK_TIMEOUT_S)
            answer = await s.do("status")
        return result(BrowserAnswer(
            session=s.name, action="open", answer=_clean(answer),
            hint=f"use session={s.name!r} in later calls; browser_snapshot shows the page"))

    async def browser_navigate(
        self, session: Session,
        url: Annotated[str, Field(description="The address to go to.")],
        wait_until: Annotated[Literal["load", "domcontentloaded", "networkidle", "commit"],
                              Field(description="When navigation counts as done.")] = "load",
    ) -> Annotated[CallToolResult, BrowserAnswer]:
        """Go to a URL in the session's selected tab; answers the HTTP status and title."""
        return await self._do(session, "navigate", url=url, wait_until=wait_until)

    async def browser_snapshot(
        self, session: Session, ref: Ref = None, selector: Selector = None,
        depth: Annotated[int | None, Field(ge=1, description="Only this many levels.")] = None,
        diff: Annotated[bool, Field(description=(
            "Only what changed since this tab's previous snapshot."))] = False,
    ) -> Annotated[CallToolResult, Snapshot]:
        """The page's accessibility tree as compact text with element refs ([ref=e12]):
        the way to see a page and to find what to click or type into. Refs stay valid until
        the page changes; take a new snapshot after navigating."""
        b = self._resolve()
        async with _browser_call(b, session, "snapshot"):
            answer = await _session(b, session).do(
                "snapshot", ref=ref, selector=selector, depth=depth, diff=diff or None,
                max_chars=SNAPSHOT_CHARS)
        cut = bool(answer.get("cut"))
        page = answer.get("page")
        return result(Snapshot(
            session=session, snapshot=str(answer.get("text", "")), cut=cut,
            url=page.get("url") if isinstance(page, dict) else None,
            hint="cut at the size limit: snapshot a part with ref/selector, or lower depth"
            if cut else None))

    async def browser_click(
        self, session: Session, ref: Ref = None, selector: Selector = None,
        button: Literal["left", "right", "middle"] = "left",
        count: Annotated[int, Field(ge=1, le=3, description="2 = double click.")] = 1,
        modifiers: Annotated[list[str] | None, Field(description=(
            'Keys held while clicking, e.g. ["Shift"].'))] = None,
    ) -> Annotated[CallToolResult, BrowserAnswer]:
        """Click an element, named by its ref from browser_snapshot (or a selector)."""
        return await self._do(session, "click", ref=ref, selector=selector, button=button,
                              count=count, modifiers=modifiers)

    async def browser_type(
        self, session: Session, text: Annotated[str, Field(description="What to type.")],
        ref: Ref = None, selector: Selector = None,
        submit: Annotated[bool, Field(description="Press Enter afterwards.")] = False,
        slowly: Annotated[bool, Field(description=(
            "Type key by key (for pages that react to each key) instead of filling."))]
        = False,
    ) -> Annotated[CallToolResult, BrowserAnswer]:
        """Type text into an input (by ref from browser_snapshot, or selector), replacing
        what it held; submit=true presses Enter afterwards."""
        return await self._do(session, "type", ref=ref, selector=selector, text=text,
                              submit=submit or None, slowly=slowly or None)

    async def browser_fill(
        self, session: Session,
        fields: Annotated[list[dict[str, Any]], Field(min_length=1, description=(
            'Several inputs at once: [{"ref": "e7", "value": "Ada"}, {"ref": "e9", '
            '"value": true}] (true/false for checkboxes, a list for multi-selects).'))],
    ) -> Annotated[CallToolResult, BrowserAnswer]:
        """Fill several form fields (text inputs, checkboxes, selects) in one call."""
        return await self._do(session, "fill", fields=fields)

    async def browser_press(
        self, session: Session,
        keys: Annotated[str | list[str], Field(description=(
            'A key or chord ("Enter", "Control+Shift+K"), or a list pressed in turn.'))],
        ref: Ref = None, selector: Selector = None,
    ) -> Annotated[CallToolResult, BrowserAnswer]:
        """Press a key or key chord, on an element when ref/selector is given (else on the
        page)."""
        return await self._do(session, "press", keys=keys, ref=ref, selector=selector)

    async def browser_act(
        self, session: Session,
        action: Annotated[ActName, Field(description=(
            "The less common actions; docs/browser.md lists each one's args."))],
        args: Annotated[dict[str, Any] | None, Field(description=(
            'Its arguments, e.g. {"ref": "e3"} (hover), {"dy": 800} (scroll), '
            '{"from_ref": "e4", "to_ref": "e9"} (drag), {"ref": "e5", "values": ["b"]} '
            '(select), {"accept": true} (dialog), {"ref": "e6", "paths": ["/tmp/a.pdf"]} '
            '(upload, files on the node), {"op": "new", "url": "..."} (tabs: op list, new, '
            'select or close with index).'))] = None,
    ) -> Annotated[CallToolResult, BrowserAnswer]:
        """Hover, scroll, drag and drop, select options, answer a dialog, upload files that
        are on the node, list/open/select/close tabs, go back or forward, reload."""
        given = args or {}
        bad = sorted(k for k in given if k == "action" or k.startswith("_"))
        if bad:
            raise ToolError(f"args may not hold {', '.join(bad)}: put the action's own "
                            f"arguments in args (docs/browser.md lists {action}'s)")
        return await self._do(session, action, **given)

    async def browser_screenshot(
        self, session: Session, ref: Ref = None, selector: Selector = None,
        full: Annotated[bool, Field(description="The whole page, not just the view.")] = False,
        image: Annotated[Literal["jpeg", "png"], Field(description=(
            "jpeg (smaller, the default) or png (exact pixels)."))] = "jpeg",
    ) -> Annotated[CallToolResult, BrowserAnswer]:
        """A screenshot of the view, the full page or one element (ref/selector), returned
        as an image you can look at."""
        b = self._resolve()
        async with _browser_call(b, session, "screenshot"):
            answer = await _session(b, session).do(
                "screenshot", ref=ref, selector=selector, full=full or None, format=image,
                quality=70 if image == "jpeg" else None, max_bytes=IMAGE_BYTES)
        size = int(answer.get("bytes", 0))
        if "base64" not in answer:
            raise ToolError(
                f"the screenshot is {size} bytes, over the {IMAGE_BYTES} an image may have "
                f"here (it is on the node at {answer.get('path')}): take the view without "
                "full=true, or one element with ref")
        shown = result(BrowserAnswer(
            session=session, action="screenshot",
            answer={"bytes": size, "format": image, "path": answer.get("path")},
            hint="the image is in this result"))
        shown.content.append(ImageContent(type="image", mime_type=f"image/{image}",
                                          data=answer["base64"]))
        return shown

    async def browser_eval(
        self, session: Session,
        expression: Annotated[str, Field(description=(
            'JavaScript to evaluate in the page, e.g. "document.title", or a function of '
            'the element with a ref: "(el) => el.value".'))],
        ref: Ref = None, selector: Selector = None,
    ) -> Annotated[CallToolResult, BrowserAnswer]:
        """Evaluate JavaScript in the page (or on an element) and answer its JSON value
        (capped); a thrown error fails the call with its message."""
        return await self._do(session, "eval", expression=expression, ref=ref,
                              selector=selector, max_chars=SNAPSHOT_CHARS)

    async def browser_wait(
        self, session: Session,
        text: Annotated[str | None, Field(description="Until this text is visible.")] = None,
        text_gone: Annotated[str | None, Field(description=(
            "Until this text is hidden or gone."))] = None,
        selector: Annotated[str | None, Field(description=(
            "Until an element matching this selector is in `state`."))] = None,
        state: Literal["visible", "hidden", "attached", "detached"] = "visible",
        url: Annotated[str | None, Field(description=(
            'Until the URL matches this glob, e.g. "**/app".'))] = None,
        load_state: Literal["load", "domcontentloaded", "networkidle"] | None = None,
        predicate: Annotated[str | None, Field(description=(
            "Until this JavaScript expression is truthy."))] = None,
        timeout_s: Annotated[float, Field(gt=0, le=40, description=(
            "Give up after this long (at most 40 s)."))] = 15.0,
    ) -> Annotated[CallToolResult, BrowserAnswer]:
        """Wait for one condition (give exactly one of text, text_gone, selector, url,
        load_state, predicate); a timeout says what was awaited."""
        return await self._do(session, "wait", text=text, text_gone=text_gone,
                              selector=selector, state=state if selector else None, url=url,
                              load_state=load_state, predicate=predicate, timeout_s=timeout_s)

    async def browser_console(
        self, session: Session, since: Since = None,
        level: Annotated[Literal["error", "warning", "info", "log", "debug"] | None, Field(
            description='Only this level, e.g. "error".')] = None,
        limit: Limit = 50,
    ) -> Annotated[CallToolResult, BrowserAnswer]:
        """The session's console messages, uncaught page errors and tab crashes (level,
        text, url), oldest first. Pass the answer's last_seq as since next time to get only
        new ones."""
        return await self._events(session, "logs", since=since, level=level, limit=limit,
                                  kinds=["console", "pageerror", "crash"])

    async def browser_network(
        self, session: Session, since: Since = None,
        failed_only: Annotated[bool, Field(description=(
            "Only failed requests and responses with status >= 400."))] = False,
        url: Annotated[str | None, Field(description="Only URLs containing this.")] = None,
        limit: Limit = 50,
    ) -> Annotated[CallToolResult, BrowserAnswer]:
        """The session's requests, responses and failed requests (with their error text),
        oldest first. Pass the answer's last_seq as since next time to get only new ones."""
        return await self._events(session, "network", since=since,
                                  failed_only=failed_only or None, url=url, limit=limit)

    async def browser_record(
        self, session: Session,
        op: Annotated[Literal["start", "stop"], Field(description="Start or stop.")],
        fps: Annotated[int, Field(ge=1, le=30, description="Frames per second.")] = 15,
    ) -> Annotated[CallToolResult, BrowserAnswer]:
        """Start or stop recording a video (MP4) of the session's selected tab; stop
        answers the file on the node and its size."""
        if op == "start":
            return await self._do(session, "record", op="start", fps=fps)
        return await self._do(
            session, "record", op="stop",
            _hint="the video stays on the session's node; the user can download it with "
                 "the SDK's BrowserSession.download(path)")

    async def browser_close(self, session: Session) -> Annotated[CallToolResult, BrowserAnswer]:
        """Close the session: its browser is stopped and its profile (cookies, storage,
        files) deleted on the node."""
        return await self._do(session, "close")
