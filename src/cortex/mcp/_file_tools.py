"""MCP tools for files: a task's artifacts, and files on nodes (inside their allowed roots).

Small contents come back inline (UTF-8 text, an image as an image block, other bytes as
base64), capped with a clear marker; bigger ones are summarised with the command that
fetches them in full.
"""

from __future__ import annotations

import base64
from typing import Annotated

from mcp.types import CallToolResult, ImageContent
from pydantic import BaseModel, Field

from cortex.mcp._binding import Resolve
from cortex.mcp._errors import ToolError, tool_errors
from cortex.mcp._models import result
from cortex.sdk import File

__all__ = ["INLINE_LIMIT", "FileTools"]

INLINE_LIMIT = 64 * 1024
"""Bytes of a file or artifact returned inline (text, or base64 for binary)."""
IMAGE_LIMIT = 2 * 1024 * 1024
"""An image artifact up to this size comes back as an image the model can look at."""
WRITE_LIMIT = 1024 * 1024
"""The most write_file accepts (bigger files: `cortex cp`)."""

NodeName = Annotated[str, Field(description="The node: its id or name (from list_nodes).")]
NodePath = Annotated[str, Field(description=(
    "An absolute path on the node, inside the directories it allows (its --fs-root)."))]


class ArtifactRow(BaseModel):
    artifact_id: str
    name: str
    size: int
    sha256: str
    media_type: str
    task_id: str | None = None


class ArtifactList(BaseModel):
    artifacts: list[ArtifactRow]
    hint: str | None = None


class Content(BaseModel):
    """A file's or artifact's bytes: inline if small, else the first INLINE_LIMIT bytes."""

    name: str
    size: int
    encoding: str                 # "utf-8", "base64", or "image" (an image block follows)
    content: str
    truncated: bool
    artifact_id: str | None = None
    node: str | None = None
    hint: str | None = None


class FileEntry(BaseModel):
    name: str
    type: str
    size: int
    mode: str | None = None


class FileEntries(BaseModel):
    node: str
    path: str
    entries: list[FileEntry]


class FileWritten(BaseModel):
    node: str
    path: str
    bytes_written: int


def _row(f: File) -> ArtifactRow:
    return ArtifactRow(artifact_id=f.artifact_id, name=f.name, size=f.size, sha256=f.sha256,
                       media_type=f.media_type, task_id=f.task_id or None)


def _content(data: bytes, size: int, **fields: str | None) -> Content:
    truncated = size > len(data)
    try:
        text, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(data).decode("ascii"), "base64"
    return Content(size=size, encoding=encoding, content=text, truncated=truncated,
                   **fields)  # type: ignore[arg-type]


class FileTools:
    """Mixed into `CortexTools`."""

    _resolve: Resolve

    async def list_artifacts(
        self,
        task_id: Annotated[str | None, Field(description=(
            "Only this task's artifacts (its output files); omit for the newest of all."
        ))] = None,
    ) -> Annotated[CallToolResult, ArtifactList]:
        """List stored artifacts (files tasks produced, screenshots, uploads): id, name,
        size, sha256 and media type. fetch_artifact returns one's content."""
        b = self._resolve()
        with tool_errors(task_id, credentials=b.credentials):
            files = await b.client.list_artifacts(task_id or "")
        hint = None if files else (
            "no artifacts: a task stores files when started with artifacts globs "
            "(cortex run --artifact 'out/*')")
        return result(ArtifactList(artifacts=[_row(f) for f in files[:200]], hint=hint))

    async def fetch_artifact(
        self,
        artifact_id: Annotated[str, Field(description="The artifact id (from list_artifacts "
                                                      "or a task's files).")],
    ) -> Annotated[CallToolResult, Content]:
        """Return an artifact's content: text inline, an image as an image, other small
        files as base64; past 64 KiB only the start, with the command to get it all."""
        b = self._resolve()
        with tool_errors(credentials=b.credentials):
            f = await b.client.stat_artifact(artifact_id)
            if f.media_type.startswith("image/") and f.size <= IMAGE_LIMIT:
                data = await b.client.read_artifact(artifact_id, max_bytes=IMAGE_LIMIT)
                shown = result(Content(name=f.name, size=f.size, encoding="image", content="",
                                       truncated=False, artifact_id=artifact_id,
                                       hint="the image is in this result's content"))
                shown.content.append(ImageContent(
                    type="image", data=base64.b64encode(data).decode("ascii"),
                    mime_type=f.media_type))
                return shown
            data = await b.client.read_artifact(artifact_id, max_bytes=INLINE_LIMIT)
        hint = None if f.size <= len(data) else (
            f"only the first {len(data)} of {f.size} bytes; the user can fetch it all with "
            f"`cortex artifacts get {artifact_id} -o ./`")
        return result(_content(data, f.size, name=f.name, artifact_id=artifact_id, hint=hint))

    async def list_files(self, node: NodeName, path: NodePath
                         ) -> Annotated[CallToolResult, FileEntries]:
        """List a directory on a node (name, type, size, mode), or show one file."""
        b = self._resolve()
        with tool_errors(credentials=b.credentials):
            entries = await b.client.list_dir(node, path)
        return result(FileEntries(node=node, path=path, entries=[
            FileEntry(name=e["name"], type=e["type"], size=e.get("size", 0),
                      mode=e.get("mode")) for e in entries[:1000]]))

    async def read_file(self, node: NodeName, path: NodePath
                        ) -> Annotated[CallToolResult, Content]:
        """Read a file on a node: text inline (binary as base64); past 64 KiB only the
        start, with the command to copy it all."""
        b = self._resolve()
        with tool_errors(credentials=b.credentials):
            data, size = await b.client.read_file(node, path, max_bytes=INLINE_LIMIT)
        hint = None if size <= len(data) else (
            f"only the first {len(data)} of {size} bytes; the user can copy it with "
            f"`cortex cp {node}:{path} ./`")
        return result(_content(data, size, name=path.rsplit("/", 1)[-1], node=node,
                               hint=hint))

    async def write_file(
        self, node: NodeName, path: NodePath,
        content: Annotated[str, Field(description="The new content (UTF-8 text).")],
    ) -> Annotated[CallToolResult, FileWritten]:
        """Write a text file on a node, replacing it atomically (up to 1 MiB)."""
        data = content.encode("utf-8")
        if len(data) > WRITE_LIMIT:
            raise ToolError(f"content is {len(data)} bytes; write_file takes at most "
                            f"{WRITE_LIMIT} (the user can copy big files with `cortex cp`)")
        b = self._resolve()
        with tool_errors(credentials=b.credentials):
            written = await b.client.write_file(node, path, data)
        return result(FileWritten(node=node, path=written, bytes_written=len(data)))
