"""The browser skill: persistent Chromium sessions on a node (docs/browser.md).

The node launches one Chromium per session (`_chromium`) and hands each action to the
session's worker process (cortex.workers.browser), which attaches over CDP.
"""

from cortex.skills.browser._chromium import CHROMIUM_FLAGS, Chromium, find_chromium, probe_chromium
from cortex.skills.browser._skill import (
    BrowserPolicy,
    BrowserSettings,
    BrowserSkill,
    session_limit,
)

__all__ = [
    "CHROMIUM_FLAGS",
    "BrowserPolicy",
    "BrowserSettings",
    "BrowserSkill",
    "Chromium",
    "find_chromium",
    "probe_chromium",
    "session_limit",
]
