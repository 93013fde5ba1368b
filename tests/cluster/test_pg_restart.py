"""Postgres restarted under a running cluster: the hubs reconnect (store pool and change
feed), and nothing accepted is lost: a Submit in flight either fails clearly or is
stored, never acknowledged and lost; every acknowledged task finishes exactly once.

It restarts the machine's PostgreSQL server, which other tests share: it is marked
`pg_restart` (deselect with -m 'not pg_restart') and keeps the outage to one restart.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest
from cluster_harness import Cluster, numbered_lines, stored_events, stored_tasks

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.sdk import Client, CortexError

pytestmark = [pytest.mark.postgres, pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.pg_restart]

SCRIPT = "echo line-1; sleep 0.3; echo line-2"


def _restart_postgres() -> None:
    """`pg_ctlcluster <version> main restart` on the local server (fast shutdown)."""
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True,
                             text=True, check=True).stdout.split()
    version = listing[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                    "restart", "-m", "fast"], check=True, timeout=120)


@pytest.mark.timeout(400)
@pytest.mark.asyncio
async def test_postgres_restart_loses_nothing_accepted(cluster: Cluster) -> None:
    if shutil.which("pg_ctlcluster") is None:
        pytest.fail("pg_ctlcluster is missing: this test restarts the local PostgreSQL")
    await cluster.start_hubs(3)
    lb = cluster.start_balancer()
    client = cluster.client(lb.address)
    await cluster.start_node(client, lb.address, lb.node_address, "n1")

    accepted: dict[str, str] = {}     # idempotency key -> task id (acknowledged)
    refused: dict[str, str] = {}      # idempotency key -> the error the client saw
    stop = asyncio.Event()

    async def submitter(c: Client, prefix: str) -> None:
        i = 0
        while not stop.is_set():
            key = f"{prefix}-{i}"
            i += 1
            try:
                task = await c.submit(argv=["sh", "-c", SCRIPT, cluster.marker],
                                      idempotency_key=key, timeout=600)
                accepted[key] = str(task.id)
            except CortexError as exc:
                refused[key] = str(exc)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.02)

    submitters = [asyncio.create_task(submitter(client, "lb"))]
    submitters += [asyncio.create_task(submitter(cluster.client(h.address), f"hub{n}"))
                   for n, h in enumerate(cluster.hubs)]
    try:
        await asyncio.sleep(2)
        before = len(accepted)
        await asyncio.to_thread(_restart_postgres)
        restarted = len(accepted)
        # The hubs must come back to accepting on their own: a few submits after it.
        try:
            async with asyncio.timeout(60):
                while len(accepted) < restarted + 10:   # noqa: ASYNC110 - counted by others
                    await asyncio.sleep(0.1)
        except TimeoutError:
            pytest.fail(f"no hub accepted 10 submits within 60 s of the restart "
                        f"({len(accepted) - restarted} accepted; refused: "
                        f"{list(refused.values())[-3:]})\n{cluster.logs()}")
        stop.set()
        await asyncio.gather(*submitters)
    finally:
        stop.set()
        for s in submitters:
            s.cancel()
    assert before > 0
    assert len(accepted) > restarted, "no submit succeeded after Postgres came back"
    for error in refused.values():   # failed clearly: the client was told to retry
        assert "unavailable" in error.lower() or "postgres" in error.lower() \
            or "retry" in error.lower(), error

    # Every acknowledged task is stored and finishes, exactly once.
    ids = list(accepted.values())
    async with asyncio.timeout(180):
        done = {t.id: t async for t in client.wait_many(ids)}
    assert set(done) == set(ids)
    stored = stored_tasks(cluster)
    bad = {tid: (pb.TaskState.Name(stored[tid].state), stored[tid].attempt,
                 stored[tid].reason)
           for tid in ids if stored[tid].state != pb.SUCCEEDED}
    assert not bad, f"acknowledged tasks that did not succeed: {bad}\n{cluster.logs()}"
    events = stored_events(cluster)
    for tid in ids:
        out = b"".join(e.output.data for e in events[tid] if e.HasField("output")).decode()
        assert out == numbered_lines(2), (tid, out)
        assert [e.seq for e in events[tid]] == list(range(1, len(events[tid]) + 1))
    # Failed submits were either never stored or stored once under their key (a retry
    # with the same key returns that task): never stored twice.
    with cluster.db() as conn:
        dupes = conn.execute("SELECT idempotency_key, count(*) FROM tasks"
                             " GROUP BY idempotency_key HAVING count(*) > 1").fetchall()
    assert dupes == []
