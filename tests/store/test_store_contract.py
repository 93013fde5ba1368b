"""The Store contract, run against every backend in conftest.BACKENDS.

Each test states one behaviour any store must have: tenant isolation, single-use join
tokens, idempotent inserts, optimistic concurrency with all-or-nothing saves, ordered
event logs, durable group commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.errors import Conflict, CortexError, PermissionDenied, Unavailable
from cortex.store.base import ApiTokenRecord, JoinTokenRecord, Store, TaskQuery
from cortex.store.sqlite import SqliteStore

StoreFactory = Callable[[], Store]   # the `make_store` fixture of conftest.py

A, B = "tenant-a", "tenant-b"
NOW = 1_700_000_000.0
ALL_STATES = (pb.QUEUED, pb.ASSIGNED, pb.RUNNING, pb.SUCCEEDED, pb.FAILED, pb.CANCELLED,
              pb.TIMED_OUT, pb.LOST)
ACTIVE = {pb.QUEUED, pb.ASSIGNED, pb.RUNNING}

pytestmark = pytest.mark.asyncio


# -- builders ------------------------------------------------------------------------

def make_task(task_id: str, tenant: str = A, *, state: int = pb.QUEUED, node_id: str = "",
              labels: dict[str, str] | None = None, key: str = "", version: int = 1,
              attempt: int = 1) -> pb.Task:
    return pb.Task(
        id=task_id, tenant=tenant, state=state, node_id=node_id, version=version,
        attempt=attempt, created_at=NOW, last_seq=1,
        spec=pb.TaskSpec(skill="noop", labels=labels or {}, idempotency_key=key),
    )


def change(task_id: str, seq: int, state: int, *, attempt: int = 1) -> pb.TaskEvent:
    return pb.TaskEvent(task_id=task_id, seq=seq, attempt=attempt, time=NOW + seq,
                        state=pb.StateChange(state=state))


def output(task_id: str, seq: int, data: bytes) -> pb.TaskEvent:
    return pb.TaskEvent(task_id=task_id, seq=seq, attempt=1, time=NOW + seq,
                        output=pb.Output(stream=pb.STDOUT, data=data))


def moved(task: pb.Task, **fields: Any) -> pb.Task:
    """A copy of `task` with `fields` set and the version bumped, as save_task wants it."""
    new = pb.Task()
    new.CopyFrom(task)
    for name, value in fields.items():
        setattr(new, name, value)
    new.version = task.version + 1
    return new


def attempt_row(n: int, state: int, node_id: str = "n-1") -> pb.Attempt:
    return pb.Attempt(attempt=n, node_id=node_id, state=state, reason=f"attempt {n}",
                      started_at=NOW, finished_at=NOW + 1)


async def insert(store: Store, task: pb.Task, tenant: str = A) -> pb.Task:
    stored, created = await store.insert_task(tenant, task, [change(task.id, 1, pb.QUEUED)])
    assert created
    return stored


def node_msg(node_id: str, tenant: str = A, *, name: str = "box") -> pb.Node:
    return pb.Node(id=node_id, tenant=tenant, name=name, labels={"os": "linux"},
                   skills=["shell"], state=pb.ONLINE, last_seen=NOW)


def join_record(*, secret: bytes = b"hash-1", expires_at: float = NOW + 600
                ) -> JoinTokenRecord:
    return JoinTokenRecord(id="jt-1", tenant=A, secret_hash=secret, labels={"zone": "eu"},
                           created_at=NOW, expires_at=expires_at)


async def event_seqs(store: Store, task_id: str, tenant: str = A) -> list[int]:
    return [e.seq for e in await store.read_events(tenant, task_id, after_seq=0, limit=1000)]


@pytest_asyncio.fixture
async def db(store: Store) -> Store:
    """The store with tenants A and B created."""
    await store.ensure_tenant(A, now=NOW)
    await store.ensure_tenant(B, now=NOW)
    return store


# -- tenants and credentials -----------------------------------------------------------

async def test_ensure_tenant_is_idempotent(db: Store) -> None:
    """Ensuring an existing tenant again is a no-op, and the tenant stays usable."""
    await db.ensure_tenant(A, now=NOW + 5)
    await db.create_api_token(ApiTokenRecord("tok-1", A, "ci", "admin", b"h", NOW))
    assert (await db.find_api_token("tok-1")) is not None


async def test_api_token_round_trips(db: Store) -> None:
    """An API token is found by id with every field as created."""
    rec = ApiTokenRecord(id="tok-1", tenant=B, name="ci", role="operator",
                         secret_hash=b"\x00\xffhash", created_at=NOW, expires_at=NOW + 60,
                         revoked_at=NOW + 30)
    await db.create_api_token(rec)
    assert await db.find_api_token("tok-1") == rec


async def test_unknown_api_token_is_none(db: Store) -> None:
    """Looking up an id never created gives None."""
    assert await db.find_api_token("nope") is None


async def test_join_token_is_consumed_once(db: Store) -> None:
    """The first consume returns the token's tenant and labels; the second is refused."""
    await db.create_join_token(join_record())
    rec = await db.consume_join_token("jt-1", b"hash-1", node_id="n-1", now=NOW + 1)
    assert (rec.id, rec.tenant, rec.labels) == ("jt-1", A, {"zone": "eu"})
    with pytest.raises(PermissionDenied, match="already used"):
        await db.consume_join_token("jt-1", b"hash-1", node_id="n-2", now=NOW + 2)


