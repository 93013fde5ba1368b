"""`BrowserSession`: a persistent Chromium session on a node, one task per action.

    async with Client() as client:
        browser = await BrowserSession.open(client, "shop", url="https://shop.test/")
        print(await browser.snapshot())            # compact a11y tree with refs [ref=e12]
        await browser.click(ref="e12")
        png = await browser.screenshot()
        await browser.close()

Every action is a task of skill ``browser`` with ``session_id`` = the session's name, so it
is audited, cancellable, has a deadline, and goes to the node that holds the session. The
result is the JSON object the node's worker printed; console and network events stream to
`on_event` while an action runs and stay queryable with `logs`. A failed action raises
`BrowserError` with the node's reason (which says what to do).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cortex._proto.cortex.v1 import common_pb2
from cortex.errors import RemoteError
from cortex.sdk._client import Client
from cortex.sdk._specs import Pairs
from cortex.sdk._sync import SyncClient

__all__ = ["BrowserError", "BrowserSession", "SyncBrowserSession", "artifacts_of",
           "list_browser_sessions"]

EventCallback = Callable[[dict[str, Any]], None]
_DEFAULT_TIMEOUT_S = 60.0
_FETCH_CHUNK = 4 << 20


class BrowserError(RemoteError):
    """A browser action failed on the node; the message is the node's reason."""


