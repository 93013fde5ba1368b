"""The MCP server: Cortex's tools on an `MCPServer`, served over stdio (here) or over
streamable HTTP by the hub (`cortex.mcp._http`)."""

from __future__ import annotations

import inspect

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

from cortex.mcp._binding import Binding
from cortex.mcp._errors import STDIO_CREDENTIALS
from cortex.mcp._stdin import StdinPipes
from cortex.mcp._tools import TOOL_NAMES, CortexTools
from cortex.sdk import Client, ClientConfig

__all__ = ["INSTRUCTIONS", "build_server", "serve_stdio"]

INSTRUCTIONS = """\
Cortex runs shell commands on a fleet of machines (nodes) for you.
- list_nodes shows the machines, their labels and load; pick one with labels or node_id.
- run_command runs a command and answers with its exit code and output when it finishes
  within wait_s (default 20 s); otherwise it answers with a task id.
- For long jobs use start_task, then task_output (with wait_s to wait for new output),
  task_status, and cancel_task. Nothing here blocks for more than 50 s.
- Interactive programs: start_task(interactive=true), then write_stdin and task_output.
- list_tasks finds earlier tasks. Output is capped; markers say how to read the rest.
- Files: list_artifacts / fetch_artifact for what tasks stored; list_files, read_file and
  write_file for files on a node (inside the directories it allows).
- Browser: browser_open starts a persistent Chromium session on a node (reuse its name in
  every call). browser_snapshot shows the page as text with element refs ([ref=e12]);
  act on refs with browser_click, browser_type, browser_fill, browser_press, browser_act.
  A ref goes stale when the page changes: take a new snapshot. browser_screenshot returns
  an image; browser_console and browser_network read what the page logged and loaded;
  browser_wait, browser_eval, browser_record; browser_close when done.
"""

_READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_RUN = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=True)
_CANCEL = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True,
                          open_world_hint=False)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)
# The browser reaches the web (open world); reading the page changes nothing on it.
_LOOK = ToolAnnotations(read_only_hint=True, open_world_hint=True)
_BROWSE = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=True)
_BROWSER_END = ToolAnnotations(read_only_hint=False, destructive_hint=True,
                               idempotent_hint=True, open_world_hint=False)

_TOOLS: dict[str, tuple[str, ToolAnnotations]] = {
    "list_nodes": ("List nodes", _READ),
    "run_command": ("Run a command", _RUN),
    "start_task": ("Start a long task", _RUN),
    "task_status": ("Task status", _READ),
    "task_output": ("Read task output", _READ),
    "cancel_task": ("Cancel a task", _CANCEL),
    "write_stdin": ("Write to a task's stdin", _WRITE),
    "list_tasks": ("List tasks", _READ),
    "list_artifacts": ("List artifacts", _READ),
    "fetch_artifact": ("Fetch an artifact", _READ),
    "list_files": ("List files on a node", _READ),
    "read_file": ("Read a file on a node", _READ),
    "write_file": ("Write a file on a node", _WRITE),
    "browser_open": ("Open a browser session", _BROWSE),
    "browser_navigate": ("Go to a URL", _BROWSE),
    "browser_snapshot": ("Snapshot the page (refs)", _LOOK),
    "browser_click": ("Click an element", _BROWSE),
    "browser_type": ("Type into an element", _BROWSE),
    "browser_fill": ("Fill form fields", _BROWSE),
    "browser_press": ("Press keys", _BROWSE),
    "browser_act": ("Other browser actions", _BROWSE),
    "browser_screenshot": ("Take a screenshot", _LOOK),
    "browser_eval": ("Evaluate JavaScript", _BROWSE),
    "browser_wait": ("Wait for the page", _LOOK),
    "browser_console": ("Read console messages", _LOOK),
    "browser_network": ("Read network requests", _LOOK),
    "browser_record": ("Record a video", _BROWSE),
    "browser_close": ("Close a browser session", _BROWSER_END),
}
assert tuple(_TOOLS) == TOOL_NAMES  # noqa: S101 - a new tool needs its title and annotations


def build_server(tools: CortexTools) -> MCPServer:
    """An MCPServer offering `tools` (not yet running)."""
    from cortex import __version__

    server: MCPServer = MCPServer("cortex", instructions=INSTRUCTIONS, version=__version__,
                                  log_level="WARNING")
    for name, (title, hints) in _TOOLS.items():
        fn = getattr(tools, name)
        server.add_tool(fn, name=name, title=title, annotations=hints,
                        description=inspect.cleandoc(fn.__doc__ or ""))
    return server


async def serve_stdio(config: ClientConfig) -> None:
    """Serve MCP on stdin/stdout until the client closes stdin; every call uses `config`."""
    async with Client(config) as client:
        pipes = StdinPipes(client)
        binding = Binding(client, pipes, STDIO_CREDENTIALS)
        try:
            await build_server(CortexTools(lambda: binding)).run_stdio_async()
        finally:
            await pipes.aclose()