async def test_expired_join_token_is_refused(db: Store) -> None:
    """A join token consumed after its expiry is refused as expired."""
    await db.create_join_token(join_record(expires_at=NOW + 10))
    with pytest.raises(PermissionDenied, match="expired"):
        await db.consume_join_token("jt-1", b"hash-1", node_id="n-1", now=NOW + 11)


async def test_wrong_secret_is_refused_and_does_not_burn_the_token(db: Store) -> None:
    """A wrong secret is refused and leaves the token usable with the right one."""
    await db.create_join_token(join_record())
    with pytest.raises(PermissionDenied):
        await db.consume_join_token("jt-1", b"wrong", node_id="n-1", now=NOW + 1)
    rec = await db.consume_join_token("jt-1", b"hash-1", node_id="n-1", now=NOW + 2)
    assert rec.tenant == A


async def test_unknown_join_token_is_refused(db: Store) -> None:
    """Consuming a token id that was never created is refused."""
    with pytest.raises(PermissionDenied):
        await db.consume_join_token("nope", b"hash-1", node_id="n-1", now=NOW)


async def test_record_certificate_accepts_a_new_serial(db: Store) -> None:
    """Recording a certificate for a tenant's node succeeds."""
    await db.record_certificate(A, serial="0a1b", node_id="n-1", not_before=NOW,
                                not_after=NOW + 86400)


# -- nodes ---------------------------------------------------------------------------

async def test_nodes_upsert_get_list(db: Store) -> None:
    """Upsert inserts then replaces; get and list (ordered by id) return what was stored."""
    await db.upsert_node(A, node_msg("n-2"))
    await db.upsert_node(A, node_msg("n-1"))
    await db.upsert_node(A, node_msg("n-1", name="renamed"))
    assert await db.get_node(A, "n-1") == node_msg("n-1", name="renamed")
    assert [n.id for n in await db.list_nodes(A)] == ["n-1", "n-2"]
    assert await db.get_node(A, "n-3") is None


async def test_nodes_are_tenant_filtered(db: Store) -> None:
    """Tenant B sees none of tenant A's nodes; the all-tenant lookup still finds them."""
    await db.upsert_node(A, node_msg("n-1"))
    assert await db.get_node(B, "n-1") is None
    assert await db.list_nodes(B) == []
    assert await db.find_node_all_tenants("n-1") == node_msg("n-1")
    assert await db.find_node_all_tenants("n-9") is None


async def test_another_tenant_cannot_overwrite_a_node(db: Store) -> None:
    """An upsert by tenant B with tenant A's node id leaves A's node as it was."""
    await db.upsert_node(A, node_msg("n-1"))
    # Whether it raises is test_backend_errors_surface_as_cortex_errors' subject, not this one's.
    with contextlib.suppress(Exception):
        await db.upsert_node(B, node_msg("n-1", B, name="hijack"))
    assert await db.get_node(A, "n-1") == node_msg("n-1")
    assert await db.find_node_all_tenants("n-1") == node_msg("n-1")


