"""Jittered exponential backoff with a total budget. Pure: the caller passes the clock."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """Delays for reconnecting, bounded in total; `reset` after a sign of health.

    "Full jitter": each delay is uniform in [0, min(cap, base * 2**n)], so many clients
    that lost the same hub do not come back in lockstep.
    """

    budget: float                  # seconds of continuous failure before giving up
    base: float = 0.1
    cap: float = 5.0
    rng: random.Random = field(default_factory=random.Random)
    _failures: int = 0
    _failing_since: float | None = None

    def reset(self) -> None:
        self._failures = 0
        self._failing_since = None

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before the next attempt, or None once the budget is spent."""
        if self._failing_since is None:
            self._failing_since = now
        left = self.budget - (now - self._failing_since)
        if left <= 0:
            return None
        ceiling = min(self.cap, self.base * 2.0**self._failures)
        self._failures += 1
        return min(left, self.rng.uniform(0.0, ceiling))
