"""Files on nodes through the SDK: list, stat, remove, copy both ways, and small reads and
writes in memory. The node's `fs` skill does the work inside its allowed roots; bytes move
through the hub's artifact store (a short-lived staging artifact, deleted afterwards).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc

from cortex._proto.cortex.v1 import artifacts_pb2 as apb
from cortex.errors import CortexError, InvalidArgument, NotFound, RemoteError
from cortex.sdk._errors import translate

if TYPE_CHECKING:
    from cortex.sdk._artifacts import Progress
    from cortex.sdk._client import Client, Result
    from cortex.sdk._config import ClientConfig

__all__ = ["NodeFileMethods"]

_STAGING_TTL_S = 86400.0   # a transfer's artifact, if the client dies before deleting it
_READ_MAX = 64 * 1024 * 1024


class NodeFileMethods:
    """Mixed into `Client` (uses its run, list_nodes and artifact methods)."""

    _config: ClientConfig
    _metadata: tuple[tuple[str, str], ...]

    def _me(self) -> Client:
        return cast("Client", self)

    async def node_id(self, node: str) -> str:
        """The id of a node given by id or name (NotFound, or InvalidArgument if ambiguous)."""
        found = [n.id for n in await self._me().list_nodes() if node in (n.id, n.name)]
        if not found:
            raise NotFound(f"no node {node!r} (cortex nodes ls shows ids and names)")
        if len(found) > 1:
            raise InvalidArgument(f"{len(found)} nodes are named {node!r}: use the id "
                                  f"({', '.join(found)})")
        return found[0]

    async def _fs(self, node: str, args: dict[str, Any]) -> Result:
        if not str(args.get("path", "")).startswith("/"):
            raise InvalidArgument(f"path {args.get('path')!r}: give an absolute path on the node")
        result = await self._me().run(skill="fs", args=args, node_id=await self.node_id(node))
        if not result.ok:
            raise RemoteError(f"on node {node}: {result.task.reason or 'fs operation failed'}")
        return result

    async def list_dir(self, node: str, path: str) -> list[dict[str, Any]]:
        """Entries of a directory on a node (name, type, mode, size, mtime), or the one
        entry of a file."""
        result = await self._fs(node, {"op": "ls", "path": path})
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    async def stat_path(self, node: str, path: str) -> dict[str, Any]:
        result = await self._fs(node, {"op": "stat", "path": path})
        return dict(json.loads(result.stdout.splitlines()[0]))

    async def remove_path(self, node: str, path: str, *, recursive: bool = False) -> None:
        await self._fs(node, {"op": "rm", "path": path, "recursive": recursive})

    async def copy_to_node(self, local: str | Path, node: str, path: str, *,
                           progress: Progress | None = None) -> str:
        """Upload a local file to `path` on a node (a directory keeps the file's name);
        returns the path written."""
        local = Path(local)
        file = await self._me().upload_artifact(local, ttl_s=_STAGING_TTL_S, progress=progress)
        try:
            result = await self._fs(node, {"op": "push", "path": path,
                                           "artifact_id": file.artifact_id,
                                           "name": local.name})
        finally:
            with contextlib.suppress(CortexError):
                await self._me().delete_artifact(file.artifact_id)
        return str(json.loads(result.stdout.splitlines()[0])["path"])

    async def copy_from_node(self, node: str, path: str, dest: str | Path, *,
                             progress: Progress | None = None) -> Path:
        """Download a file from a node to `dest` (a directory keeps its name), verified."""
        result = await self._fs(node, {"op": "pull", "path": path})
        (file,) = result.files
        try:
            return await self._me().download_artifact(file, dest, progress=progress)
        finally:
            with contextlib.suppress(CortexError):
                await self._me().delete_artifact(file.artifact_id)

    async def read_file(self, node: str, path: str, *, max_bytes: int = 1024 * 1024
                        ) -> tuple[bytes, int]:
        """The first `max_bytes` of a file on a node, and the file's full size."""
        if not 0 < max_bytes <= _READ_MAX:
            raise InvalidArgument(f"max_bytes: between 1 and {_READ_MAX}")
        result = await self._fs(node, {"op": "pull", "path": path})
        (file,) = result.files
        try:
            return await self.read_artifact(file.artifact_id, max_bytes=max_bytes), file.size
        finally:
            with contextlib.suppress(CortexError):
                await self._me().delete_artifact(file.artifact_id)

    async def write_file(self, node: str, path: str, data: bytes) -> str:
        """Write `data` to `path` on a node (replacing it atomically); the path written."""
        with tempfile.TemporaryDirectory(prefix="cortex-write-") as tmp:
            staged = Path(tmp) / (Path(path).name or "file")
            staged.write_bytes(data)
            return await self.copy_to_node(staged, node, path)

    async def read_artifact(self, artifact_id: str, *, max_bytes: int = 1024 * 1024
                            ) -> bytes:
        """The first `max_bytes` of an artifact, in memory (for small ones)."""
        out = bytearray()
        try:
            async for chunk in self._me()._artifact_stub().Read(
                    apb.ReadRequest(artifact_id=artifact_id, read_limit=max_bytes),
                    timeout=self._config.call_timeout, metadata=self._metadata):
                out += chunk.data
        except grpc.aio.AioRpcError as e:
            raise translate(e, address=self._config.address) from e
        return bytes(out[:max_bytes])
