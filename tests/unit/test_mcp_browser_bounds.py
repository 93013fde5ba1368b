"""The browser MCP tools' bound: a call that runs past it ends as a tool error saying what
happened and what to do, and a node's refusal passes through unchanged."""

from __future__ import annotations

import asyncio

import pytest

from cortex.mcp import _browser_tools
from cortex.mcp._binding import Binding
from cortex.mcp._errors import STDIO_CREDENTIALS, ToolError
from cortex.sdk import BrowserError

# _browser_call reads only the binding's credentials: no hub is needed to test the bound.
BINDING = Binding(client=None, pipes=None, credentials=STDIO_CREDENTIALS)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_call_past_the_bound_is_cancelled_and_says_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The action is cancelled at CALL_LIMIT_S; the error names the session and the bound."""
    monkeypatch.setattr(_browser_tools, "CALL_LIMIT_S", 0.05)
    cancelled = False

    async def action() -> None:
        nonlocal cancelled
        async with _browser_tools._browser_call(BINDING, "s1", "wait"):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled = True
                raise

    with pytest.raises(ToolError, match=r"browser wait in session s1 did not finish within "
                                        r"0.05 s and was cancelled: .*list_nodes"):
        await action()
    assert cancelled


@pytest.mark.asyncio
async def test_the_nodes_reason_passes_through() -> None:
    """A BrowserError's message (the node's reason, which says what to do) is the tool error."""
    reason = ("browser click in session s1 failed: click: ref e12 is not on the page any more "
              "(...): take a fresh snapshot and use its refs")

    async def action() -> None:
        async with _browser_tools._browser_call(BINDING, "s1", "click"):
            raise BrowserError(reason)

    with pytest.raises(ToolError) as caught:
        await action()
    assert str(caught.value) == reason