class BrowserSession:
    """One named browser session (see the module docstring)."""

    def __init__(self, client: Client, name: str, *, timeout: float = _DEFAULT_TIMEOUT_S,
                 on_event: EventCallback | None = None) -> None:
        if not name:
            raise ValueError("a browser session needs a name")
        self.client = client
        self.name = name
        self.timeout = timeout
        self.on_event = on_event

    @classmethod
    async def open(cls, client: Client, name: str | None = None, *, node_id: str | None = None,
                   labels: Pairs | None = None, url: str | None = None,
                   timeout: float = _DEFAULT_TIMEOUT_S,  # noqa: ASYNC109 - each action's deadline
                   on_event: EventCallback | None = None) -> BrowserSession:
        """Open (or join) session `name` (default: a fresh name), on `node_id` or on a node
        with `labels` the first time; later actions follow the session to its node."""
        session = cls(client, name or f"b-{secrets.token_hex(4)}", timeout=timeout,
                      on_event=on_event)
        args: dict[str, Any] = {"url": url} if url else {}
        await session.do("open", _node_id=node_id, _labels=labels, **args)
        return session

    async def do(self, action: str, /, *, _node_id: str | None = None,
                 _labels: Pairs | None = None, _timeout: float | None = None,
                 **args: Any) -> dict[str, Any]:
        """Run one action (see docs/browser.md for every action and its args)."""
        events = _EventLines(self.on_event)
        result = await self.client.run(
            skill="browser", session_id=self.name, node_id=_node_id, labels=_labels,
            args={"action": action, **{k: v for k, v in args.items() if v is not None}},
            timeout=_timeout or self.timeout, stderr=events.feed)
        events.flush()
        if not result.ok:
            state = common_pb2.TaskState.Name(result.state).lower()
            raise BrowserError(f"browser {action} in session {self.name} {state}: "
                               f"{result.task.reason or 'no reason given'}")
        lines = result.stdout.decode("utf-8", "replace").strip().splitlines()
        try:
            answer: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, ValueError) as exc:
            raise BrowserError(f"browser {action}: the node's answer is not JSON: "
                               f"{result.stdout[:200]!r}") from exc
        return answer

    # --- navigation and tabs ----------------------------------------------------------

    async def navigate(self, url: str, **kw: Any) -> dict[str, Any]:
        return await self.do("navigate", url=url, **kw)

    async def back(self, **kw: Any) -> dict[str, Any]:
        return await self.do("back", **kw)

    async def forward(self, **kw: Any) -> dict[str, Any]:
        return await self.do("forward", **kw)

    async def reload(self, **kw: Any) -> dict[str, Any]:
        return await self.do("reload", **kw)

    async def tabs(self, op: str = "list", **kw: Any) -> list[dict[str, Any]]:
        tabs: list[dict[str, Any]] = (await self.do("tabs", op=op, **kw))["tabs"]
        return tabs

    # --- perception -------------------------------------------------------------------

    async def snapshot(self, **kw: Any) -> Any:
        """The accessibility snapshot: text (default), a JSON tree (format="json"), the
        changes since the last one (diff=True) or the raw CDP tree (verbose=True)."""
        answer = await self.do("snapshot", **kw)
        return answer["tree"] if answer.get("tree") is not None else answer["text"]

    async def screenshot(self, **kw: Any) -> bytes:
        """The image's bytes: inline when small, else from its artifact on the hub (every
        screenshot is also an artifact of its task: answer["artifacts"] of `do`)."""
        answer = await self.do("screenshot", **kw)
        if "base64" in answer:
            return base64.b64decode(answer["base64"])
        stored = artifacts_of(answer)
        if not stored:  # a node that does not publish artifacts
            return await self.download(answer["path"])
        return await self.read_artifact(stored[0]["artifact_id"])

    async def eval(self, expression: str, **kw: Any) -> Any:
        answer = await self.do("eval", expression=expression, **kw)
        return answer["value"] if not answer["cut"] else answer["text"]

    # --- input ------------------------------------------------------------------------

    async def click(self, ref: str | None = None, **kw: Any) -> dict[str, Any]:
        return await self.do("click", ref=ref, **kw)

    async def hover(self, ref: str | None = None, **kw: Any) -> dict[str, Any]:
        return await self.do("hover", ref=ref, **kw)

    async def type(self, ref: str | None, text: str, **kw: Any) -> dict[str, Any]:
        return await self.do("type", ref=ref, text=text, **kw)

    async def fill(self, fields: list[Mapping[str, Any]], **kw: Any) -> dict[str, Any]:
        return await self.do("fill", fields=[dict(f) for f in fields], **kw)

    async def press(self, keys: str | list[str], **kw: Any) -> dict[str, Any]:
        return await self.do("press", keys=keys, **kw)

    async def drag(self, **kw: Any) -> dict[str, Any]:
        return await self.do("drag", **kw)

    async def scroll(self, **kw: Any) -> dict[str, Any]:
        return await self.do("scroll", **kw)

    async def select(self, values: list[str], ref: str | None = None, **kw: Any
                     ) -> dict[str, Any]:
        return await self.do("select", values=values, ref=ref, **kw)

    async def upload(self, paths: list[str] | None = None, ref: str | None = None, *,
                     artifacts: list[str] | None = None, **kw: Any) -> dict[str, Any]:
        """Set a file input to files on the node (`paths`) and/or artifacts (ids; the node
        downloads them into the session dir first)."""
        return await self.do("upload", paths=paths, ref=ref, artifacts=artifacts, **kw)

    async def dialog(self, accept: bool = True, text: str | None = None) -> dict[str, Any]:
        return await self.do("dialog", accept=accept, text=text)

    async def wait(self, **kw: Any) -> dict[str, Any]:
        return await self.do("wait", **kw)

    # --- evidence -----------------------------------------------------------------------

    async def logs(self, **kw: Any) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = (await self.do("logs", **kw))["events"]
        return events

    async def network(self, **kw: Any) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = (await self.do("network", **kw))["events"]
        return events

    async def har_start(self, **kw: Any) -> dict[str, Any]:
        return await self.do("har", op="start", **kw)

    async def har_stop(self) -> dict[str, Any]:
        return await self.do("har", op="stop")

    async def record_start(self, **kw: Any) -> dict[str, Any]:
        return await self.do("record", op="start", **kw)

    async def record_stop(self) -> dict[str, Any]:
        return await self.do("record", op="stop")

    async def save_files(self, answer: Mapping[str, Any], dest: str | Path) -> list[Path]:
        """Download the artifacts an action's answer lists (a stopped video's segments, a
        HAR) from the hub to `dest`; several go to ``<stem>-<n><suffix>`` beside it. A node
        that does not publish artifacts: the answer's ``path`` is fetched through it."""
        target = Path(dest)
        stored = artifacts_of(answer)
        if not stored:
            await self.download(answer["path"], target)
            return [target]
        if len(stored) == 1:
            return [await self.client.download_artifact(stored[0]["artifact_id"], target)]
        return [await self.client.download_artifact(
                    row["artifact_id"], target.with_name(f"{target.stem}-{n}{target.suffix}"))
                for n, row in enumerate(stored, 1)]

    async def read_artifact(self, artifact_id: str) -> bytes:
        """An artifact's bytes, from the hub."""
        file = await self.client.stat_artifact(artifact_id)
        data: bytes = await self.client.read_artifact(artifact_id, max_bytes=max(file.size, 1))
        return data

    async def download(self, path: str, dest: str | Path | None = None) -> bytes:
        """A file of the session on its node (video, HAR, screenshot, download), fetched
        through the hub in chunks; also written to `dest` when given."""
        data, offset = bytearray(), 0
        while True:
            part = await self.do("fetch", path=path, offset=offset, length=_FETCH_CHUNK)
            data.extend(base64.b64decode(part["base64"]))
            offset += part["bytes"]
            if part["eof"] or not part["bytes"]:
                break
        if dest is not None:
            await asyncio.to_thread(Path(dest).write_bytes, bytes(data))
        return bytes(data)

    # --- lifetime -----------------------------------------------------------------------

    async def save(self) -> dict[str, Any]:
        """Cookies, storage and open tabs: give them to `restore` on another session."""
        state: dict[str, Any] = (await self.do("save"))["state"]
        return state

    async def restore(self, state: Mapping[str, Any]) -> list[dict[str, Any]]:
        tabs: list[dict[str, Any]] = (await self.do("restore", state=dict(state)))["tabs"]
        return tabs

    async def close(self) -> bool:
        """Kill the session's browser and delete its profile on the node."""
        return bool((await self.do("close"))["closed"])


