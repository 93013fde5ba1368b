"""The node's journal (`task_history`): what it was given, ran, reported, and what the hub
acknowledged — in a local SQLite file, so a crash or restart loses nothing.

Events are journaled before they are sent and deleted once the hub acknowledges them;
a restarted agent replays whatever is left, so results produced while disconnected still
arrive, exactly once (the hub stores each (task, attempt, seq) once).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cortex._proto.cortex.v1 import node_pb2

__all__ = ["HeldRow", "Journal"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS task_history (
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    assign BLOB NOT NULL,          -- the Assign message as received
    received_at REAL NOT NULL,
    pid INTEGER NOT NULL DEFAULT 0,
    finished INTEGER NOT NULL DEFAULT 0,
    next_seq INTEGER NOT NULL DEFAULT 1,
    acked_seq INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0,   -- the hub rejected the attempt
    PRIMARY KEY (task_id, attempt)
);
CREATE TABLE IF NOT EXISTS task_events (
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (task_id, attempt, seq)
) WITHOUT ROWID;
"""
_KEEP_HISTORY = 2000


@dataclass(frozen=True, slots=True)
class HeldRow:
    task_id: str
    attempt: int
    assign: node_pb2.Assign
    pid: int
    finished: bool
    next_seq: int
    acked_seq: int


class Journal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A process crash keeps every commit; only a power loss could drop the newest.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for every journal write inside (a frame of hub messages)."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def record_assign(self, assign: node_pb2.Assign, *, now: float) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO task_history(task_id, attempt, tenant, assign, received_at)"
            " VALUES (?,?,?,?,?)",
            (assign.task_id, assign.attempt, assign.tenant, assign.SerializeToString(), now),
        )

    def record_pid(self, task_id: str, attempt: int, pid: int) -> None:
        self._db.execute("UPDATE task_history SET pid = ? WHERE task_id = ? AND attempt = ?",
                         (pid, task_id, attempt))

    def append(self, batches: Iterable[tuple[str, int, int, list[node_pb2.NodeEvent], bool]]
               ) -> None:
        """Journal events: (task, attempt, first seq, events, finished) in one transaction."""
        db = self._db
        with self.batch():
            for task_id, attempt, first, events, finished in batches:
                db.executemany(
                    "INSERT INTO task_events VALUES (?,?,?,?)",
                    [(task_id, attempt, first + i, e.SerializeToString())
                     for i, e in enumerate(events)],
                )
                db.execute(
                    "UPDATE task_history SET next_seq = ?, finished = finished OR ?"
                    " WHERE task_id = ? AND attempt = ?",
                    (first + len(events), int(finished), task_id, attempt),
                )

    def ack(self, task_id: str, attempt: int, upto: int) -> None:
        with self.batch():
            self._db.execute(
                "DELETE FROM task_events WHERE task_id = ? AND attempt = ? AND seq <= ?",
                (task_id, attempt, upto))
            self._db.execute("UPDATE task_history SET acked_seq = max(acked_seq, ?)"
                             " WHERE task_id = ? AND attempt = ?", (upto, task_id, attempt))

    def drop(self, task_id: str, attempt: int) -> None:
        """The hub no longer wants this attempt: forget its unsent events."""
        with self.batch():
            self._db.execute("DELETE FROM task_events WHERE task_id = ? AND attempt = ?",
                             (task_id, attempt))
            self._db.execute("UPDATE task_history SET dropped = 1, finished = 1"
                             " WHERE task_id = ? AND attempt = ?", (task_id, attempt))

    def held(self) -> list[HeldRow]:
        """Attempts not yet finished, or finished with events the hub has not acked."""
        rows = self._db.execute(
            "SELECT task_id, attempt, assign, pid, finished, next_seq, acked_seq"
            " FROM task_history WHERE dropped = 0 AND (finished = 0 OR acked_seq < next_seq - 1)"
            " ORDER BY received_at"
        ).fetchall()
        return [HeldRow(r[0], r[1], node_pb2.Assign.FromString(r[2]), r[3], bool(r[4]),
                        r[5], r[6]) for r in rows]

    def unacked(self, task_id: str, attempt: int, after: int) -> list[node_pb2.NodeEvent]:
        rows = self._db.execute(
            "SELECT body FROM task_events WHERE task_id = ? AND attempt = ? AND seq > ?"
            " ORDER BY seq", (task_id, attempt, after),
        ).fetchall()
        return [node_pb2.NodeEvent.FromString(r[0]) for r in rows]

    def prune(self) -> None:
        """Keep the newest history rows of settled attempts; events are gone already."""
        self._db.execute(
            "DELETE FROM task_history WHERE rowid IN (SELECT rowid FROM task_history"
            " WHERE finished = 1 AND (dropped = 1 OR acked_seq >= next_seq - 1)"
            " ORDER BY received_at DESC LIMIT -1 OFFSET ?)", (_KEEP_HISTORY,),
        )
