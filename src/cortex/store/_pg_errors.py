"""psycopg's errors as Cortex errors, in one place, for the Postgres store.

Integrity violations (unique, foreign key) are Conflict, values Postgres cannot hold are
InvalidArgument, everything else (connection refused or lost, pool exhausted,
serialization failures, a dropped schema) is Unavailable. Messages name the server
(host:port/db, never a password) and what to do.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from cortex.errors import Conflict, CortexError, InvalidArgument, Unavailable

__all__ = ["describe", "translate"]

_CONSTRAINT_HINTS = {
    "task_events_pkey": "event sequence numbers already used",
    "tasks_pkey": "a task with this id exists already",
    "nodes_pkey": "a node with this id belongs to another tenant",
}


def translate(exc: psycopg.Error, where: str) -> CortexError:
    """psycopg's error as Cortex's; the caller chains the original (`raise … from exc`)."""
    if isinstance(exc, psycopg.IntegrityError):
        hint = _CONSTRAINT_HINTS.get(exc.diag.constraint_name or "", "")
        return Conflict(f"the store refused a write that conflicts with existing data"
                        f"{': ' + hint if hint else ''} ({_first_line(exc)})")
    if isinstance(exc, psycopg.DataError):
        return InvalidArgument(f"Postgres cannot store this value: {_first_line(exc)}")
    if isinstance(exc, PoolTimeout):
        return Unavailable(f"no connection to Postgres at {where} came free in time: the "
                           f"server is slow or unreachable; retry later ({_first_line(exc)})")
    if isinstance(exc, psycopg.OperationalError) and _connection_lost(exc.sqlstate):
        return Unavailable(f"cannot reach Postgres at {where}: {_first_line(exc)}; check that "
                           f"the server is running and the store URL is right, then retry")
    return Unavailable(f"the Postgres store at {where} failed: {_first_line(exc)}"
                       f"{f' (SQLSTATE {exc.sqlstate})' if exc.sqlstate else ''}")


def _connection_lost(sqlstate: str | None) -> bool:
    # None: libpq's own failure (refused, timed out, socket closed); 08: connection
    # exception; 57P0x: the server is shutting down, crashed or still starting.
    return sqlstate is None or sqlstate.startswith(("08", "57P0"))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def describe(params: dict[str, Any]) -> str:
    """host:port/dbname of a conninfo, never its password."""
    host = params.get("host") or params.get("hostaddr") or "the local socket"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or 'postgres'}"