# -- tasks: insert and idempotency -----------------------------------------------------

async def test_insert_task_stores_task_and_events(db: Store) -> None:
    """A new task is created, readable by id, with its first event."""
    task = make_task("t-1")
    stored, created = await db.insert_task(A, task, [change("t-1", 1, pb.QUEUED)])
    assert created
    assert stored == task
    assert await db.get_task(A, "t-1") == task
    assert await event_seqs(db, "t-1") == [1]


async def test_same_idempotency_key_returns_the_existing_task(db: Store) -> None:
    """A second insert with the tenant's used key returns the first task, created=False,
    and stores nothing for the second."""
    first = await insert(db, make_task("t-1", key="job-42"))
    stored, created = await db.insert_task(
        A, make_task("t-2", key="job-42"), [change("t-2", 1, pb.QUEUED)]
    )
    assert not created
    assert stored == first
    assert await db.get_task(A, "t-2") is None
    assert await event_seqs(db, "t-2") == []
    assert [t.id for t in await db.list_tasks(A, TaskQuery())] == ["t-1"]


async def test_idempotency_keys_are_per_tenant(db: Store) -> None:
    """The same key in another tenant creates a new task there."""
    await insert(db, make_task("t-1", key="job-42"))
    stored, created = await db.insert_task(
        B, make_task("t-2", B, key="job-42"), [change("t-2", 1, pb.QUEUED)]
    )
    assert created
    assert stored.id == "t-2"
    assert (await db.get_task(B, "t-2")) is not None


async def test_tasks_without_a_key_are_never_deduplicated(db: Store) -> None:
    """An empty idempotency key is no key: each insert makes a new task."""
    await insert(db, make_task("t-1"))
    await insert(db, make_task("t-2"))
    assert {t.id for t in await db.list_tasks(A, TaskQuery())} == {"t-1", "t-2"}


# -- tasks: optimistic concurrency ---------------------------------------------------

async def test_save_task_writes_task_events_and_attempt(db: Store) -> None:
    """A save with the right expected version stores the task, its events and its attempt."""
    task = await insert(db, make_task("t-1"))
    new = moved(task, state=pb.RUNNING, node_id="n-1", last_seq=3)
    row = attempt_row(1, pb.RUNNING)
    await db.save_task(A, new, expected_version=1, attempt=row,
                       events=[change("t-1", 2, pb.ASSIGNED), change("t-1", 3, pb.RUNNING)])
    assert await db.get_task(A, "t-1") == new
    assert await event_seqs(db, "t-1") == [1, 2, 3]
    assert await db.get_attempt(A, "t-1", 1) == row


async def test_save_task_with_wrong_version_conflicts_and_writes_nothing(db: Store) -> None:
    """A stale expected_version raises Conflict and stores no task change, event or attempt."""
    task = await insert(db, make_task("t-1"))
    stale = moved(moved(task), state=pb.RUNNING)
    with pytest.raises(Conflict):
        await db.save_task(A, stale, expected_version=2, attempt=attempt_row(1, pb.RUNNING),
                           events=[change("t-1", 2, pb.RUNNING)])
    assert await db.get_task(A, "t-1", with_attempts=True) == task
    assert await event_seqs(db, "t-1") == [1]
    assert await db.get_attempt(A, "t-1", 1) is None


async def test_second_writer_from_the_same_version_loses(db: Store) -> None:
    """Two saves that both read version 1: the first wins, the second gets Conflict."""
    task = await insert(db, make_task("t-1"))
    winner = moved(task, state=pb.ASSIGNED, node_id="n-1")
    await db.save_task(A, winner, expected_version=1, events=[change("t-1", 2, pb.ASSIGNED)])
    with pytest.raises(Conflict):
        await db.save_task(A, moved(task, state=pb.CANCELLED), expected_version=1,
                           events=[change("t-1", 3, pb.CANCELLED)])
    assert await db.get_task(A, "t-1") == winner
    assert await event_seqs(db, "t-1") == [1, 2]


