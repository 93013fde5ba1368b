"""Calling an MCP server's tools from tests: one shared set of helpers for the MCP tests
(stdio and HTTP transports)."""

from __future__ import annotations

from typing import Any

from mcp import Client as McpClient
from mcp.types import CallToolResult, TextContent

from cortex.testing import eventually


async def call(client: McpClient, tool: str, **arguments: Any) -> dict[str, Any]:
    """The structured result of a tool call that must succeed."""
    res = await client.call_tool(tool, arguments)
    assert not res.is_error, text_of(res)
    assert res.structured_content is not None
    return res.structured_content


async def call_error(client: McpClient, tool: str, **arguments: Any) -> str:
    """The message of a tool call that must fail."""
    res = await client.call_tool(tool, arguments)
    assert res.is_error, res.structured_content
    return text_of(res)


def text_of(res: CallToolResult) -> str:
    return "".join(c.text for c in res.content if isinstance(c, TextContent))


async def cancel_task(client: McpClient, task_id: str, **arguments: Any) -> dict[str, Any]:
    """cancel_task's answer, once the task has ended. The tool waits a few seconds for the
    node to confirm; on a loaded machine it may answer before that (finished false, with a
    hint to check again), and then task_status is polled until the task has ended."""
    res = await call(client, "cancel_task", task_id=task_id, **arguments)
    if res["finished"]:
        return res

    async def ended() -> dict[str, Any] | None:
        status = await call(client, "task_status", task_id=task_id)
        return status if status["finished"] else None

    return await eventually(ended, f"task {task_id} to end after cancel_task")
