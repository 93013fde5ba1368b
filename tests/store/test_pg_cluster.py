"""The Postgres store's scale-out methods (issue #7), on real Postgres with two store
instances standing for two hubs: claims, hub ids, node leases and the change feed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_asyncio

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.errors import Conflict
from cortex.store import open_store
from cortex.store.base import Store, TaskChange
from cortex.store.sqlite import SqliteStore

pytestmark = pytest.mark.postgres

A = "tenant-a"
NOW = 1_700_000_000.0
RACES = 200


def make_task(task_id: str) -> pb.Task:
    return pb.Task(id=task_id, tenant=A, state=pb.QUEUED, version=1, attempt=1,
                   created_at=NOW, last_seq=1, spec=pb.TaskSpec(skill="noop"))


def assigned(task: pb.Task, node: str) -> tuple[pb.Task, pb.TaskEvent, pb.Attempt]:
    new = pb.Task()
    new.CopyFrom(task)
    new.state, new.node_id, new.version, new.last_seq = pb.ASSIGNED, node, 2, 2
    event = pb.TaskEvent(task_id=task.id, seq=2, attempt=1, time=NOW,
                         state=pb.StateChange(state=pb.ASSIGNED, node_id=node))
    return new, event, pb.Attempt(attempt=1, node_id=node, state=pb.ASSIGNED)


@pytest_asyncio.fixture
async def hubs(postgres_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two opened stores on one schema: two hubs' views of one database."""
    one, two = open_store(postgres_url), open_store(postgres_url)
    await one.open()
    await two.open()
    await one.ensure_tenant(A, now=NOW)
    try:
        yield one, two
    finally:
        await one.close()
        await two.close()


@pytest.mark.asyncio
async def test_two_hubs_racing_to_claim_one_task_exactly_one_wins(
        hubs: tuple[Store, Store]) -> None:
    """A property over many races: one claim commits, the other gets Conflict, and the
    stored task, its events and its attempt are the winner's alone."""
    one, two = hubs
    for i in range(RACES):
        task = make_task(f"t-race-{i:04d}")
        await one.insert_task(A, task, [pb.TaskEvent(task_id=task.id, seq=1, attempt=1,
                                                     state=pb.StateChange(state=pb.QUEUED))])
        claims = []
        for store, node in ((one, "node-1"), (two, "node-2")):
            new, event, attempt = assigned(task, node)
            claims.append(store.claim_task(A, new, expected_version=1, events=[event],
                                           attempt=attempt))
        if i % 2:
            claims.reverse()  # neither side always starts first
        results = await asyncio.gather(*claims, return_exceptions=True)
        won = [r for r in results if r is None]
        lost = [r for r in results if isinstance(r, Conflict)]
        assert len(won) == 1, results
        assert len(lost) == 1, results
        stored = await two.get_task(A, task.id, with_attempts=True)
        assert stored is not None
        assert (stored.state, stored.version) == (pb.ASSIGNED, 2)
        events = await one.read_events(A, task.id, after_seq=0, limit=10)
        assert [e.seq for e in events] == [1, 2]
        assert [a.node_id for a in stored.attempts] == [stored.node_id]
        assert events[1].state.node_id == stored.node_id


@pytest.mark.asyncio
async def test_a_claim_never_moves_a_task_that_left_the_queue(
        hubs: tuple[Store, Store]) -> None:
    one, _ = hubs
    task = make_task("t-gone")
    await one.insert_task(A, task, [])
    cancelled = pb.Task()
    cancelled.CopyFrom(task)
    cancelled.state, cancelled.version = pb.CANCELLED, 2
    await one.save_task(A, cancelled, expected_version=1)
    new, _, _ = assigned(cancelled, "node-1")
    new.version = 3
    with pytest.raises(Conflict, match="claimed or changed by another hub"):
        await one.claim_task(A, new, expected_version=2)