async def test_save_of_a_missing_task_conflicts(db: Store) -> None:
    """Saving a task that was never inserted raises Conflict and stores no events."""
    with pytest.raises(Conflict):
        await db.save_task(A, make_task("t-9", version=2), expected_version=1,
                           events=[change("t-9", 2, pb.ASSIGNED)])
    assert await event_seqs(db, "t-9") == []


@pytest.mark.parametrize("seqs", [[2, 1], [1], [2, 2]], ids=["stored-before", "only", "twice"])
async def test_duplicate_event_seq_conflicts_and_rolls_back_the_whole_save(
    db: Store, seqs: list[int]
) -> None:
    """An event seq already stored (or repeated) raises Conflict; the task, the other events
    and the attempt row of that save are not written."""
    task = await insert(db, make_task("t-1"))
    with pytest.raises(Conflict):
        await db.save_task(A, moved(task, state=pb.RUNNING), expected_version=1,
                           events=[output("t-1", s, b"x") for s in seqs],
                           attempt=attempt_row(1, pb.RUNNING))
    assert await db.get_task(A, "t-1") == task
    assert [e.HasField("state") for e in
            await db.read_events(A, "t-1", after_seq=0, limit=10)] == [True]
    assert await db.get_attempt(A, "t-1", 1) is None
    # Nothing half-applied: the same move with fresh seqs now succeeds from version 1.
    await db.save_task(A, moved(task, state=pb.RUNNING), expected_version=1,
                       events=[change("t-1", 2, pb.RUNNING)])


async def test_get_task_with_attempts_returns_the_attempt_rows(db: Store) -> None:
    """with_attempts fills Task.attempts in attempt order; without it they stay empty."""
    task = await insert(db, make_task("t-1"))
    rows = [attempt_row(1, pb.LOST, "n-1"), attempt_row(2, pb.SUCCEEDED, "n-2")]
    second = moved(task, state=pb.SUCCEEDED, attempt=2)
    await db.save_task(A, moved(task, attempt=2), expected_version=1, attempt=rows[0])
    await db.save_task(A, moved(second, version=2), expected_version=2, attempt=rows[1])
    full = await db.get_task(A, "t-1", with_attempts=True)
    assert full is not None
    assert list(full.attempts) == rows
    plain = await db.get_task(A, "t-1")
    assert plain is not None
    assert list(plain.attempts) == []
    assert await db.get_attempt(A, "t-1", 2) == rows[1]
    assert await db.get_attempt(A, "t-1", 3) is None


async def test_saving_an_attempt_again_replaces_it(db: Store) -> None:
    """An attempt row saved twice (running, then finished) keeps the later one."""
    task = await insert(db, make_task("t-1"))
    await db.save_task(A, moved(task), expected_version=1, attempt=attempt_row(1, pb.RUNNING))
    final = attempt_row(1, pb.FAILED)
    await db.save_task(A, moved(moved(task)), expected_version=2, attempt=final)
    assert await db.get_attempt(A, "t-1", 1) == final


# -- events --------------------------------------------------------------------------

async def test_events_read_back_in_seq_order_with_after_seq_and_limit(db: Store) -> None:
    """Events come back by ascending seq whatever order they were saved in; after_seq
    skips those seen and limit bounds the page."""
    task = await insert(db, make_task("t-1"))
    await db.save_task(A, moved(task), expected_version=1,
                       events=[output("t-1", s, b"%d" % s) for s in (5, 3, 2, 4)])
    await insert(db, make_task("t-2"))
    everything = await db.read_events(A, "t-1", after_seq=0, limit=100)
    assert [e.seq for e in everything] == [1, 2, 3, 4, 5]
    assert [e.output.data for e in everything[1:]] == [b"2", b"3", b"4", b"5"]
    assert [e.seq for e in await db.read_events(A, "t-1", after_seq=2, limit=2)] == [3, 4]
    assert [e.seq for e in await db.read_events(A, "t-1", after_seq=4, limit=10)] == [5]
    assert await db.read_events(A, "t-1", after_seq=5, limit=10) == []


