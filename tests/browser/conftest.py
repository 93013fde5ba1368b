"""Browser tests: real Debian Chromium, a local test site (browser_site.py), real workers.

They skip - saying why - only when no Chromium is installed; `make test` installs it
(scripts/ensure_system_deps.sh with CORTEX_NEED_BROWSER=1), so CI runs them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser_site import serve_site

from cortex.skills.browser import find_chromium

CHROMIUM = find_chromium()
NO_CHROMIUM = "no Chromium: run `make system-deps` (apt-get install chromium)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.browser)
            if CHROMIUM is None:
                item.add_marker(pytest.mark.skip(reason=NO_CHROMIUM))


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The test site's base URL, shared by a module's tests."""
    with serve_site() as base:
        yield base
