"""The web dashboard, served by the hub's HTTP port under `/ui/`.

Server-rendered Jinja2 pages, htmx 2 and its SSE extension (vendored in `static/`, no CDN),
sessions from an API-token login, CSRF on every POST, everything scoped to the token's
tenant. See docs/dashboard.md.
"""

from __future__ import annotations

from cortex.hub.web._routes import PREFIX, SESSION_COOKIE, Dashboard
from cortex.hub.web._sessions import Session, Sessions

__all__ = ["PREFIX", "SESSION_COOKIE", "Dashboard", "Session", "Sessions"]