async def test_events_round_trip_every_field(db: Store) -> None:
    """A stored event reads back equal to the one saved."""
    event = pb.TaskEvent(task_id="t-1", seq=1, attempt=1, time=NOW,
                         state=pb.StateChange(state=pb.FAILED, reason="boom", exit_code=3,
                                              has_exit_code=True, node_id="n-1"))
    await db.insert_task(A, make_task("t-1"), [event])
    assert await db.read_events(A, "t-1", after_seq=0, limit=1) == [event]


# -- listing -------------------------------------------------------------------------

async def _fleet_of_tasks(db: Store) -> None:
    specs = [
        ("t-01", pb.QUEUED, "", {"os": "linux"}),
        ("t-02", pb.RUNNING, "n-1", {"os": "linux", "gpu": "yes"}),
        ("t-03", pb.SUCCEEDED, "n-1", {"os": "mac"}),
        ("t-04", pb.RUNNING, "n-2", {"os": "linux"}),
        ("t-05", pb.FAILED, "n-2", {}),
        ("t-06", pb.QUEUED, "", {"os": "linux", "gpu": "yes"}),
    ]
    for task_id, state, node_id, labels in specs:
        await insert(db, make_task(task_id, state=state, node_id=node_id, labels=labels))
    await insert(db, make_task("t-07", B, state=pb.RUNNING, node_id="n-1",
                               labels={"os": "linux"}), B)


def ids(tasks: list[pb.Task]) -> list[str]:
    return [t.id for t in tasks]


async def test_list_tasks_is_newest_first_and_tenant_scoped(db: Store) -> None:
    """Without filters a tenant lists all and only its tasks, newest (largest id) first."""
    await _fleet_of_tasks(db)
    assert ids(await db.list_tasks(A, TaskQuery())) == [
        "t-06", "t-05", "t-04", "t-03", "t-02", "t-01"]
    assert ids(await db.list_tasks(B, TaskQuery())) == ["t-07"]


@pytest.mark.parametrize(("query", "expected"), [
    (TaskQuery(states=[pb.RUNNING]), ["t-04", "t-02"]),
    (TaskQuery(states=[pb.QUEUED, pb.FAILED]), ["t-06", "t-05", "t-01"]),
    (TaskQuery(node_id="n-1"), ["t-03", "t-02"]),
    (TaskQuery(labels={"os": "linux"}), ["t-06", "t-04", "t-02", "t-01"]),
    (TaskQuery(labels={"os": "linux", "gpu": "yes"}), ["t-06", "t-02"]),
    (TaskQuery(labels={"os": "windows"}), []),
    (TaskQuery(states=[pb.RUNNING], node_id="n-2", labels={"os": "linux"}), ["t-04"]),
], ids=["state", "states", "node", "label", "labels", "no-match", "combined"])
async def test_list_tasks_filters(db: Store, query: TaskQuery, expected: list[str]) -> None:
    """State, node and label filters (all labels must match) narrow the listing."""
    await _fleet_of_tasks(db)
    assert ids(await db.list_tasks(A, query)) == expected


async def test_list_tasks_pages_with_after_id(db: Store) -> None:
    """Pages of `limit` continue after the last id seen and end with an empty page."""
    await _fleet_of_tasks(db)
    seen: list[str] = []
    after = ""
    while page := await db.list_tasks(A, TaskQuery(limit=4, after_id=after)):
        assert len(page) <= 4
        seen += ids(page)
        after = page[-1].id
    assert seen == ["t-06", "t-05", "t-04", "t-03", "t-02", "t-01"]


async def test_label_filtered_pages_are_full(db: Store) -> None:
    """With a label filter, limit counts matching tasks, not rows scanned."""
    await _fleet_of_tasks(db)
    page = await db.list_tasks(A, TaskQuery(labels={"os": "linux"}, limit=3))
    assert ids(page) == ["t-06", "t-04", "t-02"]
    rest = await db.list_tasks(A, TaskQuery(labels={"os": "linux"}, limit=3, after_id="t-02"))
    assert ids(rest) == ["t-01"]


