"""MCP file tools over stdio against a real hub and node: artifacts listed and fetched
(text inline, images as images, big ones capped with the command for the rest), files on
a node listed, read and written inside its allowed roots, and refused outside them."""

from __future__ import annotations

import base64
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client as McpClient
from mcp import StdioServerParameters
from mcp.types import ImageContent
from mcp_calls import call, call_error

from cortex.hub.server import Hub
from cortex.mcp import TOOL_NAMES
from cortex.mcp._file_tools import INLINE_LIMIT
from cortex.sdk import Client
from cortex.testing import running_node

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

PY = sys.executable
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """SQLite only: the tools reach the hub through the SDK (the store changes nothing)."""
    return str(tmp_path / "hub" / "hub.db")


@contextlib.asynccontextmanager
async def mcp_server(hub: Hub, tmp_path: Path) -> AsyncIterator[McpClient]:
    home = tmp_path / "mcp-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {"CORTEX_HUB": hub.address, "CORTEX_TOKEN": hub.admin_token,
           "CORTEX_CA": str(hub.config.data_dir / "ca" / "ca.pem"), "CORTEX_HOME": str(home)}
    async with McpClient(StdioServerParameters(command=PY, args=["-m", "cortex", "mcp"],
                                               env=env)) as client:
        yield client


async def test_files_on_a_node_are_listed_read_and_written_inside_its_roots(
        hub: Hub, tmp_path: Path) -> None:
    """write_file then read_file round-trips; list_files shows the file; a big file comes
    back capped with the cp command; a path outside the roots is refused clearly."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "big.log").write_text("x" * (INLINE_LIMIT + 10))
    async with running_node(hub, tmp_path / "n1", name="box", fs_roots=(str(root),)), \
            mcp_server(hub, tmp_path) as mcp:
        assert {"list_files", "read_file", "write_file"} <= set(TOOL_NAMES)
        written = await call(mcp, "write_file", node="box", path=f"{root}/notes.txt",
                             content="hello from the agent\n")
        assert written["bytes_written"] == 21
        assert (root / "notes.txt").read_text() == "hello from the agent\n"
        got = await call(mcp, "read_file", node="box", path=f"{root}/notes.txt")
        assert (got["content"], got["encoding"], got["truncated"]) == (
            "hello from the agent\n", "utf-8", False)
        listed = await call(mcp, "list_files", node="box", path=str(root))
        assert {e["name"] for e in listed["entries"]} == {"notes.txt", "big.log"}
        big = await call(mcp, "read_file", node="box", path=f"{root}/big.log")
        assert big["truncated"] is True
        assert len(big["content"]) == INLINE_LIMIT
        assert f"cortex cp box:{root}/big.log" in big["hint"]
        refused = await call_error(mcp, "read_file", node="box", path="/etc/passwd")
        assert "outside" in refused or "not allowed" in refused or "root" in refused


async def test_artifacts_are_listed_and_fetched_text_inline_images_as_images(
        hub: Hub, client: Client, tmp_path: Path) -> None:
    """A task's output file is listed and fetched as text; a PNG comes back as an image."""
    work = tmp_path / "work"
    work.mkdir()
    async with running_node(hub, tmp_path / "n1"), mcp_server(hub, tmp_path) as mcp:
        done = await client.run(command="echo result-42 > out.txt", cwd=str(work),
                                artifacts=["out.txt"])
        assert done.ok, done.stderr
        listed = await call(mcp, "list_artifacts", task_id=done.task.id)
        (row,) = listed["artifacts"]
        assert (row["name"], row["size"]) == ("out.txt", 10)
        fetched = await call(mcp, "fetch_artifact", artifact_id=row["artifact_id"])
        assert (fetched["content"], fetched["encoding"]) == ("result-42\n", "utf-8")
        png = tmp_path / "shot.png"
        png.write_bytes(PNG)
        image = await client.upload_artifact(png, media_type="image/png")
        res = await mcp.call_tool("fetch_artifact", {"artifact_id": image.artifact_id})
        assert not res.is_error
        assert res.structured_content is not None
        assert res.structured_content["encoding"] == "image"
        (block,) = [c for c in res.content if isinstance(c, ImageContent)]
        assert base64.b64decode(block.data) == PNG
        missing = await call_error(mcp, "fetch_artifact", artifact_id="a-nope")
        assert "not found" in missing or "invalid" in missing
