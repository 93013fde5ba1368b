"""The browser skill's worker: drives one session's Chromium over CDP (docs/browser.md).

The node launches Chromium; this worker attaches to it, so killing the worker loses
nothing of the session. Actions and their args: `cortex.workers.browser._actions.ACTIONS`.
"""

from __future__ import annotations

from cortex.workers.browser._handler import BrowserHandler

__all__ = ["BrowserHandler", "open_handler"]


def open_handler() -> BrowserHandler:
    return BrowserHandler()
