"""What only the Postgres store has to prove: races between hubs (two stores, two pools, one
database), migrations shared by hubs that start together, and clear failures.

Each race is made real rather than left to timing: an admin connection locks the table
the racers write, both calls start and block on that lock, and only when Postgres shows
both waiting are they released together. A store that settled a race with a read in
Python and a write after it would let both through and fail here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.errors import Conflict, CortexError, InvalidArgument, PermissionDenied, Unavailable
from cortex.store import open_store
from cortex.store._pg_schema import MIGRATION_LOCK_CLASS, MIGRATIONS
from cortex.store.base import JoinTokenRecord, Store
from cortex.store.postgres import PostgresStore
from cortex.store.sqlite import SqliteStore

T = TypeVar("T")
Admin = psycopg.AsyncConnection[Any]

A = "tenant-a"
NOW = 1_700_000_000.0
RACES = 50
# Bounds a wait for a lock that a broken store never takes, so the test fails, not hangs.
WAITERS_DEADLINE_S = 10.0


def make_task(task_id: str, *, key: str = "") -> pb.Task:
    return pb.Task(id=task_id, tenant=A, state=pb.QUEUED, version=1, attempt=1,
                   created_at=NOW, last_seq=1,
                   spec=pb.TaskSpec(skill="noop", idempotency_key=key))


def queued(task_id: str) -> pb.TaskEvent:
    return pb.TaskEvent(task_id=task_id, seq=1, attempt=1, time=NOW,
                        state=pb.StateChange(state=pb.QUEUED))


def moved(task: pb.Task, **fields: Any) -> pb.Task:
    new = pb.Task()
    new.CopyFrom(task)
    for name, value in fields.items():
        setattr(new, name, value)
    new.version = task.version + 1
    return new


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- racing helpers ------------------------------------------------------------------

async def _outcome(call: Awaitable[T]) -> T | CortexError:
    try:
        return await call
    except CortexError as exc:
        return exc


async def _wait_for_waiters(admin: Admin, query: sql.Composable, args: Sequence[Any],
                            count: int) -> None:
    # Postgres signals nothing when a backend starts waiting on a lock; look until it shows.
    seen = 0
    try:
        async with asyncio.timeout(WAITERS_DEADLINE_S):
            while seen < count:
                await asyncio.sleep(0.002)
                cur = await admin.execute(query, args)
                ((seen,),) = await cur.fetchall()
    except TimeoutError:
        pytest.fail(f"only {seen} of {count} racing calls waited on the lock within "
                    f"{WAITERS_DEADLINE_S}s: the store no longer takes it")


async def released_together(admin: Admin, lock: sql.Composable, waiting: sql.Composable,
                            args: Sequence[Any], calls: Sequence[Callable[[], Awaitable[T]]]
                            ) -> list[T | CortexError]:
    """Start `calls` once the admin holds `lock`; let them go when all wait for it."""
    async with asyncio.TaskGroup() as group, admin.transaction():
        await admin.execute(lock, args)
        running = [group.create_task(_outcome(call())) for call in calls]
        await _wait_for_waiters(admin, waiting, args, len(calls))
    return [task.result() for task in running]


async def race_on(admin: Admin, table: str, *calls: Callable[[], Awaitable[T]]
                  ) -> list[T | CortexError]:
    """The calls, all blocked on a write lock on `table`, then released at once."""
    # EXCLUSIVE lets plain SELECTs through but blocks INSERT, UPDATE and SELECT FOR UPDATE.
    lock = sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(table))
    waiting = sql.SQL("SELECT count(*) FROM pg_locks WHERE relation = {}::regclass"
                      " AND NOT granted").format(sql.Literal(table))
    return await released_together(admin, lock, waiting, (), calls)


# -- fixtures --------------------------------------------------------------------------

@pytest_asyncio.fixture
async def admin(postgres_url: str) -> AsyncIterator[Admin]:
    """A plain connection to the test's schema, for locks and looking behind the store."""
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        yield conn


