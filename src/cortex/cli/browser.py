"""``cortex browser``: persistent Chromium sessions on nodes (docs/browser.md).

Every command is one or more tasks of skill ``browser`` through `cortex.sdk.BrowserSession`.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cortex.cli._common import client_config, note, out_console, print_json, run_async, usage
from cortex.errors import InvalidArgument
from cortex.sdk import BrowserSession, Client, ClientConfig, list_browser_sessions, parse_labels

__all__ = ["app", "parse_action_args"]

app = typer.Typer(help="Drive persistent browser sessions on nodes.", no_args_is_help=True)

# The args an action takes as plain words, in order; every other arg is KEY=VALUE.
POSITIONAL: dict[str, tuple[str, ...]] = {
    "open": ("url",), "navigate": ("url",), "click": ("ref",), "hover": ("ref",),
    "type": ("ref", "text"), "eval": ("expression",), "press": ("keys",),
    "select": ("ref", "values..."), "upload": ("ref", "paths..."), "drag": ("from_ref", "to_ref"),
    "tabs": ("op", "index"), "fetch": ("path",), "scroll": ("ref",),
}
_NAMED = re.compile(r"^[a-z_]+=")  # KEY=VALUE; a URL or JS expression starts otherwise
_INTS = {"index", "count", "depth", "since", "limit", "offset", "length", "quality",
         "max_chars", "max_bytes", "fps", "width", "height", "body_of"}


def parse_action_args(action: str, words: list[str]) -> dict[str, Any]:
    """Words after the action -> its args: positional slots first, then KEY=VALUE (VALUE is
    JSON when it parses as JSON - true, 3, ["a"] - and a string otherwise)."""
    args: dict[str, Any] = {}
    slots = list(POSITIONAL.get(action, ()))
    rest = [w for w in words if not _NAMED.match(w)]
    named = [w for w in words if _NAMED.match(w)]
    while slots and rest:
        slot = slots.pop(0)
        if slot.endswith("..."):
            args[slot[:-3]] = rest
            rest = []
            break
        word = rest.pop(0)
        args[slot] = int(word) if slot in _INTS and word.isdigit() else word
    if rest:
        takes = ", ".join(POSITIONAL.get(action, ())) or "no"
        raise InvalidArgument(f"{rest[0]!r}: give further args as KEY=VALUE ({action} takes "
                              f"{takes} positional args)")
    for word in named:
        key, _, value = word.partition("=")
        try:
            args[key] = json.loads(value)
        except ValueError:
            args[key] = value
    return args


def _session(config: ClientConfig, name: str, timeout: float, *, live: bool = False
             ) -> tuple[Client, BrowserSession]:
    client = Client(config)
    on_event = _print_event if live else None
    return client, BrowserSession(client, name, timeout=timeout, on_event=on_event)


def _print_event(event: dict[str, Any]) -> None:
    kind = event.get("kind", "?")
    level = event.get("level", "")
    detail = event.get("text") or " ".join(
        str(event[k]) for k in ("method", "status", "url", "error", "path") if event.get(k))
    sys.stderr.write(f"[{event.get('seq', '-')}] {kind}{'/' + level if level else ''}: "
                     f"{detail}\n")


Timeout = Annotated[float, typer.Option("--timeout", metavar="S",
                                        help="Deadline of each action's task, in seconds.")]


@app.command("open")
def open_session(
    ctx: typer.Context,
    session: Annotated[str | None, typer.Option("--session", "-s", metavar="NAME",
                       help="Session name (default: a new one).", show_default=False)] = None,
    node: Annotated[str | None, typer.Option("--node", metavar="NODE_ID",
                    help="Open it on this node.", show_default=False)] = None,
    label: Annotated[list[str] | None, typer.Option("--label", "-l", metavar="K=V",
                     help="Open it on a node with this label (repeatable).",
                     show_default=False)] = None,
    url: Annotated[str | None, typer.Option("--url", help="Navigate there first.",
                   show_default=False)] = None,
    timeout: Timeout = 60.0,
) -> None:
    """Open a persistent session (its browser stays until close or the idle timeout)."""
    labels = usage(parse_labels, label, flag="'--label' / '-l'")

    async def go() -> BrowserSession:
        async with Client(client_config(ctx)) as client:
            return await BrowserSession.open(client, session, node_id=node, labels=labels,
                                             url=url, timeout=timeout)

    opened = run_async(go())
    out_console.print(opened.name)


@app.command("do", context_settings={"allow_extra_args": True,
                                     "ignore_unknown_options": True})
def do(
    ctx: typer.Context,
    session: Annotated[str, typer.Argument(metavar="SESSION")],
    action: Annotated[str, typer.Argument(metavar="ACTION", help=(
        "navigate URL | snapshot | click REF | type REF TEXT | eval EXPR | screenshot | "
        "press KEYS | wait K=V | ... (docs/browser.md)"))],
    words: Annotated[list[str] | None, typer.Argument(metavar="[ARGS]...",
                     show_default=False)] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE",
                      help="Write the screenshot (or fetched file) here.",
                      show_default=False)] = None,
    submit: Annotated[bool, typer.Option("--submit", help="type: press Enter after.")
                      ] = False,
    full: Annotated[bool, typer.Option("--full", help="screenshot: the full page.")] = False,
    ref: Annotated[str | None, typer.Option("--ref", help="The element (a snapshot ref).",
                   show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole JSON answer.")
                       ] = False,
    timeout: Timeout = 60.0,
) -> None:
    """Run one action in SESSION; console and network events show on stderr as they come."""
    args = usage(lambda w: parse_action_args(action, w), words or [], flag="ARGS")
    args.update({k: v for k, v in (("submit", submit or None), ("full", full or None),
                                   ("ref", ref)) if v is not None})

    async def go() -> dict[str, Any]:
        client, browser = _session(client_config(ctx), session, timeout, live=True)
        async with client:
            answer = await browser.do(action, **args)
            if action == "fetch" and output is not None:
                await browser.download(args["path"], output)
            if action == "screenshot" and output is not None and "base64" not in answer:
                for path in await browser.save_files(answer, output):
                    note(f"wrote {path} ({path.stat().st_size} bytes)")
            return answer

    answer = run_async(go())
    if action == "screenshot" and output is not None and "base64" in answer:
        output.write_bytes(base64.b64decode(answer.pop("base64")))
        note(f"wrote {output} ({answer['bytes']} bytes)")
    if as_json:
        print_json(answer)
    elif action == "snapshot" and answer.get("tree") is None:
        out_console.print(answer["text"], markup=False)
    elif action == "eval":
        print_json(answer["value"] if not answer["cut"] else answer["text"])
    else:
        answer.pop("base64", None)
        print_json(answer)


@app.command("logs")
def logs(
    ctx: typer.Context,
    session: Annotated[str, typer.Argument(metavar="SESSION")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")
                      ] = False,
    since: Annotated[int, typer.Option("--since", metavar="SEQ",
                     help="Events after this sequence number.")] = 0,
    kind: Annotated[list[str] | None, typer.Option("--kind", "-k", metavar="KIND", help=(
        "console, pageerror, request, response, requestfailed, crash, dialog, download "
        "(repeatable)."), show_default=False)] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Failed requests and 4xx/5xx only.")
                      ] = False,
    timeout: Timeout = 60.0,
) -> None:
    """The session's console and network events (kept on its node)."""

    async def go() -> None:
        client, browser = _session(client_config(ctx), session, timeout)
        async with client:
            seq = since
            while True:
                answer = await browser.do("logs", since=seq, kinds=kind, failed_only=failed,
                                          follow_s=1.0 if follow else 0.0)
                for event in answer["events"]:
                    _print_event(event)
                    seq = max(seq, int(event["seq"]))
                if not follow:
                    return

    run_async(go())


