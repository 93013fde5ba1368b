"""The browser actions: name -> (coroutine, the args it takes). Each returns a JSON-able
dict; an `ActionError` fails the call with its message."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, cast

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeout

from cortex.workers.browser import _evidence as evidence
from cortex.workers.browser._args import ActionError, Args, Param
from cortex.workers.browser._driver import Driver
from cortex.workers.browser._outbox import publish
from cortex.workers.browser._snapshot import cap, changes, compact_ax_tree, to_json

__all__ = ["ACTIONS"]

Action = Callable[[Driver, Args], Awaitable[dict[str, Any]]]

MAX_RESULT_CHARS = 64 << 10
MAX_SCREENSHOT_BYTES = 8 << 20
_WAIT_UNTIL = ("load", "domcontentloaded", "networkidle", "commit")
_T = Param("float", 15.0)  # timeout_s of one action
_TARGET = {"ref": Param("str"), "selector": Param("str")}


def _ms(args: Args) -> float:
    if args["timeout_s"] <= 0:
        raise ActionError(f"{args.action}: timeout_s must be > 0")
    return float(args["timeout_s"]) * 1000


async def _page_info(d: Driver) -> dict[str, Any]:
    page = await d.page(usable=False)
    info: dict[str, Any] = {"url": page.url}
    if page in d.dialogs:
        dlg = d.dialogs[page]
        info["dialog"] = {"type": dlg.type, "text": dlg.message}
    return info


# --- session, tabs, navigation -------------------------------------------------------------

async def open_(d: Driver, a: Args) -> dict[str, Any]:
    if a.given("url"):
        d.check_url(a["url"])
        page = await d.page(usable=False)
        await page.goto(a["url"], wait_until=a["wait_until"], timeout=_ms(a))
    return {"tabs": await d.tabs(), "events_seq": d.events.last_seq}


async def goto(d: Driver, a: Args) -> dict[str, Any]:
    a.require("url")
    d.check_url(a["url"])
    page = await d.page()
    response = await page.goto(a["url"], wait_until=a["wait_until"], timeout=_ms(a))
    return {"status": response.status if response else None, "title": await page.title()}


async def back(d: Driver, a: Args) -> dict[str, Any]:
    page = await d.page()
    response = await page.go_back(wait_until=a["wait_until"], timeout=_ms(a))
    return {"moved": response is not None or page.url != "", "title": await page.title()}


async def forward(d: Driver, a: Args) -> dict[str, Any]:
    page = await d.page()
    response = await page.go_forward(wait_until=a["wait_until"], timeout=_ms(a))
    return {"moved": response is not None, "title": await page.title()}


async def reload(d: Driver, a: Args) -> dict[str, Any]:
    page = await d.page(usable=False)
    if page in d.crashed:
        # Playwright refuses every call on a crashed page: replace the tab by a new one.
        fresh = await d.context.new_page()
        d.select(fresh)
        d.crashed.discard(page)
        with contextlib.suppress(PlaywrightError):
            await page.close()
        d.select(fresh)  # again: its index moved
        await fresh.goto(page.url, wait_until=a["wait_until"], timeout=_ms(a))
        return {"recovered": True, "title": await fresh.title(),
                "note": "the crashed tab was replaced by a new tab at the same URL"}
    await page.reload(wait_until=a["wait_until"], timeout=_ms(a))
    return {"title": await page.title()}


async def tabs(d: Driver, a: Args) -> dict[str, Any]:
    op = a["op"]
    pages = d.context.pages
    if op == "new":
        page = await d.context.new_page()
        d.select(page)
        if a.given("url"):
            d.check_url(a["url"])
            await page.goto(a["url"], timeout=_ms(a))
    elif op in ("select", "close"):
        if not a.given("index") or not 0 <= a["index"] < len(pages):
            raise ActionError(f"tabs {op} needs index between 0 and {len(pages) - 1} "
                              "(see tabs op=list)")
        page = pages[a["index"]]
        if op == "select":
            d.select(page)
            await page.bring_to_front()
        else:
            await page.close()
            d.crashed.discard(page)
    return {"tabs": await d.tabs()}


# --- perception ----------------------------------------------------------------------------

async def snapshot(d: Driver, a: Args) -> dict[str, Any]:
    page = await d.page()
    hint = "scope it with ref=/selector= or lower depth="
    if a["verbose"]:
        cdp = await d.context.new_cdp_session(page)
        try:
            tree = await cdp.send("Accessibility.getFullAXTree")
        finally:
            await cdp.detach()
        text, cut = cap(json.dumps(compact_ax_tree(tree.get("nodes", []))), a["max_chars"],
                        hint="scope it with a non-verbose snapshot")
        return {"format": "cdp", "text": text, "cut": cut}
    target = await d.optional_target(a)
    source = target if target is not None else page
    text = await source.aria_snapshot(mode="ai", depth=a["depth"], boxes=a["boxes"],
                                      timeout=_ms(a))
    previous = d.snapshots.get(page)
    d.snapshots[page] = text
    if a["diff"]:
        body, cut = cap(changes(previous or "", text), a["max_chars"], hint=hint)
        return {"format": "diff", "text": body, "cut": cut, "first": previous is None}
    if a["format"] == "json":
        tree_text, cut = cap(json.dumps(to_json(text)), a["max_chars"], hint=hint)
        return {"format": "json", "tree": json.loads(tree_text) if not cut else None,
                "text": tree_text if cut else "", "cut": cut}
    body, cut = cap(text, a["max_chars"], hint=hint)
    return {"format": "text", "text": body, "cut": cut}


async def screenshot(d: Driver, a: Args) -> dict[str, Any]:
    page = await d.page()
    target = await d.optional_target(a)
    kind = a["format"]
    options: dict[str, Any] = {"type": kind, "timeout": _ms(a)}
    if kind == "jpeg":
        options["quality"] = a["quality"]
    if target is not None:
        data = await target.screenshot(**options)
    else:
        data = await page.screenshot(full_page=a["full"], **options)
    folder = d.dir / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.time_ns()}.{'jpg' if kind == 'jpeg' else 'png'}"
    path.write_bytes(data)
    publish(d.dir, "file", path, media_type=f"image/{kind}")
    result: dict[str, Any] = {"path": str(path), "bytes": len(data), "format": kind}
    if len(data) <= a["max_bytes"]:
        result["base64"] = base64.b64encode(data).decode()
    else:
        result["note"] = (f"{len(data)} bytes is over max_bytes={a['max_bytes']}: the image is "
                          "in the screenshot's artifact (and the file on the node)")
    return result


async def eval_(d: Driver, a: Args) -> dict[str, Any]:
    a.require("expression")
    page = await d.page()
    target = await d.optional_target(a)
    arg = a["arg"]
    try:
        if target is not None:
            value = await target.evaluate(a["expression"], arg, timeout=_ms(a))
        else:
            value = await asyncio.wait_for(page.evaluate(a["expression"], arg), a["timeout_s"])
    except TimeoutError as exc:
        raise ActionError(f"eval did not finish within {a['timeout_s']:g} s") from exc
    text = json.dumps(value, default=str)
    body, cut = cap(text, a["max_chars"], hint="return less, or raise max_chars")
    return {"value": None if cut else value, "text": body if cut else "", "cut": cut}


# --- input -----------------------------------------------------------------------------------

async def click(d: Driver, a: Args) -> dict[str, Any]:
    target = await d.target(a)
    await target.click(button=a["button"], click_count=a["count"],
                       modifiers=a["modifiers"] or None, timeout=_ms(a))
    return {}


async def hover(d: Driver, a: Args) -> dict[str, Any]:
    target = await d.target(a)
    await target.hover(timeout=_ms(a))
    return {}


async def scroll(d: Driver, a: Args) -> dict[str, Any]:
    page = await d.page()
    target = await d.optional_target(a)
    if target is not None and a["into_view"]:
        await target.scroll_into_view_if_needed(timeout=_ms(a))
    elif target is not None:
        await target.evaluate("(el, d) => el.scrollBy(d[0], d[1])", [a["dx"], a["dy"]])
    else:
        await page.mouse.wheel(a["dx"], a["dy"])
        # The wheel scrolls asynchronously: two frames later the position is settled.
        await page.evaluate(
            "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    position = await page.evaluate("() => [window.scrollX, window.scrollY]")
    return {"scroll": position}


async def drag(d: Driver, a: Args) -> dict[str, Any]:
    source = await d.target(a, ref="from_ref", selector="from_selector")
    target = await d.target(a, ref="to_ref", selector="to_selector")
    await source.drag_to(target, timeout=_ms(a))
    return {}


async def type_(d: Driver, a: Args) -> dict[str, Any]:
    target = await d.target(a)
    if a["slowly"]:
        await target.press_sequentially(a["text"], timeout=_ms(a))
    else:
        await target.fill(a["text"], timeout=_ms(a))
    if a["submit"]:
        await target.press("Enter", timeout=_ms(a))
    return {}


async def fill(d: Driver, a: Args) -> dict[str, Any]:
    done = []
    for i, field in enumerate(a["fields"]):
        spec = {"ref": Param("str"), "selector": Param("str"), "value": Param("any")}
        fa = Args(f"fill field {i}", field, spec)
        if "value" not in field:
            raise ActionError(f"fill field {i} needs a value")
        target = await d.target(fa)
        value = field["value"]
        if isinstance(value, bool):
            await target.set_checked(value, timeout=_ms(a))
        elif isinstance(value, list):
            await target.select_option([str(v) for v in value], timeout=_ms(a))
        elif await target.evaluate("el => el.tagName") == "SELECT":
            await target.select_option(str(value), timeout=_ms(a))
        else:
            await target.fill(str(value), timeout=_ms(a))
        done.append(field.get("ref") or field.get("selector"))
    return {"filled": done}


async def press(d: Driver, a: Args) -> dict[str, Any]:
    keys = a["keys"]
    chords = [keys] if isinstance(keys, str) else keys
    if not isinstance(chords, list) or not chords or not all(
            isinstance(k, str) and k for k in chords):
        raise ActionError('press needs keys: a key or chord ("Control+Shift+K") or a list')
    target = await d.optional_target(a)
    page = await d.page()
    for chord in chords:
        if target is not None:
            await target.press(chord, timeout=_ms(a))
        else:
            await page.keyboard.press(chord)
    return {"pressed": chords}


async def select(d: Driver, a: Args) -> dict[str, Any]:
    target = await d.target(a)
    a.require("values")
    chosen = await target.select_option(a["values"], timeout=_ms(a))
    return {"selected": chosen}


async def upload(d: Driver, a: Args) -> dict[str, Any]:
    target = await d.target(a)
    a.require("paths")
    missing = [p for p in a["paths"] if not await asyncio.to_thread(Path(p).is_file)]
    if missing:
        raise ActionError(f"upload: no such file on the node: {', '.join(missing)}")
    await target.set_input_files(a["paths"], timeout=_ms(a))
    return {"files": a["paths"]}


async def dialog(d: Driver, a: Args) -> dict[str, Any]:
    page = await d.page(usable=False)
    pending = d.dialogs.pop(page, None)
    if pending is None:
        raise ActionError("no dialog is open on the selected tab")
    if a["accept"]:
        await pending.accept(a["text"] or "") if a.given("text") else await pending.accept()
    else:
        await pending.dismiss()
    return {"type": pending.type, "text": pending.message, "accepted": a["accept"]}


# --- waits -----------------------------------------------------------------------------------

async def wait(d: Driver, a: Args) -> dict[str, Any]:
    page = await d.page()
    given = [k for k in ("load_state", "selector", "text", "text_gone", "url", "predicate")
             if a.given(k)]
    if len(given) != 1:
        raise ActionError("wait needs exactly one of load_state, selector (with state), text, "
                          f"text_gone, url, predicate; got {given or 'none'}")
    what = given[0]
    ms = _ms(a)
    try:
        if what == "load_state":
            await page.wait_for_load_state(a["load_state"], timeout=ms)
        elif what == "selector":
            await page.wait_for_selector(a["selector"], state=a["state"], timeout=ms)
        elif what in ("text", "text_gone"):
            state: Literal["visible", "hidden"] = "visible" if what == "text" else "hidden"
            await page.get_by_text(a[what]).first.wait_for(state=state, timeout=ms)
        elif what == "url":
            await page.wait_for_url(a["url"], timeout=ms)
        else:
            await page.wait_for_function(a["predicate"], timeout=ms)
    except PlaywrightTimeout as exc:
        detail = f"{what}={a[what]!r}" + (f" state={a['state']}" if what == "selector" else "")
        raise ActionError(f"timed out after {a['timeout_s']:g} s waiting for {detail}") from exc
    return {"waited_for": what}


# --- evidence --------------------------------------------------------------------------------

_KINDS = ("console", "pageerror", "request", "response", "requestfailed", "crash", "dialog",
          "download", "note")
_NETWORK = {"request", "response", "requestfailed"}


async def logs(d: Driver, a: Args) -> dict[str, Any]:
    kinds = set(a["kinds"] or ())
    bad = sorted(kinds - set(_KINDS))
    if bad:
        raise ActionError(f"unknown event kinds {bad}; known: {', '.join(_KINDS)}")
    if a.action == "network" and not kinds:
        kinds = set(_NETWORK)
    if a.action == "network" and a.given("body_of"):
        return await _body(d, a["body_of"], a["max_chars"])
    if a["follow_s"] > 0:  # stay a while so live events stream out during this call
        await asyncio.sleep(min(a["follow_s"], 30.0))
    await d.settle_downloads(0)
    found, more = d.events.since(a["since"], kinds=kinds or None, level=a["level"],
                                 url=a["url"], failed_only=a["failed_only"], limit=a["limit"])
    return {"events": found, "more": more, "last_seq": d.events.last_seq}


async def _body(d: Driver, seq: int, max_chars: int) -> dict[str, Any]:
    response = d.responses.get(seq)
    if response is None:
        raise ActionError(f"no response body kept for event {seq} (the newest 500 responses "
                          "of this worker are kept)")
    try:
        data = await response.body()
    except PlaywrightError as exc:
        raise ActionError(f"the body of event {seq} is gone: {str(exc).splitlines()[0]}") from exc
    text = data.decode("utf-8", "replace")
    body, cut = cap(text, max_chars, hint="raise max_chars")
    return {"seq": seq, "url": response.url, "bytes": len(data), "body": body, "cut": cut}


async def har(d: Driver, a: Args) -> dict[str, Any]:
    a.require("op")
    if a["op"] == "start":
        return await evidence.har_start(d, content=a["content"], url_filter=a["url_filter"])
    return await evidence.har_stop(d)


async def record(d: Driver, a: Args) -> dict[str, Any]:
    a.require("op")
    if a["op"] == "stop":
        return await evidence.record_stop(d)
    return await evidence.record_start(d, fps=a["fps"], width=a["width"], height=a["height"])


async def save(d: Driver, a: Args) -> dict[str, Any]:
    state = await d.context.storage_state()
    tabs_ = [p.url for p in d.context.pages]
    saved = {"storage_state": state, "tabs": tabs_}
    path = d.dir / "saved-state.json"
    path.write_text(json.dumps(saved))
    return {"state": saved, "path": str(path)}


async def restore(d: Driver, a: Args) -> dict[str, Any]:
    a.require("state")
    state = a["state"]
    storage, urls = state.get("storage_state"), state.get("tabs", [])
    if not isinstance(storage, dict) or not isinstance(urls, list):
        raise ActionError("restore needs state = what the save action returned "
                          "({storage_state, tabs})")
    await d.context.set_storage_state(cast(Any, storage))
    for url in urls:
        if isinstance(url, str) and url and url != "about:blank":
            d.check_url(url)
            page = await d.context.new_page()
            await page.goto(url, timeout=_ms(a))
            d.select(page)
    return {"tabs": await d.tabs()}


MAX_FETCH_BYTES = 4 << 20


async def fetch(d: Driver, a: Args) -> dict[str, Any]:
    """A piece of a file of the session (video, HAR, screenshot, download) as base64.

    Until Cortex moves such files as artifacts, this is how they leave the node: the SDK's
    `BrowserSession.download` calls it chunk by chunk.
    """
    a.require("path")
    root = d.dir.resolve()
    path = Path(a["path"]).resolve()  # noqa: ASYNC240
    if not path.is_relative_to(root):
        raise ActionError(f"fetch reads only the session's own files (under {root})")
    if not 0 < a["length"] <= MAX_FETCH_BYTES or a["offset"] < 0:
        raise ActionError(f"fetch: offset >= 0 and 0 < length <= {MAX_FETCH_BYTES}")

    def read() -> tuple[bytes, int]:
        with path.open("rb") as f:
            f.seek(a["offset"])
            return f.read(a["length"]), path.stat().st_size

    try:
        data, size = await asyncio.to_thread(read)
    except OSError as exc:
        raise ActionError(f"fetch: cannot read {path}: {exc.strerror or exc}") from exc
    return {"path": str(path), "offset": a["offset"], "bytes": len(data), "size": size,
            "eof": a["offset"] + len(data) >= size, "base64": base64.b64encode(data).decode()}


async def status(d: Driver, a: Args) -> dict[str, Any]:
    return {"tabs": await d.tabs(), "recording": d.recorder is not None,
            "har": str(d.har) if d.har else None, "events_seq": d.events.last_seq}


_WU = Param("str", "load", _WAIT_UNTIL)
_EVENTS = {"since": Param("int", 0), "kinds": Param("list[str]"), "level": Param("str"),
           "url": Param("str"), "failed_only": Param("bool", False), "limit": Param("int", 500),
           "follow_s": Param("float", 0.0), "timeout_s": _T}

ACTIONS: dict[str, tuple[Action, dict[str, Param]]] = {
    "open": (open_, {"url": Param("str"), "wait_until": _WU, "timeout_s": _T}),
    "status": (status, {}),
    "navigate": (goto, {"url": Param("str"), "wait_until": _WU, "timeout_s": _T}),
    "back": (back, {"wait_until": _WU, "timeout_s": _T}),
    "forward": (forward, {"wait_until": _WU, "timeout_s": _T}),
    "reload": (reload, {"wait_until": _WU, "timeout_s": _T}),
    "tabs": (tabs, {"op": Param("str", "list", ("list", "new", "select", "close")),
                    "index": Param("int"), "url": Param("str"), "timeout_s": _T}),
    "snapshot": (snapshot, {**_TARGET, "depth": Param("int"), "boxes": Param("bool", False),
                            "format": Param("str", "text", ("text", "json")),
                            "diff": Param("bool", False), "verbose": Param("bool", False),
                            "max_chars": Param("int", 40_000), "timeout_s": _T}),
    "screenshot": (screenshot, {**_TARGET, "full": Param("bool", False),
                                "format": Param("str", "png", ("png", "jpeg")),
                                "quality": Param("int", 80),
                                "max_bytes": Param("int", MAX_SCREENSHOT_BYTES), "timeout_s": _T}),
    "eval": (eval_, {**_TARGET, "expression": Param("str"), "arg": Param("any"),
                     "max_chars": Param("int", MAX_RESULT_CHARS), "timeout_s": _T}),
    "click": (click, {**_TARGET, "button": Param("str", "left", ("left", "right", "middle")),
                      "count": Param("int", 1), "modifiers": Param("list[str]"),
                      "timeout_s": _T}),
    "hover": (hover, {**_TARGET, "timeout_s": _T}),
    "scroll": (scroll, {**_TARGET, "dx": Param("float", 0.0), "dy": Param("float", 0.0),
                        "into_view": Param("bool", False), "timeout_s": _T}),
    "drag": (drag, {"from_ref": Param("str"), "from_selector": Param("str"),
                    "to_ref": Param("str"), "to_selector": Param("str"), "timeout_s": _T}),
    "type": (type_, {**_TARGET, "text": Param("str", ""), "submit": Param("bool", False),
                     "slowly": Param("bool", False), "timeout_s": _T}),
    "fill": (fill, {"fields": Param("list[dict]", []), "timeout_s": _T}),
    "press": (press, {**_TARGET, "keys": Param("any"), "timeout_s": _T}),
    "select": (select, {**_TARGET, "values": Param("list[str]"), "timeout_s": _T}),
    "upload": (upload, {**_TARGET, "paths": Param("list[str]"), "timeout_s": _T}),
    "dialog": (dialog, {"accept": Param("bool", True), "text": Param("str")}),
    "wait": (wait, {"load_state": Param("str", None, ("load", "domcontentloaded",
                                                       "networkidle")),
                    "selector": Param("str"), "state": Param("str", "visible", (
                        "visible", "hidden", "attached", "detached")),
                    "text": Param("str"), "text_gone": Param("str"), "url": Param("str"),
                    "predicate": Param("str"), "timeout_s": Param("float", 10.0)}),
    "logs": (logs, _EVENTS),
    "network": (logs, {**_EVENTS, "body_of": Param("int"),
                       "max_chars": Param("int", MAX_RESULT_CHARS)}),
    "har": (har, {"op": Param("str", None, ("start", "stop")),
                  "content": Param("str", "embed", ("embed", "omit")),
                  "url_filter": Param("str")}),
    "record": (record, {"op": Param("str", None, ("start", "stop")), "fps": Param("int", 15),
                        "width": Param("int", 1280), "height": Param("int", 720)}),
    "save": (save, {}),
    "fetch": (fetch, {"path": Param("str"), "offset": Param("int", 0),
                      "length": Param("int", MAX_FETCH_BYTES)}),
    "restore": (restore, {"state": Param("dict"), "timeout_s": _T}),
}
