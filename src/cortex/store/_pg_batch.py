"""Group commit of task writes for the Postgres store.

`insert_task` and `save_task` are the hub's hot path: a dispatched task costs one insert
and about three saves. Postgres already shares WAL flushes between concurrent commits;
the cost was in Python: one statement per write spent several milliseconds of hub CPU per
task (psycopg's per-statement cost, a pool checkout, a wake-up per reply; psycopg
prepares a statement by itself once it has run a few times). So the writes queued within
one event-loop tick go out as ONE statement per kind: a multi-row INSERT or UPDATE fed by
``unnest`` of column arrays, whose RETURNING feeds the events and attempts of exactly
the rows it wrote (data-modifying CTEs). One statement on an autocommit connection is one
transaction: every write in a batch commits together, and each caller is answered only
after that commit.

Each caller still gets its own result:

- a save whose expected version no longer matches is not in the UPDATE's RETURNING, so
  its events and attempt are not written and its caller gets Conflict, while the other
  saves of the batch commit;
- an insert whose idempotency key is taken inserts nothing (ON CONFLICT DO NOTHING), and
  one more statement reads the winners for those callers;
- a batch that Postgres refuses as a whole because of ONE write (a duplicate event seq, a
  reused task id, an unknown tenant, a value Postgres cannot hold) rolled back entirely,
  so each of its writes is then run again on its own and only the culprit fails;
- a lost connection fails every caller of the batch with Unavailable; the statement was
  applied entirely or not at all.

Ordering: a write is never in the same batch, nor in flight at the same time, as an
earlier write of the same task id or idempotency key; it waits for that one to land.
Two writes of one task in one UPDATE would apply only one of them, and two flights
holding the same key could deadlock. Rows are written in id order (inserts in key
order), so two hubs writing overlapping batches lock them in the same order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.errors import Conflict, CortexError, InvalidArgument

__all__ = ["TaskWriter"]

_Conn = AsyncConnection[TupleRow]
Connect = Callable[[], AbstractAsyncContextManager[_Conn]]

# Rows per statement; more stay queued for the next one.
MAX_BATCH = 512
# Batches in flight at once, each on its own pooled connection.
MAX_FLIGHTS = 4
# The arrays go in binary (%b): psycopg dumps them several times faster than as text,
# bytea above all (no escaping), and that dumping was most of a batch's cost in Python.

# Only the idempotency index is an ON CONFLICT arbiter: a reused task id must still fail.
INSERT_TASKS = """
    WITH task AS (
        INSERT INTO tasks(id, tenant, state, node_id, idempotency_key, version, labels, body)
        SELECT i.id, i.tenant, i.state, i.node_id, i.key, i.version, i.labels::jsonb, i.body
        FROM unnest(%(ids)b::text[], %(tenants)b::text[], %(states)b::integer[],
                    %(node_ids)b::text[], %(keys)b::text[], %(versions)b::bigint[],
                    %(labels)b::text[], %(bodies)b::bytea[])
             AS i(id, tenant, state, node_id, key, version, labels, body)
        ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id
    ),
    events AS (
        INSERT INTO task_events(task_id, seq, tenant, body)
        SELECT e.task_id, e.seq, e.tenant, e.body
        FROM unnest(%(ev_ids)b::text[], %(ev_tenants)b::text[], %(ev_seqs)b::bigint[],
                    %(ev_bodies)b::bytea[]) AS e(task_id, tenant, seq, body)
        WHERE e.task_id IN (SELECT id FROM task)
    )
    SELECT id FROM task"""
_WINNERS = """
    SELECT t.tenant, t.idempotency_key, t.body FROM tasks t
    JOIN unnest(%b::text[], %b::text[]) AS k(tenant, key)
      ON t.tenant = k.tenant AND t.idempotency_key = k.key"""
_SAVE = """
    WITH task AS (
        UPDATE tasks t SET state = i.state, node_id = i.node_id, version = i.version,
                           labels = i.labels::jsonb, body = i.body
        FROM unnest(%(ids)b::text[], %(tenants)b::text[], %(expected)b::bigint[],
                    %(states)b::integer[], %(node_ids)b::text[], %(versions)b::bigint[],
                    %(labels)b::text[], %(bodies)b::bytea[])
             AS i(id, tenant, expected, state, node_id, version, labels, body)
        WHERE t.id = i.id AND t.tenant = i.tenant AND t.version = i.expected{claim}
        RETURNING t.id
    ),
    events AS (
        INSERT INTO task_events(task_id, seq, tenant, body)
        SELECT e.task_id, e.seq, e.tenant, e.body
        FROM unnest(%(ev_ids)b::text[], %(ev_tenants)b::text[], %(ev_seqs)b::bigint[],
                    %(ev_bodies)b::bytea[]) AS e(task_id, tenant, seq, body)
        WHERE e.task_id IN (SELECT id FROM task)
    ),
    attempt AS (
        INSERT INTO task_attempts(task_id, attempt, tenant, body)
        SELECT a.task_id, a.attempt, a.tenant, a.body
        FROM unnest(%(at_ids)b::text[], %(at_tenants)b::text[], %(attempts)b::integer[],
                    %(at_bodies)b::bytea[]) AS a(task_id, tenant, attempt, body)
        WHERE a.task_id IN (SELECT id FROM task)
        ON CONFLICT (task_id, attempt) DO UPDATE
            SET tenant = EXCLUDED.tenant, body = EXCLUDED.body
    )
    SELECT id FROM task"""
# A claim (the move out of QUEUED, which several hubs race for) skips a row another
# hub's statement holds locked: that caller gets Conflict at once instead of waiting.
CLAIM_TASKS = _SAVE.format(claim="""
              AND t.id IN (SELECT c.id FROM tasks c
                           WHERE c.id = ANY(%(ids)b::text[]) AND c.state = 1
                           FOR UPDATE SKIP LOCKED)""")
SAVE_TASKS = _SAVE.format(claim="")


@dataclass(eq=False)
class _Write:
    """One caller's insert (expected is None) or save, waiting for its batch."""

    tenant: str
    task: pb.Task
    events: Sequence[pb.TaskEvent]
    expected: int | None = None
    attempt: pb.Attempt | None = None
    claim: bool = False
    done: asyncio.Future[pb.Task | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    key: str | None = field(init=False)
    # What no other write in its batch or in flight may share.
    locks: tuple[tuple[str, ...], ...] = field(init=False)
    answered: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.key = self.task.spec.idempotency_key or None
        self.locks = (("id", self.task.id),) if self.key is None else (
            ("id", self.task.id), ("key", self.tenant, self.key))


class TaskWriter:
    """Writes tasks in batches on connections from `connect` (a pooled connection whose
    driver errors come out as Cortex errors)."""

    def __init__(self, connect: Connect, *, max_flights: int = MAX_FLIGHTS) -> None:
        self._connect = connect
        self._max_flights = max_flights
        self._pending: list[_Write] = []
        self._locked: set[tuple[str, ...]] = set()
        self._flights: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def insert(self, tenant: str, task: pb.Task, events: Sequence[pb.TaskEvent]
                     ) -> tuple[pb.Task, bool]:
        """`task` and True once inserted, or the task already holding its idempotency
        key and False."""
        winner = await self._submit(_Write(tenant, task, events))
        return (task, True) if winner is None else (winner, False)

    async def save(self, tenant: str, task: pb.Task, *, expected_version: int,
                   events: Sequence[pb.TaskEvent], attempt: pb.Attempt | None,
                   claim: bool = False) -> None:
        """Store `task` if its stored version is `expected_version`; Conflict if not.
        A `claim` also wants the task still queued and not locked by another writer."""
        await self._submit(_Write(tenant, task, events, expected_version, attempt, claim))

    async def wait_idle(self) -> None:
        """Return once nothing is queued or in flight."""
        while self._flights or self._pending:
            if self._flights:
                await asyncio.wait(set(self._flights))
            else:
                await asyncio.sleep(0)  # the flush scheduled for this tick starts

    # -- batching --------------------------------------------------------------------
    async def _submit(self, write: _Write) -> pb.Task | None:
        self._pending.append(write)
        self._schedule()
        # Not shielded: a caller that stops waiting leaves its write to its batch, as a
        # cancelled statement may have committed anyway.
        return await write.done

    def _schedule(self) -> None:
        if not self._scheduled and self._pending and len(self._flights) < self._max_flights:
            # At the next tick, so that every write queued in this one joins the batch.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._launch)

    def _launch(self) -> None:
        self._scheduled = False
        while len(self._flights) < self._max_flights:
            batch = self._take()
            if not batch:
                return
            flight = asyncio.get_running_loop().create_task(
                self._fly(batch), name="cortex-pg-task-writes")
            self._flights.add(flight)
            flight.add_done_callback(self._landed)

    def _landed(self, flight: asyncio.Task[None]) -> None:
        self._flights.discard(flight)
        self._schedule()

    def _take(self) -> list[_Write]:
        batch: list[_Write] = []
        keep: list[_Write] = []
        for write in self._pending:
            locks = write.locks
            if len(batch) >= MAX_BATCH or any(k in self._locked for k in locks):
                keep.append(write)
                continue
            self._locked.update(locks)
            batch.append(write)
        self._pending = keep
        return batch

    async def _fly(self, batch: list[_Write]) -> None:
        try:
            inserts = [w for w in batch if w.expected is None]
            saves = [w for w in batch if w.expected is not None and not w.claim]
            claims = [w for w in batch if w.claim]
            if inserts:
                await self._run(_insert_all, inserts)
            if saves:
                await self._run(_save_all, saves)
            if claims:
                await self._run(_claim_all, claims)
        except asyncio.CancelledError:
            for write in batch:
                write.done.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - a bug here: handed to every caller
            for write in batch:
                _answer(write, exc)
        finally:
            for write in batch:
                self._locked.difference_update(write.locks)

    async def _run(self, statement: Callable[[_Conn, list[_Write]], Any],
                   writes: list[_Write]) -> None:
        try:
            async with self._connect() as conn:
                await statement(conn, writes)
        except (Conflict, InvalidArgument) as exc:
            if len(writes) == 1:
                _answer(writes[0], exc)
                return
            # The statement failed for one of its writes and rolled back entirely: find
            # that one by running each on its own (not those committed before it failed).
            for write in [w for w in writes if not w.answered]:
                await self._run(statement, [write])
        except CortexError as exc:
            for write in writes:
                _answer(write, exc)


async def _insert_all(conn: _Conn, writes: list[_Write]) -> None:
    # Keyed rows in key order: two hubs inserting the same keys wait for each other in
    # the same order, never in a cycle.
    writes = sorted(writes, key=lambda w: (w.tenant, w.key or "", w.task.id))
    cur = await conn.execute(INSERT_TASKS, {
        "ids": [w.task.id for w in writes], "tenants": [w.tenant for w in writes],
        "states": [w.task.state for w in writes],
        "node_ids": [w.task.node_id for w in writes], "keys": [w.key for w in writes],
        "versions": [w.task.version for w in writes],
        "labels": [_labels(w.task) for w in writes],
        "bodies": [w.task.SerializeToString() for w in writes], **_event_arrays(writes),
    })
    inserted = {row[0] for row in await cur.fetchall()}
    losers = []
    for write in writes:
        if write.task.id in inserted:
            _answer(write, None)
        else:
            losers.append(write)
    winners: dict[tuple[str, str], pb.Task] = {}
    if losers:
        # A second statement: the winners committed after the first one began, so it
        # could not see them (READ COMMITTED). Tasks are never deleted.
        cur = await conn.execute(_WINNERS, ([w.tenant for w in losers],
                                            [w.key for w in losers]), binary=True)
        winners = {(r[0], r[1]): pb.Task.FromString(r[2]) for r in await cur.fetchall()}
    for write in losers:
        if (winner := winners.get((write.tenant, write.key or ""))) is not None:
            _answer(write, winner)
        else:
            _answer(write, Conflict(f"idempotency key {write.key!r} changed hands "
                                    "concurrently: retry"))


async def _save_all(conn: _Conn, writes: list[_Write], statement: str = SAVE_TASKS
                    ) -> None:
    writes = sorted(writes, key=lambda w: w.task.id)
    with_attempt = [w for w in writes if w.attempt is not None]
    cur = await conn.execute(statement, {
        "ids": [w.task.id for w in writes], "tenants": [w.tenant for w in writes],
        "expected": [w.expected for w in writes], "states": [w.task.state for w in writes],
        "node_ids": [w.task.node_id for w in writes],
        "versions": [w.task.version for w in writes],
        "labels": [_labels(w.task) for w in writes],
        "bodies": [w.task.SerializeToString() for w in writes], **_event_arrays(writes),
        "at_ids": [w.task.id for w in with_attempt],
        "at_tenants": [w.tenant for w in with_attempt],
        "attempts": [w.attempt.attempt for w in with_attempt if w.attempt is not None],
        "at_bodies": [w.attempt.SerializeToString() for w in with_attempt
                      if w.attempt is not None],
    })
    saved = {row[0] for row in await cur.fetchall()}
    for write in writes:
        _answer(write, None if write.task.id in saved else Conflict(
            f"task {write.task.id} changed concurrently "
            f"(expected version {write.expected})"))


async def _claim_all(conn: _Conn, writes: list[_Write]) -> None:
    await _save_all(conn, writes, CLAIM_TASKS)


def _event_arrays(writes: list[_Write]) -> dict[str, list[Any]]:
    pairs = [(w, e) for w in writes for e in w.events]
    return {"ev_ids": [w.task.id for w, _ in pairs], "ev_tenants": [w.tenant for w, _ in pairs],
            "ev_seqs": [e.seq for _, e in pairs],
            "ev_bodies": [e.SerializeToString() for _, e in pairs]}


def _labels(task: pb.Task) -> str:
    labels = task.spec.labels
    return json.dumps(dict(labels)) if labels else "{}"


def _answer(write: _Write, result: pb.Task | Exception | None) -> None:
    write.answered = True
    if write.done.done():
        return  # answered already, or the caller stopped waiting
    if isinstance(result, Exception):
        write.done.set_exception(result)
    else:
        write.done.set_result(result)
