"""The Postgres store's group commit of task writes (cortex.store._pg_batch).

Writes made in one event-loop tick share ONE statement, so ONE transaction: every row it
wrote carries the same ``xmin``, which is how these tests see a batch from outside. Each
caller must still get its own answer, and a batch must never be half applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.errors import Conflict, CortexError, InvalidArgument, Unavailable
from cortex.store.postgres import PostgresStore

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio]

Admin = psycopg.AsyncConnection[Any]
A, B = "tenant-a", "tenant-b"
NOW = 1_700_000_000.0
WAIT_S = 10.0  # bounds waiting for a blocked statement, so a broken store fails, not hangs


def make_task(task_id: str, *, key: str = "", tenant: str = A) -> pb.Task:
    return pb.Task(id=task_id, tenant=tenant, state=pb.QUEUED, version=1, attempt=1,
                   created_at=NOW, last_seq=1,
                   spec=pb.TaskSpec(skill="noop", idempotency_key=key, labels={"n": task_id}))


def event(task_id: str, seq: int, state: int = pb.QUEUED) -> pb.TaskEvent:
    return pb.TaskEvent(task_id=task_id, seq=seq, attempt=1, time=NOW + seq,
                        state=pb.StateChange(state=state))


def moved(task: pb.Task, **fields: Any) -> pb.Task:
    new = pb.Task()
    new.CopyFrom(task)
    for name, value in fields.items():
        setattr(new, name, value)
    new.version = task.version + 1
    return new


def running(n: int) -> pb.Attempt:
    return pb.Attempt(attempt=n, node_id="n-1", state=pb.RUNNING, started_at=NOW)


async def outcome(call: Any) -> Any:
    try:
        return await call
    except CortexError as exc:
        return exc


@pytest_asyncio.fixture
async def admin(postgres_url: str) -> AsyncIterator[Admin]:
    """A plain connection to the test's schema, to look behind the store."""
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        yield conn