def artifacts_of(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The artifacts (rows with ``artifact_id``) an action's answer lists, in order."""
    rows = answer.get("artifacts") or []
    return [r for r in rows if isinstance(r, dict) and r.get("artifact_id")]


async def list_browser_sessions(client: Client) -> list[dict[str, Any]]:
    """The caller's browser sessions on every connected node that offers the skill."""
    rows: list[dict[str, Any]] = []
    for node in await client.list_nodes(skill="browser", states=["ONLINE"]):
        probe = BrowserSession(client, f".sessions.{node.id}")
        answer = await probe.do("sessions", _node_id=node.id)
        rows.extend({"node": node.name or node.id, **row} for row in answer["sessions"])
    return rows


class _EventLines:
    """Stderr bytes of an action -> one callback per JSON event line."""

    def __init__(self, callback: EventCallback | None) -> None:
        self._callback = callback
        self._pending = b""

    def feed(self, data: bytes) -> None:
        if self._callback is None:
            return
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self._emit(line)

    def flush(self) -> None:
        if self._pending:
            self._emit(self._pending)
            self._pending = b""

    def _emit(self, line: bytes) -> None:
        if not line.strip() or self._callback is None:
            return
        try:
            event = json.loads(line)
        except ValueError:
            event = {"kind": "note", "text": line.decode("utf-8", "replace")}
        self._callback(event if isinstance(event, dict) else {"kind": "note", "text": line})


class SyncBrowserSession:
    """Blocking twin of `BrowserSession` on a `SyncClient`: the same methods, no await.

        with SyncClient() as client:
            browser = SyncBrowserSession.open(client, "shop", url="https://shop.test/")
            print(browser.snapshot())
    """

    def __init__(self, client: SyncClient, name: str, **options: Any) -> None:
        self.client = client
        self.session = BrowserSession(client._client, name, **options)

    @classmethod
    def open(cls, client: SyncClient, name: str | None = None, **options: Any
             ) -> SyncBrowserSession:
        session = client._run(BrowserSession.open(client._client, name, **options))
        synced = cls.__new__(cls)
        synced.client, synced.session = client, session
        return synced

    @property
    def name(self) -> str:
        return self.session.name

    def __getattr__(self, attr: str) -> Any:
        method = getattr(self.session, attr)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.client._run(method(*args, **kwargs))

        return call
