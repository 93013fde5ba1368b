"""The one place where Cortex errors become MCP tool errors that say what to do next."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mcp.server.mcpserver.exceptions import ToolError

from cortex.errors import (
    Conflict,
    CortexError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

__all__ = ["HTTP_CREDENTIALS", "STDIO_CREDENTIALS", "ToolError", "tool_errors"]

STDIO_CREDENTIALS = (
    "the Cortex API token this MCP server was started with (CORTEX_TOKEN or --token in the "
    "MCP client's configuration of `cortex mcp`) is missing, wrong, expired, revoked, or "
    "its role may not do this. Retrying will not help: ask the user to fix the token and "
    "restart the MCP server"
)
"""What to do about a refused token, over stdio."""
HTTP_CREDENTIALS = (
    "the Cortex API token this MCP client sends (its 'Authorization: Bearer ctk_…' header "
    "for the hub's /mcp) is wrong, expired, revoked, or its role may not do this. Retrying "
    "will not help: ask the user to put a token with the right role in the MCP client's "
    "configuration"
)
"""What to do about a refused token, over HTTP."""


@contextmanager
def tool_errors(task_id: str | None = None, *,
                credentials: str = STDIO_CREDENTIALS) -> Iterator[None]:
    """Turn a CortexError raised inside into a ToolError the model can act on;
    `credentials` says what to do about a refused token on this transport."""
    try:
        yield
    except CortexError as e:
        raise ToolError(_message(e, task_id, credentials)) from e


def _message(error: CortexError, task_id: str | None, credentials: str) -> str:
    text = str(error)
    if isinstance(error, PermissionDenied):
        return f"permission denied ({text}): {credentials}"
    if isinstance(error, NotFound) and task_id is not None:
        return (
            f"no task {task_id!r} is visible to this token: check the id "
            "(list_tasks shows the recent ones)"
        )
    if isinstance(error, NotFound):
        return f"not found: {text}"
    if isinstance(error, InvalidArgument):
        return f"invalid argument: {text}. Fix the arguments and call again"
    if isinstance(error, Conflict):
        return f"not possible now: {text}"
    if isinstance(error, Unavailable):
        return (
            f"the Cortex hub did not answer: {text}. It may be restarting: retry in a few "
            "seconds; if it keeps failing, ask the user to check the hub and CORTEX_HUB"
        )
    return f"the Cortex hub failed: {text}. Retry once; if it fails again, tell the user"