@pytest_asyncio.fixture
async def db(postgres_url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        await store.ensure_tenant(A, now=NOW)
        await store.ensure_tenant(B, now=NOW)
        yield store
    finally:
        await store.close()


async def inserted(db: PostgresStore, ids: list[str]) -> list[pb.Task]:
    tasks = [make_task(i) for i in ids]
    results = await asyncio.gather(*(db.insert_task(A, t, [event(t.id, 1)]) for t in tasks))
    assert all(created for _, created in results)
    return tasks


async def xmins(admin: Admin, table: str, ids: list[str]) -> set[str]:
    """The transactions that last wrote `table`'s rows of these tasks."""
    column = "id" if table == "tasks" else "task_id"
    cur = await admin.execute(f"SELECT DISTINCT xmin::text FROM {table}"  # noqa: S608 - fixed names
                              f" WHERE {column} = ANY(%s)", (ids,))
    return {r[0] for r in await cur.fetchall()}


async def blocked_on_tasks(admin: Admin) -> list[int]:
    """The backends waiting for the admin's lock on `tasks`, once there is one."""
    async with asyncio.timeout(WAIT_S):
        while True:
            cur = await admin.execute("SELECT pid FROM pg_locks WHERE NOT granted"
                                      " AND relation = 'tasks'::regclass")
            if pids := [int(r[0]) for r in await cur.fetchall()]:
                return pids
            await asyncio.sleep(0.005)  # Postgres signals nothing when a lock wait starts


async def seqs(db: PostgresStore, task_id: str, tenant: str = A) -> list[int]:
    return [e.seq for e in await db.read_events(tenant, task_id, after_seq=0, limit=100)]


async def test_inserts_of_one_tick_commit_as_one_transaction(
    db: PostgresStore, admin: Admin
) -> None:
    """100 inserts made at once are written by one statement: tasks and events share one
    transaction id, and every caller is told it created its task."""
    ids = [f"t-{n:03d}" for n in range(100)]
    await inserted(db, ids)
    assert len(await xmins(admin, "tasks", ids)) == 1
    assert await xmins(admin, "task_events", ids) == await xmins(admin, "tasks", ids)
    assert [await seqs(db, i) for i in ids] == [[1]] * 100


async def test_more_writes_than_one_batch_holds_go_in_several_and_all_land(
    db: PostgresStore, admin: Admin
) -> None:
    """700 inserts at once exceed one batch (512 rows): they land in two transactions,
    none lost or written twice."""
    ids = [f"t-{n:03d}" for n in range(700)]
    await inserted(db, ids)
    assert len(await xmins(admin, "tasks", ids)) == 2
    cur = await admin.execute("SELECT count(*), count(DISTINCT task_id) FROM task_events")
    assert await cur.fetchone() == (700, 700)


async def test_stale_saves_conflict_alone_and_write_nothing_while_the_batch_commits(
    db: PostgresStore, admin: Admin
) -> None:
    """In one batch, saves with a stale expected version get Conflict and none of their
    events or attempts are written; the other saves commit together."""
    tasks = await inserted(db, [f"t-{n:02d}" for n in range(20)])
    stale = {t.id for t in tasks[::3]}
    calls = [db.save_task(A, moved(t, state=pb.RUNNING), attempt=running(1),
                          expected_version=7 if t.id in stale else 1,
                          events=[event(t.id, 2, pb.RUNNING)]) for t in tasks]
    results = await asyncio.gather(*(outcome(c) for c in calls))
    for task, result in zip(tasks, results, strict=True):
        if task.id in stale:
            assert isinstance(result, Conflict)
            assert "expected version 7" in str(result)
            assert await db.get_task(A, task.id, with_attempts=True) == task
            assert await seqs(db, task.id) == [1]
        else:
            assert result is None
            assert (await db.get_task(A, task.id) or pb.Task()).state == pb.RUNNING
            assert await seqs(db, task.id) == [1, 2]
            assert await db.get_attempt(A, task.id, 1) == running(1)
    saved = [t.id for t in tasks if t.id not in stale]
    assert len(await xmins(admin, "tasks", saved)) == 1
    assert await xmins(admin, "task_attempts", saved) == await xmins(admin, "tasks", saved)


async def test_two_saves_of_one_task_at_once_apply_in_order(
    db: PostgresStore, admin: Admin
) -> None:
    """A second save of a task made in the same tick waits for the first: chained versions
    both land, in two transactions, with all their events."""
    (task,) = await inserted(db, ["t-1"])
    assigned = moved(task, state=pb.ASSIGNED, node_id="n-1")
    run = moved(assigned, state=pb.RUNNING)
    await asyncio.gather(
        db.save_task(A, assigned, expected_version=1, events=[event("t-1", 2, pb.ASSIGNED)]),
        db.save_task(A, run, expected_version=2, events=[event("t-1", 3, pb.RUNNING)]))
    assert await db.get_task(A, "t-1") == run
    assert await seqs(db, "t-1") == [1, 2, 3]
    cur = await admin.execute("SELECT count(DISTINCT xmin::text) FROM task_events"
                              " WHERE task_id = 't-1' AND seq > 1")
    assert await cur.fetchone() == (2,)


async def test_two_saves_of_one_task_from_one_version_at_once_one_wins(
    db: PostgresStore,
) -> None:
    """Two saves from the same version in one tick: the first wins, the second Conflicts
    and writes none of its events."""
    (task,) = await inserted(db, ["t-1"])
    winner = moved(task, state=pb.ASSIGNED, node_id="n-1")
    results = await asyncio.gather(
        outcome(db.save_task(A, winner, expected_version=1,
                             events=[event("t-1", 2, pb.ASSIGNED)])),
        outcome(db.save_task(A, moved(task, state=pb.CANCELLED), expected_version=1,
                             events=[event("t-1", 3, pb.CANCELLED)])))
    assert results[0] is None
    assert isinstance(results[1], Conflict)
    assert await db.get_task(A, "t-1") == winner
    assert await seqs(db, "t-1") == [1, 2]


async def test_a_write_postgres_refuses_fails_alone_and_the_rest_of_its_batch_commits(
    db: PostgresStore,
) -> None:
    """A duplicate event seq, a reused task id and an unknown tenant each fail the batch
    statement; the store then finds the culprits and every other write commits."""
    tasks = await inserted(db, [f"t-{n:02d}" for n in range(10)])
    saves = [db.save_task(A, moved(t, state=pb.RUNNING), expected_version=1,
                          events=[event(t.id, 1 if t is tasks[4] else 2, pb.RUNNING)])
             for t in tasks]
    fresh = [make_task(f"i-{n:02d}") for n in range(10)]
    inserts = [db.insert_task(A, t, [event(t.id, 1)]) for t in fresh]
    reused = db.insert_task(A, make_task("t-00"), [event("t-00", 1)])
    stranger = db.insert_task("nobody", make_task("x-1", tenant="nobody"), [event("x-1", 1)])
    results = await asyncio.gather(*(outcome(c) for c in (*saves, *inserts, reused,
                                                          stranger)))
    failed = {n for n, r in enumerate(results) if isinstance(r, CortexError)}
    assert failed == {4, 20, 21}
    assert all(isinstance(results[n], Conflict) for n in failed)
    assert isinstance(results[4].__cause__, psycopg.IntegrityError)
    assert await db.get_task(A, tasks[4].id) == tasks[4]
    for task in tasks[:4] + tasks[5:]:
        assert await seqs(db, task.id) == [1, 2]
    assert [r[1] for r in results[10:20]] == [True] * 10
    assert await db.get_task("nobody", "x-1") is None


async def test_a_value_postgres_cannot_hold_fails_only_its_write(db: PostgresStore) -> None:
    """A NUL in one insert's idempotency key (Postgres text cannot hold it) fails that
    insert with InvalidArgument; the others of its batch are created."""
    good = [make_task(f"t-{n}") for n in range(5)]
    bad = make_task("t-bad", key="k\x00")
    results = await asyncio.gather(*(outcome(db.insert_task(A, t, [event(t.id, 1)]))
                                     for t in (*good[:2], bad, *good[2:])))
    assert isinstance(results[2], InvalidArgument)
    assert [r for n, r in enumerate(results) if n != 2] == [(t, True) for t in good]
    assert await db.get_task(A, "t-bad") is None


async def test_one_idempotency_key_twice_in_a_tick_creates_one_task(db: PostgresStore) -> None:
    """Two inserts with one key at once, and one with a key stored before: one task per
    key, and every caller gets that task."""
    before, _ = await db.insert_task(A, make_task("t-0", key="old"), [])
    first, second = make_task("t-1", key="k"), make_task("t-2", key="k")
    again = make_task("t-3", key="old")
    results = await asyncio.gather(db.insert_task(A, first, [event("t-1", 1)]),
                                   db.insert_task(A, second, [event("t-2", 1)]),
                                   db.insert_task(A, again, [event("t-3", 1)]),
                                   db.insert_task(B, make_task("t-4", key="k", tenant=B), []))
    assert results[:3] == [(first, True), (first, False), (before, False)]
    assert results[3][1] is True  # keys are per tenant
    assert await db.get_task(A, "t-2") is None
    assert await db.get_task(A, "t-3") is None
    assert await seqs(db, "t-2") == []


async def test_a_batch_whose_connection_drops_fails_every_caller_and_writes_nothing(
    db: PostgresStore, admin: Admin
) -> None:
    """The server kills the connection while a batch of saves waits inside Postgres: each
    caller gets Unavailable, no row of the batch was written, and the same saves then
    succeed."""
    tasks = await inserted(db, [f"t-{n:02d}" for n in range(10)])

    def saves() -> list[Any]:
        return [outcome(db.save_task(A, moved(t, state=pb.RUNNING), attempt=running(1),
                                     expected_version=1, events=[event(t.id, 2)]))
                for t in tasks]

    async with asyncio.TaskGroup() as group, admin.transaction():
        await admin.execute("LOCK TABLE tasks IN EXCLUSIVE MODE")
        calls = [group.create_task(c) for c in saves()]
        pids = await blocked_on_tasks(admin)
        assert len(pids) == 1  # the whole batch is one statement
        await admin.execute("SELECT pg_terminate_backend(%s, 5000)", pids)
    results = [c.result() for c in calls]
    assert all(isinstance(r, Unavailable) for r in results), results
    for task in tasks:
        assert await db.get_task(A, task.id, with_attempts=True) == task
        assert await seqs(db, task.id) == [1]
    assert await asyncio.gather(*saves()) == [None] * 10


async def test_close_waits_for_a_batch_whose_caller_stopped_waiting(
    db: PostgresStore, admin: Admin
) -> None:
    """A caller cancelled while its batch is in Postgres does not cut the batch short:
    close() waits for it, and the write is then stored whole."""
    (task,) = await inserted(db, ["t-1"])
    saved = moved(task, state=pb.RUNNING)
    async with admin.transaction():
        await admin.execute("LOCK TABLE tasks IN EXCLUSIVE MODE")
        call = asyncio.ensure_future(db.save_task(A, saved, expected_version=1,
                                                  events=[event("t-1", 2)]))
        await blocked_on_tasks(admin)
        call.cancel()
        closing = asyncio.ensure_future(db.close())
        await asyncio.sleep(0.05)
        assert not closing.done()
    await closing
    cur = await admin.execute("SELECT version FROM tasks WHERE id = 't-1'")
    assert await cur.fetchone() == (2,)
    with pytest.raises(asyncio.CancelledError):
        await call