async def test_list_active_tasks_all_tenants_returns_only_live_ones(db: Store) -> None:
    """The recovery scan returns the queued, assigned and running tasks of every tenant."""
    for n, state in enumerate(ALL_STATES):
        await insert(db, make_task(f"ta-{n}", state=state))
        await insert(db, make_task(f"tb-{n}", B, state=state), B)
    active = await db.list_active_tasks_all_tenants()
    assert {t.state for t in active} == ACTIVE
    assert sorted(ids(active)) == sorted(
        f"t{t}-{n}" for t in "ab" for n, s in enumerate(ALL_STATES) if s in ACTIVE)


async def test_finished_tasks_leave_the_active_scan(db: Store) -> None:
    """A task saved into a terminal state no longer appears in the recovery scan."""
    task = await insert(db, make_task("t-1"))
    await db.save_task(A, moved(task, state=pb.CANCELLED), expected_version=1)
    assert await db.list_active_tasks_all_tenants() == []


# -- tenant isolation matrix ---------------------------------------------------------

TenantRead = Callable[[Store, str], Awaitable[Any]]
TENANT_READS: dict[str, tuple[TenantRead, Any]] = {
    "get_node": (lambda s, t: s.get_node(t, "n-1"), None),
    "list_nodes": (lambda s, t: s.list_nodes(t), []),
    "get_task": (lambda s, t: s.get_task(t, "t-1"), None),
    "get_task+attempts": (lambda s, t: s.get_task(t, "t-1", with_attempts=True), None),
    "list_tasks": (lambda s, t: s.list_tasks(t, TaskQuery()), []),
    "list_tasks+filters": (lambda s, t: s.list_tasks(
        t, TaskQuery(states=[pb.RUNNING], node_id="n-1", labels={"os": "linux"})), []),
    "get_attempt": (lambda s, t: s.get_attempt(t, "t-1", 1), None),
    "read_events": (lambda s, t: s.read_events(t, "t-1", after_seq=0, limit=100), []),
}


@pytest.mark.parametrize("method", sorted(TENANT_READS))
async def test_tenant_scoped_reads_see_nothing_of_another_tenant(
    db: Store, method: str
) -> None:
    """Each tenant-scoped read finds tenant A's data as A and nothing as B."""
    await db.upsert_node(A, node_msg("n-1"))
    task = await insert(db, make_task("t-1", labels={"os": "linux"}))
    await db.save_task(A, moved(task, state=pb.RUNNING, node_id="n-1"), expected_version=1,
                       events=[change("t-1", 2, pb.RUNNING)], attempt=attempt_row(1, pb.RUNNING))
    read, empty = TENANT_READS[method]
    assert await read(db, A) not in (None, [])
    assert await read(db, B) == empty


async def test_another_tenant_cannot_save_a_task(db: Store) -> None:
    """save_task as tenant B on tenant A's task raises Conflict and changes nothing."""
    task = await insert(db, make_task("t-1"))
    with pytest.raises(Conflict):
        await db.save_task(B, moved(task, state=pb.CANCELLED), expected_version=1,
                           events=[change("t-1", 2, pb.CANCELLED)],
                           attempt=attempt_row(1, pb.CANCELLED))
    assert await db.get_task(A, "t-1", with_attempts=True) == task
    assert await event_seqs(db, "t-1") == [1]


# -- errors ----------------------------------------------------------------------------

async def _duplicate_task_id_in_other_tenant(db: Store) -> None:
    await insert(db, make_task("t-1"))
    await db.insert_task(B, make_task("t-1", B), [change("t-1", 1, pb.QUEUED)])


async def _duplicate_task_id(db: Store) -> None:
    await insert(db, make_task("t-1"))
    await db.insert_task(A, make_task("t-1"), [change("t-1", 1, pb.QUEUED)])


async def _node_id_of_other_tenant(db: Store) -> None:
    await db.upsert_node(A, node_msg("n-1"))
    await db.upsert_node(B, node_msg("n-1", B))


async def _duplicate_api_token(db: Store) -> None:
    await db.create_api_token(ApiTokenRecord("tok-1", A, "ci", "admin", b"h", NOW))
    await db.create_api_token(ApiTokenRecord("tok-1", A, "ci", "admin", b"h", NOW))


async def _task_of_unknown_tenant(db: Store) -> None:
    await db.insert_task("nobody", make_task("t-1", "nobody"), [change("t-1", 1, pb.QUEUED)])


