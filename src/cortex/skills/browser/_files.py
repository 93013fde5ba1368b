"""Publishing a browser session's files as artifacts of the tasks that produced them.

The worker has no link to the hub (workers stay light), so it lists the files it wrote in
the session's outbox (cortex.workers.browser._outbox) and the node uploads them through
its `ArtifactStore` (the node's `NodeArtifacts`) after each action, before the action's
task reports its end - so they are in the task's ``files`` and in the action's JSON result
under ``artifacts``.

A video segment is streamed while it records (``upload_growing``), as an artifact of the
task that started it (``record op=start``, or the action after a worker crash that resumed
the recording): a node or worker crash loses at most the last fragment. Stopping the
recording completes the uploads, and the stop action's result lists them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.errors import CortexError, InvalidArgument, PermissionDenied

__all__ = ["ArtifactStore", "SessionFiles", "discard_outbox"]

log = logging.getLogger("cortex.node.browser")

OUTBOX = "outbox.jsonl"  # the worker's side: cortex.workers.browser._outbox
_MAX_UPLOAD_FILES = 64  # artifacts fetched for one upload action
_CLOSE_GRACE_S = 30.0  # reading out a finished video segment on close


class ArtifactStore(Protocol):
    """What the browser skill needs of the node's artifact transfers (`NodeArtifacts`)."""

    async def upload_file(self, path: Path, *, task_id: str = "", name: str = "",
                          media_type: str = "") -> pb.File: ...

    async def upload_growing(self, path: Path, finished: asyncio.Event, *, task_id: str = "",
                             name: str = "", media_type: str = "") -> pb.File: ...

    async def stat(self, artifact_id: str) -> pb.File: ...

    async def download(self, artifact_id: str, dest: Path) -> Path: ...


@dataclass(frozen=True, slots=True)
class _Growing:
    path: Path
    finished: asyncio.Event
    upload: asyncio.Task[pb.File]


def describe(file: pb.File, path: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {"artifact_id": file.artifact_id, "name": file.name, "bytes": file.size,
                           "media_type": file.media_type, "task_id": file.task_id}
    if path:
        row["path"] = path
    return row


async def discard_outbox(folder: Path) -> tuple[list[dict[str, Any]], str]:
    """No artifact store (a skill built without one): the files stay on the node only, and
    the outbox must not grow with every action."""
    if not (folder / OUTBOX).exists():
        return [], ""
    await asyncio.to_thread((folder / OUTBOX).unlink, missing_ok=True)
    return [], ""


def _inside(path: Path, folder: Path) -> bool:
    return path.is_relative_to(folder) and path.resolve().is_relative_to(folder.resolve())


def _take(outbox: Path, taken: Path) -> str:
    """The outbox's lines, moved aside first (the worker may append again at once); lines a
    node that died mid-publish left in `taken` come first."""
    try:
        left = taken.read_text()
    except FileNotFoundError:
        left = ""
    try:
        os.replace(outbox, taken)
    except FileNotFoundError:
        return left
    return left + taken.read_text()


class SessionFiles:
    """The artifacts side of every browser session of one node (owns the video uploads)."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store
        self._growing: dict[Path, list[_Growing]] = {}  # session dir -> its video uploads
        self._ended: dict[Path, list[dict[str, Any]]] = {}  # segments of a dead worker

    async def publish(self, folder: Path, task_id: str) -> tuple[list[dict[str, Any]], str]:
        """Upload what the session's outbox lists; (artifact rows, problems or "")."""
        taken = folder / f"{OUTBOX}.taken"
        if not (folder / OUTBOX).exists() and not taken.exists():
            return [], ""  # most actions produce no file: two stat calls, no thread hops
        text = await asyncio.to_thread(_take, folder / OUTBOX, taken)
        if not text:
            return [], ""
        rows: list[dict[str, Any]] = []
        problems: list[str] = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                rows.extend(await self._one(folder, task_id, entry))
            except (ValueError, KeyError, TypeError, OSError, CortexError) as exc:
                problems.append(f"{line[:200]}: {exc}")
        await asyncio.to_thread(taken.unlink, missing_ok=True)
        return rows, "; ".join(problems)

    async def _one(self, folder: Path, task_id: str, entry: dict[str, Any]
                   ) -> list[dict[str, Any]]:
        kind = entry["kind"]
        if kind == "done":
            return [*self._ended.pop(folder, []), *await self.finish(folder)]
        path = Path(entry["path"])
        if not await asyncio.to_thread(_inside, path, folder):
            raise PermissionDenied(f"{path} is outside the session's directory: not published")
        name = path.relative_to(folder).as_posix()
        media_type = str(entry.get("media_type", ""))
        if kind == "file":
            file = await self._store.upload_file(path, task_id=task_id, name=name,
                                                 media_type=media_type)
            return [describe(file, str(path))]
        if kind != "growing":
            raise InvalidArgument(f"unknown outbox entry kind {kind!r}")
        # One recording at a time: a new segment means the last one's writer is gone; its
        # upload completes now, and the stop action lists it with the others.
        self._ended.setdefault(folder, []).extend(await self.finish(folder))
        finished = asyncio.Event()
        upload = asyncio.get_running_loop().create_task(self._store.upload_growing(
            path, finished, task_id=task_id, name=name, media_type=media_type))
        self._growing.setdefault(folder, []).append(_Growing(path, finished, upload))
        return [{"path": str(path), "task_id": task_id, "streaming": True}]

    async def finish(self, folder: Path) -> list[dict[str, Any]]:
        """Complete the session's video uploads (the files are written); their rows."""
        rows: list[dict[str, Any]] = []
        for growing in self._growing.pop(folder, []):
            growing.finished.set()
            try:
                file = await growing.upload
            except (CortexError, OSError) as exc:
                rows.append({"path": str(growing.path), "error": str(exc)})
            else:
                rows.append(describe(file, str(growing.path)))
        return rows

    async def forget(self, folder: Path) -> None:
        """The session is closing: complete its video uploads with what was written."""
        self._ended.pop(folder, None)
        await self.finish(folder)

    async def fetch(self, folder: Path, artifact_ids: list[object]) -> list[str]:
        """Download artifacts into the session's ``uploads`` dir; their paths, in order."""
        if len(artifact_ids) > _MAX_UPLOAD_FILES:
            raise InvalidArgument(f"upload takes at most {_MAX_UPLOAD_FILES} artifacts, "
                                  f"got {len(artifact_ids)}")
        paths = []
        for artifact_id in artifact_ids:
            if not isinstance(artifact_id, str) or not artifact_id:
                raise InvalidArgument(f"upload: artifacts are artifact ids (strings), got "
                                      f"{artifact_id!r}")
            file = await self._store.stat(artifact_id)
            dest = folder / "uploads" / artifact_id / (Path(file.name).name or artifact_id)
            paths.append(str(await self._store.download(artifact_id, dest)))
        return paths

    async def aclose(self) -> None:
        """Complete every video upload with what was written (the node is stopping)."""
        uploads = [g for gs in self._growing.values() for g in gs]
        self._growing.clear()
        self._ended.clear()
        for growing in uploads:
            growing.finished.set()
        tasks = [g.upload for g in uploads]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_CLOSE_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
