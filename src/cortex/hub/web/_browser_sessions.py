"""What the sessions page shows: the tenant's pinned sessions (the store's sessions table),
each with its node, its newest action, its newest screenshot (an artifact of the newest
`screenshot` action) and whether it is recording now (a video upload of one of its
actions is still streaming into this hub), plus the live view's frame.

Every browser action is a task with `session_id` = the session's name, so a session's
history is its tasks: the page reads the tenant's newest tasks (at most `SCAN` of them)
and groups them by session. A session whose last action is older than that window is
listed without one.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.errors import NotFound
from cortex.hub.artifacts import ArtifactManager
from cortex.hub.registry import Registry
from cortex.hub.tasks import TaskManager
from cortex.hub.web._live import fragment_bounds, last_frame_jpeg, latest_fragment
from cortex.store.base import Store, TaskQuery

__all__ = ["MAX_SESSIONS", "SCAN", "SessionRow", "live_frame", "session_rows"]

MAX_SESSIONS = 200
"""Sessions listed at most (newest first)."""
SCAN = 1000
"""Tasks read at most to find each session's newest action and screenshot (the page
refreshes every 2 s: this bounds what each refresh reads)."""
_BATCH = 200
_IMAGES = ("image/png", "image/jpeg")


@dataclass(slots=True)
class SessionRow:
    """One session as the page shows it."""

    id: str
    node_id: str
    node_name: str
    online: bool
    created_at: float
    skill: str = ""                       # of its newest action ("" = none seen)
    last: pb.Task | None = None           # its newest action
    actions: int = 0                      # actions seen in the scanned window
    screenshot: pb.File | None = None
    recording: bool = False
    # Recording, and a frame is on the hub to show: which upload and where its newest
    # fragment ends in it ("": none yet). The live view's URL carries it, so the image is
    # fetched again only when a newer fragment exists, not at each refresh of the table.
    live_at: str = ""
    shots: list[pb.Task] = field(default_factory=list)  # its screenshot actions, newest first

    @property
    def closed(self) -> bool:
        return self.last is not None and _action(self.last) == "close" \
            and self.last.state == pb.SUCCEEDED


async def session_rows(store: Store, tasks: TaskManager, registry: Registry,
                       artifacts: ArtifactManager | None, tenant: str) -> list[SessionRow]:
    """The tenant's sessions, newest first, with what the page shows of each."""
    rows = {}
    for rec in await store.list_sessions(tenant, limit=MAX_SESSIONS):
        if rec.id.startswith("."):
            continue    # the SDK's own probes (".sessions.<node>" lists a node's sessions)
        conn = registry.get(rec.node_id)
        online = conn is not None and conn.tenant == tenant
        name = conn.node.name if conn is not None and online else ""
        if not name:
            node = await store.get_node(tenant, rec.node_id)
            name = node.name if node is not None else ""
        rows[rec.id] = SessionRow(rec.id, rec.node_id, name or rec.node_id, online,
                                  rec.created_at)
    if not rows:
        return []
    await _scan(tasks, tenant, rows)
    for row in rows.values():
        row.screenshot = await _newest_screenshot(store, tenant, row.shots)
    for session_id, key in (await _recording(tasks, artifacts, tenant)).items():
        if session_id in rows and artifacts is not None:
            rows[session_id].recording = True
            end = await asyncio.to_thread(_newest_end, artifacts, key)
            if end:
                upload = hashlib.sha256(key.encode()).hexdigest()[:12]
                rows[session_id].live_at = f"{upload}-{end}"
    return list(rows.values())


async def _scan(tasks: TaskManager, tenant: str, rows: dict[str, SessionRow]) -> None:
    after, scanned = "", 0
    while scanned < SCAN:
        batch = await tasks.list_tasks(tenant, TaskQuery(limit=_BATCH, after_id=after))
        for task in batch:
            after, scanned = task.id, scanned + 1
            row = rows.get(task.spec.session_id)
            if row is None:
                continue
            row.actions += 1
            if row.last is None:
                row.last, row.skill = task, task.spec.skill or "shell"
            if _action(task) == "screenshot" and task.state == pb.SUCCEEDED:
                row.shots.append(task)
        if len(batch) < _BATCH or all(r.last is not None and r.shots for r in rows.values()):
            return


async def _newest_screenshot(store: Store, tenant: str, shots: list[pb.Task]
                             ) -> pb.File | None:
    for task in shots[:5]:    # an action whose image expired: try a few older ones
        for file in await store.list_artifacts(tenant, task_id=task.id, limit=20):
            if file.media_type in _IMAGES:
                return file
    return None


async def _recording(tasks: TaskManager, artifacts: ArtifactManager | None, tenant: str
                     ) -> dict[str, str]:
    """Session id -> the key of its video upload streaming into this hub now."""
    out: dict[str, str] = {}
    if artifacts is None:
        return out
    for key, header in artifacts.growing(tenant):
        if not header.media_type.startswith("video/") or not header.task_id:
            continue
        try:
            task = await tasks.get(tenant, header.task_id)
        except NotFound:
            continue
        if task.spec.session_id:
            out[task.spec.session_id] = key
    return out


async def live_frame(store: Store, tasks: TaskManager, artifacts: ArtifactManager | None,
                     tenant: str, session_id: str) -> bytes:
    """The newest frame of the session's recording as a JPEG, or NotFound saying why."""
    if await store.session_node(tenant, session_id) is None:
        raise NotFound(f"no session {session_id[:80]!r}")
    key = (await _recording(tasks, artifacts, tenant)).get(session_id)
    if key is None or artifacts is None:
        raise NotFound(f"session {session_id} is not recording into this hub: start a "
                       "recording (record op=start) to get a live view")
    mp4 = await asyncio.to_thread(_read_fragment, artifacts, key)
    frame = None if mp4 is None else await asyncio.to_thread(last_frame_jpeg, mp4)
    if frame is None:
        raise NotFound(f"session {session_id} has no complete video fragment yet: the "
                       "first arrives about 2 s after the recording starts")
    return frame


def _newest_end(artifacts: ArtifactManager, key: str) -> int:
    """Where the newest complete fragment of the upload `key` ends (0: none yet)."""
    part = artifacts.open_growing(key)
    if part is None:
        return 0
    with part:
        part.seek(0, 2)
        bounds = fragment_bounds(part, part.tell())
        return bounds[2] if bounds is not None else 0


def _read_fragment(artifacts: ArtifactManager, key: str) -> bytes | None:
    part = artifacts.open_growing(key)
    if part is None:
        return None
    with part:
        part.seek(0, 2)
        return latest_fragment(part, part.tell())


def _action(task: pb.Task) -> str:
    if not task.spec.HasField("args"):
        return ""
    value = task.spec.args.fields.get("action")
    return value.string_value if value is not None else ""
