"""One exception root for everything Cortex raises on purpose.

The tree (each error says what was wrong and what to do):

    CortexError
    ├── InvalidArgument     the caller's fault: bad input, sizes, paths, ids
    │   └── QuotaExceeded       a task that alone needs more than its tenant's quota
    ├── NotFound            unknown task, node, token
    ├── PermissionDenied    missing/expired/revoked credentials, wrong tenant
    ├── Conflict            the thing is in a state that forbids the request
    │   └── IllegalTransition   a task state machine move that is not in the table
    ├── Unavailable         transient: hub or node unreachable, store busy; retry later
    └── RemoteError         the peer failed in a way we cannot classify

grpcio errors are translated in one place (`cortex.sdk._errors`), store errors in the
store package; the original is always chained.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "CortexError",
    "IllegalTransition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "QuotaExceeded",
    "RemoteError",
    "Unavailable",
]


class CortexError(Exception):
    """Root of every error Cortex raises on purpose."""


class InvalidArgument(CortexError):
    """The request itself is wrong; fix it and send it again."""


class QuotaExceeded(InvalidArgument):
    """The task alone needs more than its tenant's quota allows; it could never start."""


class NotFound(CortexError):
    """The named task, node or token does not exist (for this tenant)."""


class PermissionDenied(CortexError):
    """Credentials are missing, expired, revoked or do not reach this resource."""


class Conflict(CortexError):
    """The resource is in a state that forbids the request."""


class IllegalTransition(Conflict):
    """A task state machine move that the transition table does not allow."""


class Unavailable(CortexError):
    """A transient failure: the peer or the store is unreachable; retrying may work."""


class RemoteError(CortexError):
    """The peer failed in a way that has no better class."""
