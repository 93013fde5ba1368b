"""``python -m cortex.mcp``: the MCP server over stdio, configured from the environment
(CORTEX_HUB, CORTEX_TOKEN, CORTEX_CA, or the local hub's client.json)."""

from __future__ import annotations

import asyncio
import sys

from cortex.errors import CortexError
from cortex.mcp._server import serve_stdio
from cortex.sdk import ClientConfig


def main() -> int:
    try:
        config = ClientConfig.from_env()
    except CortexError as e:
        # stdout belongs to the MCP protocol; the client shows the server's stderr.
        print(f"cortex mcp: error: {e}", file=sys.stderr)
        return 1
    print(f"cortex: MCP server on stdio for hub {config.address}", file=sys.stderr)
    try:
        asyncio.run(serve_stdio(config))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