@pytest_asyncio.fixture
async def hubs(postgres_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two opened stores on one schema, each with its own pool, as two hubs would have."""
    async with contextlib.AsyncExitStack() as stack:
        stores = []
        for _ in range(2):
            store = open_store(postgres_url)
            await store.open()
            stack.push_async_callback(store.close)
            stores.append(store)
        await stores[0].ensure_tenant(A, now=NOW)
        yield stores[0], stores[1]


async def schema_versions(admin: Admin) -> list[tuple[int, Any]]:
    cur = await admin.execute("SELECT version, applied_at FROM cortex_schema_version"
                              " ORDER BY version")
    return [(int(v), at) for v, at in await cur.fetchall()]


# -- races between hubs ----------------------------------------------------------------

@pytest.mark.postgres
@pytest.mark.asyncio
async def test_two_hubs_inserting_one_idempotency_key_at_once_create_one_task(
    hubs: tuple[Store, Store], admin: Admin
) -> None:
    """Two hubs inserting tasks with the same key at once: one creates, both get its task."""
    first, second = hubs
    for n in range(RACES):
        mine, theirs = make_task(f"t-{n:02d}-a", key=f"job-{n}"), make_task(
            f"t-{n:02d}-b", key=f"job-{n}")
        results = await race_on(admin, "tasks",
                                partial(first.insert_task, A, mine, [queued(mine.id)]),
                                partial(second.insert_task, A, theirs, [queued(theirs.id)]))
        (got_a, created_a), (got_b, created_b) = results  # a CortexError fails to unpack
        assert sorted([created_a, created_b]) == [False, True]
        winner, loser = (mine, theirs) if created_a else (theirs, mine)
        assert got_a == got_b == winner
        assert await first.get_task(A, loser.id) is None
        assert await second.read_events(A, loser.id, after_seq=0, limit=10) == []
        assert await first.read_events(A, winner.id, after_seq=0, limit=10) == [
            queued(winner.id)]


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_two_hubs_consuming_one_join_token_at_once_one_succeeds(
    hubs: tuple[Store, Store], admin: Admin
) -> None:
    """Two hubs consuming one join token at once: one enrolls, the other is told it is used."""
    first, second = hubs
    for n in range(RACES):
        token = JoinTokenRecord(id=f"jt-{n}", tenant=A, secret_hash=b"h", labels={"n": str(n)},
                                created_at=NOW, expires_at=NOW + 600)
        await first.create_join_token(token)
        results = await race_on(
            admin, "join_tokens",
            partial(first.consume_join_token, token.id, b"h", node_id="n-a", now=NOW + 1),
            partial(second.consume_join_token, token.id, b"h", node_id="n-b", now=NOW + 1))
        assert [type(r) for r in results].count(JoinTokenRecord) == 1
        (refused,) = [r for r in results if not isinstance(r, JoinTokenRecord)]
        assert isinstance(refused, PermissionDenied)
        assert "already used" in str(refused)
        cur = await admin.execute("SELECT node_id FROM join_tokens WHERE id = %s", (token.id,))
        assert await cur.fetchone() == (
            "n-a" if isinstance(results[0], JoinTokenRecord) else "n-b",)


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_two_hubs_saving_one_task_version_at_once_one_wins(
    hubs: tuple[Store, Store], admin: Admin
) -> None:
    """Two hubs saving a task from the same version at once: one wins, the other Conflicts."""
    first, second = hubs
    for n in range(RACES):
        task = make_task(f"t-{n:02d}")
        await first.insert_task(A, task, [queued(task.id)])
        # No events: only the version check may decide (an event seq clash would hide it).
        assigned = moved(task, state=pb.ASSIGNED, node_id="n-1")
        cancelled = moved(task, state=pb.CANCELLED)
        results = await race_on(admin, "tasks",
                                partial(first.save_task, A, assigned, expected_version=1),
                                partial(second.save_task, A, cancelled, expected_version=1))
        assert results.count(None) == 1
        assert [type(r) for r in results].count(Conflict) == 1
        winner = assigned if results[0] is None else cancelled
        assert await second.get_task(A, task.id) == winner
        assert await first.get_task(A, task.id) == winner


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_two_hubs_pinning_one_session_at_once_agree_on_its_node(
    hubs: tuple[Store, Store], admin: Admin
) -> None:
    """Two hubs pinning one session to different nodes at once both get the same node."""
    first, second = hubs
    for n in range(RACES):
        session = f"s-{n}"
        results = await race_on(admin, "sessions",
                                partial(first.pin_session, A, session, "n-a", now=NOW),
                                partial(second.pin_session, A, session, "n-b", now=NOW))
        assert results[0] == results[1]
        assert results[0] in ("n-a", "n-b")
        assert await second.session_node(A, session) == results[0]


# -- migrations ------------------------------------------------------------------------

@pytest.mark.postgres
@pytest.mark.asyncio
async def test_migrations_are_recorded_once_and_reopening_applies_nothing(
    postgres_url: str, admin: Admin
) -> None:
    """Opening a store again leaves one row per migration, each with its first timestamp."""
    store = open_store(postgres_url)
    await store.open()
    await store.close()
    applied = await schema_versions(admin)
    assert [v for v, _ in applied] == list(range(1, len(MIGRATIONS) + 1))
    again = open_store(postgres_url)
    await again.open()
    await again.close()
    assert await schema_versions(admin) == applied


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_hubs_opening_a_fresh_schema_together_migrate_it_once(
    postgres_url: str, admin: Admin
) -> None:
    """Four stores opening one empty schema at once all open, and each migration runs once."""
    stores = [open_store(postgres_url) for _ in range(4)]
    lock = sql.SQL("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))")
    waiting = sql.SQL("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                      " AND NOT granted AND classid = %s"
                      " AND objid = hashtext(current_schema())::oid")
    results = await released_together(admin, lock, waiting, (MIGRATION_LOCK_CLASS,),
                                      [s.open for s in stores])
    try:
        assert results == [None] * len(stores)
        assert [v for v, _ in await schema_versions(admin)] == list(
            range(1, len(MIGRATIONS) + 1))
        await stores[0].ensure_tenant(A, now=NOW)
        assert await stores[3].pin_session(A, "s-1", "n-1", now=NOW) == "n-1"
    finally:
        for store in stores:
            await store.close()


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_a_schema_newer_than_this_code_is_refused(
    postgres_url: str, admin: Admin
) -> None:
    """open() fails with Conflict naming both versions when a newer hub migrated the schema."""
    store = open_store(postgres_url)
    await store.open()
    await store.close()
    newer = len(MIGRATIONS) + 1
    await admin.execute("INSERT INTO cortex_schema_version(version) VALUES (%s)", (newer,))
    old = open_store(postgres_url)
    with pytest.raises(Conflict, match=rf"at version {newer}, newer than this Cortex knows "
                                       rf"\(up to {len(MIGRATIONS)}\).*upgrade this hub"):
        await old.open()
    await old.close()


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_a_search_path_naming_no_existing_schema_is_refused(postgres_url: str) -> None:
    """A URL whose search_path names a missing schema fails open() saying how to fix it."""
    url = postgres_url.replace("search_path%3D", "search_path%3Dno_such_schema_")
    store = open_store(url)
    with pytest.raises(InvalidArgument, match=r"no schema of the search_path .* exists"):
        await store.open()


# -- failures ---------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_an_unreachable_server_is_unavailable_with_a_clear_message() -> None:
    """open() against a port nobody listens on raises Unavailable naming the server and the
    reason, without the password, with psycopg's error chained."""
    port = free_port()
    store = open_store(f"postgresql://postgres:s3cret@127.0.0.1:{port}/test")
    with pytest.raises(Unavailable) as info:
        await store.open()
    message = str(info.value)
    assert f"cannot reach Postgres at 127.0.0.1:{port}/test" in message
    assert "Connection refused" in message
    assert "check that the server is running" in message
    assert "s3cret" not in message
    assert isinstance(info.value.__cause__, psycopg.OperationalError)


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_dropped_connections_fail_one_call_clearly_then_the_store_recovers(
    postgres_url: str, admin: Admin
) -> None:
    """After the server kills every pooled connection, one call fails with Unavailable and the
    calls after it succeed: the pool replaced all its dead connections at once."""
    app = f"cortex-test-{free_port()}"
    store = PostgresStore(f"{postgres_url}&application_name={app}", min_size=3)
    await store.open()
    try:
        await store.ensure_tenant(A, now=NOW)
        await admin.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                            " WHERE application_name = %s", (app,))
        with pytest.raises(Unavailable, match="cannot reach Postgres") as info:
            await store.get_task(A, "t-1")
        assert isinstance(info.value.__cause__, psycopg.OperationalError)
        for n in range(3):
            await store.pin_session(A, f"s-{n}", "n-1", now=NOW)
    finally:
        await store.close()