@pytest.mark.asyncio
async def test_a_row_locked_elsewhere_fails_only_its_own_claim_of_a_batch_at_once(
        hubs: tuple[Store, Store], postgres_url: str) -> None:
    """Claims queued in one tick go out as one statement; a task whose row another
    transaction holds locked fails its claim at once (Conflict), not the others'."""
    one, _ = hubs
    tasks = [make_task(f"t-batch-{i}") for i in range(5)]
    for task in tasks:
        await one.insert_task(A, task, [])
    async with await psycopg.AsyncConnection.connect(postgres_url) as other:
        await other.execute("SELECT 1 FROM tasks WHERE id = 't-batch-2' FOR UPDATE")
        claims = []
        for task in tasks:
            new, event, attempt = assigned(task, "node-1")
            claims.append(one.claim_task(A, new, expected_version=1, events=[event],
                                         attempt=attempt))
        # Waiting for the lock would hang here until the other transaction ends.
        results = await asyncio.wait_for(
            asyncio.gather(*claims, return_exceptions=True), 10.0)
        await other.rollback()
    assert [isinstance(r, Conflict) for r in results] == [False, False, True, False, False]
    for task in tasks:
        stored = await one.get_task(A, task.id)
        assert stored is not None
        want = (pb.QUEUED, 1) if task.id == "t-batch-2" else (pb.ASSIGNED, 2)
        assert (stored.state, stored.version) == want
        events = await one.read_events(A, task.id, after_seq=0, limit=10)
        assert [e.seq for e in events] == ([] if task.id == "t-batch-2" else [2])


@pytest.mark.asyncio
async def test_a_hub_id_is_held_by_one_live_process(hubs: tuple[Store, Store]) -> None:
    one, two = hubs
    assert await one.claim_hub_id("hub-a", "first", ttl_s=30)
    assert await one.claim_hub_id("hub-a", "first", ttl_s=30)     # itself, again
    assert not await two.claim_hub_id("hub-a", "second", ttl_s=30)
    assert await two.claim_hub_id("hub-b", "second", ttl_s=30)
    # A lease that ran out (its process was killed) is taken by the next one.
    assert await one.claim_hub_id("hub-c", "dead", ttl_s=0.05)
    await asyncio.sleep(0.2)
    assert await two.claim_hub_id("hub-c", "next", ttl_s=30)


@pytest.mark.asyncio
async def test_node_leases_move_with_the_node_and_expire_into_one_takeover(
        hubs: tuple[Store, Store]) -> None:
    one, two = hubs
    await one.claim_hub_id("hub-1", "i1", ttl_s=30)
    await two.claim_hub_id("hub-2", "i2", ttl_s=30)
    await one.take_node_lease(A, "n1", "hub-1", ttl_s=30)
    assert await one.renew_hub("hub-1", "i1", ttl_s=30, nodes=[(A, "n1")]) == {(A, "n1")}
    # The node reconnects to hub 2: the newest connection wins, hub 1 learns it lost it.
    await two.take_node_lease(A, "n1", "hub-2", ttl_s=30)
    assert await one.lease_holder(A, "n1") == "hub-2"
    assert await one.renew_hub("hub-1", "i1", ttl_s=30, nodes=[(A, "n1")]) == set()
    # Hub 1 releasing it now changes nothing: it is not hub 1's.
    await one.release_node_lease(A, "n1", "hub-1", ttl_s=0)
    assert await one.take_expired_node_leases("hub-1", ttl_s=30) == []
    # Hub 2 dies; the lease runs out; exactly one of two reapers takes it over.
    await two.release_node_lease(A, "n1", "hub-2", ttl_s=0.05)
    await asyncio.sleep(0.2)
    got = await asyncio.gather(one.take_expired_node_leases("hub-1", ttl_s=30),
                               two.take_expired_node_leases("hub-2", ttl_s=30))
    taken = [t for g in got for t in g]
    assert [(t[0], t[1]) for t in taken] == [(A, "n1")]
    holder = await one.lease_holder(A, "n1")
    # Dropping it is a CAS on (hub, expiry): a stale expiry drops nothing.
    assert holder is not None
    await one.drop_node_lease(A, "n1", holder, taken[0][2] + 1)
    assert await one.lease_holder(A, "n1") == holder
    await one.drop_node_lease(A, "n1", holder, taken[0][2])
    assert await one.lease_holder(A, "n1") is None


