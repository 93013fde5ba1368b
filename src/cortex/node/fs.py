"""The `fs` skill: basic file operations on a node, inside the roots the node allows.

``spec.args``: ``{"op": "ls"|"stat"|"rm"|"pull"|"push", "path": "/abs/path", ...}``

- ls / stat print JSON (one object per line for ls) on stdout;
- rm removes a file, or a directory with ``"recursive": true``;
- pull uploads a file as an artifact of this task (the client then downloads it);
- push downloads ``"artifact_id"`` to ``path`` (into it when it is a directory).

Path safety: paths are absolute, without '..'; after resolving symlinks they must stay
inside one of the node's allowed roots (`NodeConfig.fs_roots`); the final write is a
rename of a part file opened with O_NOFOLLOW. With no roots configured the skill refuses.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cortex._proto.cortex.v1 import common_pb2
from cortex.core.states import State
from cortex.errors import CortexError, InvalidArgument, NotFound, PermissionDenied
from cortex.node.artifacts import NodeArtifacts
from cortex.skills.base import Outcome, OutputSink, TaskRun

__all__ = ["FsSkill", "safe_path"]

_MAX_LIST = 10_000


def safe_path(roots: Sequence[Path], raw: str) -> Path:
    """`raw` as a resolved path inside one of `roots`; PermissionDenied otherwise."""
    if not roots:
        raise PermissionDenied("this node allows no file operations: start it with "
                               "--fs-root DIR (repeatable) to allow some directories")
    if not raw or "\0" in raw or not raw.startswith("/"):
        raise InvalidArgument(f"path {raw!r}: give an absolute path on the node")
    if ".." in raw.split("/"):
        raise PermissionDenied(f"path {raw!r}: '..' is not allowed")
    real = Path(os.path.realpath(raw))
    for root in roots:
        if real == root or real.is_relative_to(root):
            return real
    where = "resolves (through a symlink) to " + str(real) if str(real) != \
        os.path.normpath(raw) else "is"
    raise PermissionDenied(f"path {raw!r} {where} outside the node's allowed roots "
                           f"({', '.join(map(str, roots))})")


def _entry(path: Path, name: str | None = None) -> dict[str, Any]:
    st = path.lstat()
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) \
        else "file" if stat.S_ISREG(st.st_mode) else "other"
    return {"name": name if name is not None else str(path), "type": kind,
            "size": st.st_size, "mode": oct(stat.S_IMODE(st.st_mode)), "mtime": st.st_mtime}


class FsSkill:
    name = "fs"

    def __init__(self, artifacts: NodeArtifacts, roots: Sequence[str | Path]) -> None:
        self._artifacts = artifacts
        self._roots = tuple(Path(os.path.realpath(r)) for r in roots)

    async def start(self, *, task_id: str, attempt: int, spec: common_pb2.TaskSpec,
                    timeout_s: float | None, sink: OutputSink) -> TaskRun:
        args = dict(spec.args.items())
        return _FsRun(asyncio.ensure_future(self._run(task_id, args, sink)), timeout_s)

    async def _run(self, task_id: str, args: dict[str, Any], sink: OutputSink) -> None:
        op, raw = str(args.get("op", "")), str(args.get("path", ""))
        ops = {"ls": self._ls, "stat": self._stat, "rm": self._rm, "pull": self._pull,
               "push": self._push}
        if op not in ops:
            raise InvalidArgument(f"fs: op must be one of {', '.join(ops)}, not {op!r}")
        result = await ops[op](task_id, safe_path(self._roots, raw), args)
        for item in result:
            sink(common_pb2.STDOUT, json.dumps(item).encode() + b"\n")

    async def _ls(self, task_id: str, path: Path, args: dict[str, Any]
                  ) -> list[dict[str, Any]]:
        def listing() -> list[dict[str, Any]]:
            if not path.exists():
                raise NotFound(f"{path}: no such file or directory on the node")
            if not path.is_dir():
                return [_entry(path)]
            names = sorted(os.listdir(path))[:_MAX_LIST]
            return [_entry(path / n, n) for n in names]

        return await asyncio.to_thread(listing)

    async def _stat(self, task_id: str, path: Path, args: dict[str, Any]
                    ) -> list[dict[str, Any]]:
        if not await asyncio.to_thread(path.exists):
            raise NotFound(f"{path}: no such file or directory on the node")
        return [await asyncio.to_thread(_entry, path)]

    async def _rm(self, task_id: str, path: Path, args: dict[str, Any]
                  ) -> list[dict[str, Any]]:
        if path in self._roots:
            raise PermissionDenied(f"{path} is an allowed root; it is not removed")

        def remove() -> None:
            if not path.exists():
                raise NotFound(f"{path}: no such file or directory on the node")
            if path.is_dir():
                if not args.get("recursive"):
                    raise InvalidArgument(f"{path} is a directory: pass recursive (rm -r)")
                shutil.rmtree(path)
            else:
                path.unlink()

        await asyncio.to_thread(remove)
        return [{"removed": str(path)}]

    async def _pull(self, task_id: str, path: Path, args: dict[str, Any]
                    ) -> list[dict[str, Any]]:
        if not await asyncio.to_thread(path.is_file):
            raise NotFound(f"{path}: not a regular file on the node")
        file = await self._artifacts.upload_file(path, task_id=task_id, name=path.name)
        return [{"artifact_id": file.artifact_id, "name": file.name, "size": file.size,
                 "sha256": file.sha256}]

    async def _push(self, task_id: str, path: Path, args: dict[str, Any]
                    ) -> list[dict[str, Any]]:
        artifact_id = str(args.get("artifact_id", ""))
        name = str(args.get("name", "")) or "upload.bin"
        if "/" in name or name in (".", ".."):
            raise InvalidArgument(f"fs push: name {name!r} must be a plain file name")
        dest = path / name if await asyncio.to_thread(path.is_dir) else path
        dest = safe_path(self._roots, str(dest))
        if not await asyncio.to_thread(dest.parent.is_dir):
            raise NotFound(f"{dest.parent}: no such directory on the node")
        await self._artifacts.download(artifact_id, dest)
        return [{"path": str(dest), "size": (await asyncio.to_thread(dest.stat)).st_size}]


class _FsRun:
    """A run that is one coroutine: cancel() cancels it; the outcome says how it ended."""

    def __init__(self, work: asyncio.Future[None], timeout_s: float | None) -> None:
        self.pid: int | None = None
        self._work = work
        self._ended: tuple[State, str] | None = None
        if timeout_s is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(timeout_s, self.cancel, State.TIMED_OUT, "timed out")

    def write_stdin(self, data: bytes) -> None:
        raise InvalidArgument("the fs skill reads no stdin")

    def close_stdin(self) -> None:
        pass

    def resize(self, rows: int, cols: int) -> None:
        pass

    def cancel(self, state: State = State.CANCELLED, reason: str = "") -> None:
        if not self._work.done():
            self._ended = (state, reason or "cancelled")
            self._work.cancel()

    async def wait(self) -> Outcome:
        try:
            await asyncio.shield(self._work)
        except asyncio.CancelledError:
            if not self._work.cancelled():
                raise   # our caller was cancelled, not the work
            state, reason = self._ended or (State.CANCELLED, "cancelled")
            return Outcome(state, None, reason)
        except CortexError as exc:
            return Outcome(State.FAILED, 1, str(exc))
        except OSError as exc:
            return Outcome(State.FAILED, 1, f"fs: {exc}")
        return Outcome(State.SUCCEEDED, 0)
