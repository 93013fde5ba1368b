"""Cortex as an MCP server: the tools an AI agent uses to run commands on the fleet.

``cortex mcp`` (or ``python -m cortex.mcp``) serves them over stdio; the Cortex API token
from flags, the environment or client.json (see `cortex.sdk.ClientConfig`) authenticates
every call, so the token's tenant and role bound what the agent can do. The hub serves
the same tools over streamable HTTP at ``/mcp`` (`HttpMcp`), each call with the bearer
token of its caller. See docs/mcp.md.
"""

from __future__ import annotations

from cortex.mcp._binding import Binding
from cortex.mcp._http import HttpMcp
from cortex.mcp._server import INSTRUCTIONS, build_server, serve_stdio
from cortex.mcp._tools import MAX_WAIT_S, OUTPUT_LIMIT, TOOL_NAMES, CortexTools

__all__ = [
    "INSTRUCTIONS",
    "MAX_WAIT_S",
    "OUTPUT_LIMIT",
    "TOOL_NAMES",
    "Binding",
    "CortexTools",
    "HttpMcp",
    "build_server",
    "serve_stdio",
]