@pytest.mark.parametrize("provoke", [
    _duplicate_task_id_in_other_tenant, _duplicate_task_id, _node_id_of_other_tenant,
    _duplicate_api_token, _task_of_unknown_tenant,
], ids=lambda f: f.__name__.strip("_"))
async def test_backend_errors_surface_as_cortex_errors(
    db: Store, provoke: Callable[[Store], Awaitable[None]]
) -> None:
    """A constraint the backend enforces surfaces as a CortexError with the backend's own
    error chained, never as a raw driver exception."""
    with pytest.raises(CortexError) as info:
        await provoke(db)
    assert info.value.__cause__ is not None


# -- group commit, lifecycle and durability --------------------------------------------

async def test_200_concurrent_writes_all_land_and_a_failure_stays_alone(db: Store) -> None:
    """200 concurrent inserts and saves all persist; one stale save among them fails with
    Conflict without rolling back any other."""
    existing = [await insert(db, make_task(f"s-{n:03d}")) for n in range(100)]
    saves = [db.save_task(A, moved(t, state=pb.ASSIGNED, node_id="n-1"), expected_version=1,
                          events=[change(t.id, 2, pb.ASSIGNED)]) for t in existing]
    inserts = [db.insert_task(A, make_task(f"i-{n:03d}"), [change(f"i-{n:03d}", 1, pb.QUEUED)])
               for n in range(100)]
    stale = db.save_task(A, moved(existing[0], state=pb.FAILED), expected_version=7)
    results = await asyncio.gather(*saves[:50], stale, *saves[50:], *inserts,
                                   return_exceptions=True)
    assert isinstance(results[50], Conflict)
    del results[50]
    assert not [r for r in results if isinstance(r, BaseException)]
    listed = await db.list_tasks(A, TaskQuery(limit=1000))
    assert len(listed) == 200
    assert {t.state for t in listed if t.id.startswith("s-")} == {pb.ASSIGNED}
    assert {t.state for t in listed if t.id.startswith("i-")} == {pb.QUEUED}
    for task in existing:
        assert await event_seqs(db, task.id) == [1, 2]


async def test_close_finishes_writes_already_submitted(make_store: StoreFactory) -> None:
    """close() lets writes submitted before it complete, and they are stored."""
    first = make_store()
    await first.open()
    await first.ensure_tenant(A, now=NOW)
    writes = [first.insert_task(A, make_task(f"t-{n:02d}"), [change(f"t-{n:02d}", 1, 1)])
              for n in range(20)]
    # gather starts them in order, so every insert is submitted before close() runs.
    results = await asyncio.gather(*writes, first.close())
    assert all(created for _, created in results[:-1])
    second = make_store()
    await second.open()
    try:
        assert len(await second.list_tasks(A, TaskQuery())) == 20
    finally:
        await second.close()


async def test_closed_store_refuses_calls_with_unavailable(store: Store) -> None:
    """After close(), calls raise Unavailable; closing again is harmless."""
    await store.close()
    await store.close()
    with pytest.raises(Unavailable):
        await store.ensure_tenant(A, now=NOW)
    with pytest.raises(Unavailable):
        await store.get_task(A, "t-1")


async def test_data_survives_close_and_reopen(make_store: StoreFactory) -> None:
    """Tenants, tokens, nodes, tasks, events and attempts read back after a restart."""
    first = make_store()
    await first.open()
    await first.ensure_tenant(A, now=NOW)
    token = ApiTokenRecord("tok-1", A, "ci", "admin", b"h", NOW)
    await first.create_api_token(token)
    await first.create_join_token(join_record())
    await first.upsert_node(A, node_msg("n-1"))
    task = await insert(first, make_task("t-1", key="job-1"))
    saved = moved(task, state=pb.RUNNING, node_id="n-1")
    row = attempt_row(1, pb.RUNNING)
    await first.save_task(A, saved, expected_version=1, attempt=row,
                          events=[change("t-1", 2, pb.RUNNING)])
    await first.close()

    second = make_store()
    await second.open()
    try:
        assert await second.find_api_token("tok-1") == token
        assert await second.get_node(A, "n-1") == node_msg("n-1")
        assert await second.get_task(A, "t-1") == saved
        assert await second.get_attempt(A, "t-1", 1) == row
        assert await event_seqs(second, "t-1") == [1, 2]
        assert [t.id for t in await second.list_active_tasks_all_tenants()] == ["t-1"]
        again, created = await second.insert_task(A, make_task("t-2", key="job-1"), [])
        assert (again.id, created) == ("t-1", False)
        await second.consume_join_token("jt-1", b"hash-1", node_id="n-1", now=NOW + 1)
        await second.save_task(A, moved(saved), expected_version=2)
    finally:
        await second.close()


