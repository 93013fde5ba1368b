"""Hub faults on a Postgres store: kill -9 of a `cortex hub` process while its batched
task writes (cortex.store._pg_batch) are in flight.

A batch answers its callers only after its one statement committed, so whatever the hub
acknowledged before it died must be there after the restart, once, and run to its end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from cortex.sdk import TaskState, build_spec
from cortex.testing import postgres_schema_url

if TYPE_CHECKING:
    from conftest import Fleet

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120), pytest.mark.postgres]

POSTGRES_URL = os.environ.get("CORTEX_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432/test")
QUICK_BEATS = ("--heartbeat-interval", "0.5")
TASKS = 300


@pytest.fixture
def store_url() -> Iterator[str]:
    """A fresh schema for the hub; requested before `fleet`, so dropped after its hubs."""
    with postgres_schema_url(POSTGRES_URL) as url:
        yield url


async def test_hub_killed_while_batches_are_written_keeps_every_acknowledged_task(
        store_url: str, fleet: Fleet) -> None:
    """kill -9 of a Postgres-backed hub just after SubmitMany acknowledged 300 tasks, while
    their assignments and results are being written in batches: after the restart each
    acknowledged task is stored exactly once and succeeds, with a dense event log."""
    hub = await fleet.start_hub("--store", store_url, *QUICK_BEATS)
    client = fleet.client(hub)
    await fleet.start_node(hub, client, "n1")
    accepted = await client.submit_many([build_spec(skill="noop")] * TASKS)
    hub.kill()

    await fleet.restart_hub(hub)
    for task in accepted:
        done = await fleet.finished(client, task.id)
        assert done.state == TaskState.SUCCEEDED, (done.id, done.reason)
    stored = await client.list_tasks(limit=1000)
    assert sorted(t.id for t in stored) == sorted(t.id for t in accepted)
    for task in accepted[::30]:
        events = await fleet.history(client, task.id)
        events.assert_dense()
        assert events.states()[-1][1] == "SUCCEEDED"