# -- URLs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgres://postgres@127.0.0.1/test",
    "postgresql://postgres@127.0.0.1/test?options=-csearch_path%3Dmy_schema&connect_timeout=3",
    "postgresql:///test?host=/var/run/postgresql",
])
def test_postgres_urls_make_a_postgres_store(url: str) -> None:
    """Both URL schemes, with or without libpq parameters, select the Postgres store."""
    assert isinstance(open_store(url), PostgresStore)


def test_paths_and_sqlite_urls_still_make_a_sqlite_store(tmp_path: Path) -> None:
    """A plain path and a sqlite:/// URL still select SQLite."""
    assert isinstance(open_store(str(tmp_path / "cortex.db")), SqliteStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/cortex.db"), SqliteStore)


def test_a_malformed_postgres_url_is_refused_before_connecting() -> None:
    """A URL libpq cannot parse raises InvalidArgument at once, not at first use."""
    with pytest.raises(InvalidArgument, match="not a usable Postgres URL"):
        open_store("postgresql://127.0.0.1/test?no_such_parameter=1")


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_the_postgres_scheme_alias_reaches_the_server(postgres_url: str) -> None:
    """A postgres:// URL (the short scheme) opens and works like postgresql://."""
    store = open_store(postgres_url.replace("postgresql://", "postgres://", 1))
    await store.open()
    try:
        await store.ensure_tenant(A, now=NOW)
        assert await store.pin_session(A, "s-1", "n-1", now=NOW) == "n-1"
    finally:
        await store.close()
