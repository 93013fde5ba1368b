"""Dashboard sessions: who logged in, their CSRF secret, when the session ends. No I/O.

A session is created by a successful login with an API token and lives in the hub's
memory only: a hub restart logs everyone out (they log in again). The token itself is kept
so each request re-checks it (a revoked or expired token ends its sessions at once).
Time is passed in, so the expiry rules are tested without a clock.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass, replace

__all__ = ["IDLE_S", "LIFETIME_S", "MAX_PER_TOKEN", "MAX_SESSIONS", "Session", "Sessions",
           "same_secret"]

IDLE_S = 30 * 60.0
"""A session unused this long ends."""
LIFETIME_S = 12 * 3600.0
"""A session ends this long after login, however busy."""
MAX_SESSIONS = 10_000
"""Past this many, logging in ends the least recently used session."""
MAX_PER_TOKEN = 16
"""Past this many of one token, its login ends that token's least recently used session:
one token (of any tenant) cannot fill the hub's table and push everyone else out."""


@dataclass(frozen=True, slots=True)
class Session:
    id: str            # the cookie's value (random, 256 bits)
    csrf: str          # sent back in a hidden field or X-CSRF-Token header on every POST
    token: str         # the API token the user logged in with (memory only)
    created_at: float
    last_used: float

    def expires_at(self, *, idle_s: float, lifetime_s: float) -> float:
        return min(self.last_used + idle_s, self.created_at + lifetime_s)


def same_secret(given: str, expected: str) -> bool:
    """Constant-time equality of two secrets; an empty one never matches."""
    return bool(given) and bool(expected) and hmac.compare_digest(given.encode(),
                                                                  expected.encode())


class Sessions:
    """The live sessions of one hub, least recently used first."""

    def __init__(self, *, idle_s: float = IDLE_S, lifetime_s: float = LIFETIME_S,
                 max_sessions: int = MAX_SESSIONS, max_per_token: int = MAX_PER_TOKEN) -> None:
        self.idle_s = idle_s
        self.lifetime_s = lifetime_s
        self._max = max_sessions
        self._max_per_token = max_per_token
        self._live: OrderedDict[str, Session] = OrderedDict()
        self._by_token: dict[str, OrderedDict[str, None]] = {}   # token -> its session ids

    def __len__(self) -> int:
        return len(self._live)

    def create(self, token: str, *, now: float) -> Session:
        """A new session for `token`. At the token's bound its own least recently used
        session ends; at the hub's bound, the least recently used of all."""
        mine = self._by_token.get(token)
        while mine and len(mine) >= self._max_per_token:
            self._drop(next(iter(mine)))
        while len(self._live) >= self._max:
            self._drop(next(iter(self._live)))
        session = Session(id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32),
                          token=token, created_at=now, last_used=now)
        self._live[session.id] = session
        self._by_token.setdefault(token, OrderedDict())[session.id] = None
        return session

    def touch(self, session_id: str, *, now: float) -> Session | None:
        """The live session with this id, marked as used now; None if unknown or expired."""
        session = self._live.get(session_id)
        if session is None:
            return None
        if now >= session.expires_at(idle_s=self.idle_s, lifetime_s=self.lifetime_s):
            self._drop(session_id)
            return None
        session = replace(session, last_used=now)
        self._live[session_id] = session
        self._live.move_to_end(session_id)
        self._by_token[session.token].move_to_end(session_id)
        return session

    def end(self, session_id: str) -> None:
        self._drop(session_id)

    def end_for_token(self, token: str) -> int:
        """End every session logged in with `token` (it was refused); how many ended."""
        gone = list(self._by_token.get(token, ()))
        for sid in gone:
            self._drop(sid)
        return len(gone)

    def _drop(self, session_id: str) -> None:
        session = self._live.pop(session_id, None)
        if session is None:
            return
        mine = self._by_token[session.token]
        del mine[session_id]
        if not mine:
            del self._by_token[session.token]