# -- SQLite only: the group commit batch itself ----------------------------------------
# Not part of the backend contract: this pins the writer thread's batching, which is how
# the SQLite store meets the concurrency contract above.

@pytest_asyncio.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "group.db")
    await store.open()
    try:
        await store.ensure_tenant(A, now=NOW)
        yield store
    finally:
        await store.close()


async def test_sqlite_one_batch_commits_successes_around_a_failure(
    sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls queued while the writer is busy run as ONE transaction; a failing call in it
    rolls back alone and the rest commit."""
    store = sqlite_store
    existing = [await insert(store, make_task(f"s-{n:03d}")) for n in range(100)]
    batches: list[int] = []
    real_run_batch = store._run_batch

    def recording(conn: Any, batch: list[Any]) -> None:
        batches.append(len(batch))
        real_run_batch(conn, batch)

    monkeypatch.setattr(store, "_run_batch", recording)
    loop = asyncio.get_running_loop()
    entered: asyncio.Future[None] = loop.create_future()
    gate = threading.Event()

    def hold_the_writer(_conn: Any) -> None:
        loop.call_soon_threadsafe(entered.set_result, None)
        gate.wait(timeout=30)

    async def open_the_gate() -> None:
        gate.set()

    holding = asyncio.ensure_future(store._call(hold_the_writer))
    await entered   # the writer thread is now busy; everything below queues behind it
    saves = [store.save_task(A, moved(t, state=pb.RUNNING), expected_version=1,
                             events=[change(t.id, 2, pb.RUNNING)]) for t in existing]
    inserts = [store.insert_task(A, make_task(f"i-{n:03d}"), [change(f"i-{n:03d}", 1, 1)])
               for n in range(99)]
    # Right version, but seq 1 is taken: fails only after its UPDATE ran inside the batch.
    duplicate = store.save_task(A, moved(existing[0], state=pb.FAILED), expected_version=1,
                                events=[change("s-000", 1, pb.FAILED)])
    # gather starts the calls in order: all 200 are queued before the gate opens.
    results = await asyncio.gather(duplicate, *saves, *inserts, open_the_gate(),
                                   return_exceptions=True)
    await holding
    assert isinstance(results[0], Conflict)
    assert not [r for r in results[1:] if isinstance(r, BaseException)]
    assert batches[-1] == 200
    listed = await store.list_tasks(A, TaskQuery(limit=1000))
    assert len(listed) == 199
    # The failed call's UPDATE was undone, so the save after it (also from version 1) won.
    assert {t.state for t in listed if t.id.startswith("s-")} == {pb.RUNNING}
    assert await event_seqs(store, "s-000") == [1, 2]


# -- sessions --------------------------------------------------------------------------

async def test_sessions_are_listed_per_tenant_newest_first_and_bounded(db: Store) -> None:
    """list_sessions gives the tenant's own pinned sessions, newest first, at most limit."""
    for n in range(3):
        await db.pin_session(A, f"s-{n}", f"n-{n}", now=NOW + n)
    await db.pin_session(B, "s-b", "n-b", now=NOW + 10)
    await db.pin_session(A, "s-0", "n-9", now=NOW + 20)   # already pinned: unchanged
    listed = await db.list_sessions(A, limit=10)
    assert [(s.id, s.node_id, s.created_at) for s in listed] == [
        ("s-2", "n-2", NOW + 2), ("s-1", "n-1", NOW + 1), ("s-0", "n-0", NOW)]
    assert [s.id for s in await db.list_sessions(A, limit=2)] == ["s-2", "s-1"]
    assert [s.id for s in await db.list_sessions(B, limit=10)] == ["s-b"]