@app.command("har")
def har(
    ctx: typer.Context,
    session: Annotated[str, typer.Argument(metavar="SESSION")],
    op: Annotated[str, typer.Argument(metavar="start|stop")] = "stop",
    output: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE",
                      help="stop: download the HAR (from the hub) here.",
                      show_default=False)] = None,
    timeout: Timeout = 60.0,
) -> None:
    """Record the session's network traffic as a HAR: start, then stop -o trace.har."""
    _file_op(ctx, session, "har", op, output, timeout, {})


@app.command("record")
def record(
    ctx: typer.Context,
    session: Annotated[str, typer.Argument(metavar="SESSION")],
    op: Annotated[str, typer.Argument(metavar="start|stop")],
    output: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE",
                      help="stop: download the MP4 (from the hub) here; "
                      "several segments go to FILE-1.mp4, FILE-2.mp4 ...",
                      show_default=False)] = None,
    fps: Annotated[int, typer.Option("--fps", help="Frames per second (1-30).")] = 15,
    size: Annotated[str, typer.Option("--size", metavar="WxH",
                    help="Video size, up to 1920x1080.")] = "1280x720",
    timeout: Timeout = 120.0,
) -> None:
    """Record a video of the selected tab (H.264 fragmented MP4)."""
    width, _, height = size.partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise typer.BadParameter(f"{size!r} is not WIDTHxHEIGHT", param_hint="--size")
    extra = {"fps": fps, "width": int(width), "height": int(height)} if op == "start" else {}
    _file_op(ctx, session, "record", op, output, timeout, extra)


def _file_op(ctx: typer.Context, session: str, action: str, op: str, output: Path | None,
             timeout: float, extra: dict[str, Any]) -> None:
    if op not in ("start", "stop"):
        raise typer.BadParameter(f"{op!r}: start or stop", param_hint="start|stop")

    async def go() -> dict[str, Any]:
        client, browser = _session(client_config(ctx), session, timeout)
        async with client:
            answer = await browser.do(action, op=op, **extra)
            if op == "stop" and output is not None:  # from the hub's artifact store
                for path in await browser.save_files(answer, output):
                    note(f"wrote {path} ({path.stat().st_size} bytes)")
            return answer

    print_json(run_async(go()))


@app.command("ls")
def list_sessions(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Your browser sessions on every connected node."""

    async def go() -> list[dict[str, Any]]:
        async with Client(client_config(ctx)) as client:
            return await list_browser_sessions(client)

    rows = run_async(go())
    if as_json:
        print_json(rows)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("SESSION", "NODE", "ALIVE", "IDLE"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["session"], row["node"], "yes" if row["alive"] else "no",
                      f"{row['idle_s']:.0f}s")
    out_console.print(table)


@app.command("close")
def close(
    ctx: typer.Context,
    session: Annotated[str, typer.Argument(metavar="SESSION")],
    timeout: Timeout = 60.0,
) -> None:
    """Close the session: its browser ends and its profile is deleted on the node."""

    async def go() -> bool:
        client, browser = _session(client_config(ctx), session, timeout)
        async with client:
            return await browser.close()

    closed = run_async(go())
    note(f"session {session} {'closed' if closed else 'was not open'}")