@pytest.mark.asyncio
async def test_the_change_feed_announces_every_task_write_of_any_hub(
        hubs: tuple[Store, Store]) -> None:
    one, two = hubs
    feed = one.change_feed()
    assert feed is not None
    seen: asyncio.Queue[TaskChange] = asyncio.Queue()
    listening = asyncio.Event()

    async def connected() -> None:
        listening.set()

    runner = asyncio.create_task(feed.run(seen.put_nowait, connected))
    try:
        await asyncio.wait_for(listening.wait(), 10)
        task = make_task("t-fed")
        await two.insert_task(A, task, [])
        new, event, attempt = assigned(task, "node-9")
        await two.claim_task(A, new, expected_version=1, events=[event], attempt=attempt)
        first = await asyncio.wait_for(seen.get(), 10)
        second = await asyncio.wait_for(seen.get(), 10)
        assert first == TaskChange(A, "t-fed", pb.QUEUED, 1, "", task.SerializeToString())
        assert second == TaskChange(A, "t-fed", pb.ASSIGNED, 2, "node-9")
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


@pytest.mark.asyncio
async def test_a_sqlite_store_is_a_single_hub_store(tmp_path: object) -> None:
    store = SqliteStore(f"{tmp_path}/cortex.db")
    assert not store.shared
    assert store.change_feed() is None


@pytest.mark.asyncio
async def test_a_nodes_tasks_of_every_tenant_fail_over_with_it(
        hubs: tuple[Store, Store]) -> None:
    """A shared pool's node runs other tenants' tasks: all of them are found by node."""
    one, _ = hubs
    await one.ensure_tenant("tenant-b", now=NOW)
    for task_id, tenant in (("t-a", A), ("t-b", "tenant-b"), ("t-q", A)):
        task = make_task(task_id)
        task.tenant = tenant
        await one.insert_task(tenant, task, [])
        if task_id != "t-q":
            new, _, _ = assigned(task, "node-x")
            await one.claim_task(tenant, new, expected_version=1)
    found = await one.node_tasks_all_tenants("node-x")
    assert [(t.id, t.tenant) for t in found] == [("t-a", A), ("t-b", "tenant-b")]
    assert await one.node_tasks_all_tenants("node-y") == []


@pytest.mark.asyncio
async def test_the_change_feed_reconnects_and_resyncs_after_losing_its_connection(
        hubs: tuple[Store, Store], postgres_url: str) -> None:
    """The listening connection is killed server-side (as a Postgres restart would): the
    feed reconnects by itself, calls back to resync, and announces later writes."""
    one, two = hubs
    feed = one.change_feed()
    assert feed is not None
    seen: asyncio.Queue[TaskChange] = asyncio.Queue()
    connects: asyncio.Queue[int] = asyncio.Queue()

    async def connected() -> None:
        connects.put_nowait(1)

    runner = asyncio.create_task(feed.run(seen.put_nowait, connected))
    try:
        await asyncio.wait_for(connects.get(), 10)
        async with await psycopg.AsyncConnection.connect(postgres_url,
                                                         autocommit=True) as admin:
            # This schema's listener only (its channels are named after the schema).
            cur = await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN%' AND query LIKE '%' || 'cortex_input_'"
                " || left(md5(current_schema()), 16) || '%'")
            assert [r[0] for r in await cur.fetchall()] == [True]
        await asyncio.wait_for(connects.get(), 10)   # reconnected, resync asked for
        await two.insert_task(A, make_task("t-after"), [])
        change = await asyncio.wait_for(seen.get(), 10)
        assert change.task_id == "t-after"
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
