"""Tenants, pools and quotas against a real hub and nodes, on both store backends.

Quotas: a task that alone exceeds its tenant's quota is refused at Submit naming it; one
that fits but not now waits as `queued` with reason `quota: ...` and starts when the
tenant's running work ends — by finishing, by cancel, or by its node being lost.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cortex.errors import NotFound, PermissionDenied, QuotaExceeded
from cortex.hub.server import Hub
from cortex.sdk import Client, ClientConfig, TaskState
from cortex.testing import NodeProcess, eventually, join_token, running_node

pytestmark = pytest.mark.asyncio

PY = sys.executable
FOREVER = "import time\nprint('up', flush=True)\ntime.sleep(600)\n"


@contextlib.asynccontextmanager
async def tenant_client(hub: Hub, admin: Client, tenant: str, *, role: str = "admin",
                        **limits: object) -> AsyncIterator[Client]:
    """A client holding a `role` token of `tenant` (created, with `limits`, by hub-admin)."""
    with contextlib.suppress(Exception):
        await admin.admin.create_tenant(tenant, **limits)  # type: ignore[arg-type]
    new = await admin.admin.create_api_token(f"{tenant}-{role}", role=role, tenant=tenant)
    assert hub.ca is not None
    async with Client(ClientConfig(address=hub.address, token=new.secret,
                                   ca_pem=hub.ca.cert_pem)) as client:
        yield client


async def until_output(client: Client, task_id: str, text: bytes) -> None:
    seen = b""
    async for event in client.watch(task_id):
        seen += event.output.data
        if text in seen:
            return
    pytest.fail(f"task {task_id} ended before printing {text!r}")


async def test_a_task_alone_over_the_quota_is_refused_at_submit(hub: Hub, client: Client
                                                                ) -> None:
    """Submit refuses what could never run under the quota, naming the quota."""
    async with tenant_client(hub, client, "acme", quota={"cpus": 2, "gpus": 0}) as acme:
        with pytest.raises(QuotaExceeded, match="CPU cores: the task needs 4, the quota is 2"):
            await acme.submit(argv=["true"], cpus=4)
        with pytest.raises(QuotaExceeded, match=r"specs\[1\]"):
            await acme.submit_many([acme_spec(0.5), acme_spec(3)])
        # The one-call run path (TaskService.Run, a stream) carries the error class too.
        with pytest.raises(QuotaExceeded, match="CPU cores: the task needs 4"):
            await acme.run(argv=["true"], cpus=4)


def acme_spec(cpus: float) -> object:
    from cortex.sdk import build_spec
    return build_spec(argv=["true"], cpus=cpus)


async def test_quota_queues_then_releases_on_finish_and_cancel(hub: Hub, client: Client,
                                                               tmp_path: Path) -> None:
    """With tasks=1, a second task waits with reason quota; it starts when the first is
    cancelled, and a third when the second finishes."""
    async with tenant_client(hub, client, "acme", quota={"tasks": 1}) as acme, \
            running_node(hub, tmp_path / "n", tenant="acme", slots=4):
        first = await acme.submit(argv=[PY, "-c", FOREVER])
        await until_output(acme, first.id, b"up")
        second = await acme.submit(argv=["echo", "second"])
        waiting = await eventually(
            lambda: _reason_if(acme, second.id, "quota:"), "second waits on quota")
        assert "limit of 1 concurrent tasks" in waiting
        usage = await acme.admin.get_tenant()
        assert (usage.usage.tasks, usage.queued) == (1, 1)
        await acme.cancel(first.id)
        assert (await acme.wait(second.id)).state == TaskState.SUCCEEDED
        third = await acme.run(argv=["echo", "third"])
        assert third.stdout == b"third\n"
        assert (await acme.admin.get_tenant()).usage.tasks == 0


async def _reason_if(client: Client, task_id: str, prefix: str) -> str | None:
    task = await client.get(task_id)
    return task.reason if task.state == TaskState.QUEUED and task.reason.startswith(prefix) \
        else None


async def test_quota_is_released_when_the_node_holding_the_task_is_lost(
        hub: Hub, client: Client, tmp_path: Path) -> None:
    """A task lost with its node (kill -9) no longer counts against the quota."""
    async with tenant_client(hub, client, "acme", quota={"tasks": 1}) as acme:
        node = NodeProcess(tmp_path / "n", hub.address,
                           await join_token(hub, tenant="acme"))
        node.start()
        try:
            task = await acme.submit(argv=[PY, "-c", FOREVER])
            await until_output(acme, task.id, b"up")
            assert (await acme.admin.get_tenant()).usage.tasks == 1
            node.signal(signal.SIGKILL)
            node.wait()
            lost = await acme.wait(task.id)
            assert lost.state == TaskState.LOST
            assert (await acme.admin.get_tenant()).usage.tasks == 0
        finally:
            node.kill()


async def test_pools_route_tasks_and_unknown_pools_are_refused(
        hub: Hub, client: Client, tmp_path: Path) -> None:
    """A task for pool gpu runs only on the gpu pool's node; an unknown pool is NotFound."""
    await client.admin.create_pool("gpu", description="the GPU boxes")
    async with running_node(hub, tmp_path / "plain", name="plain"), \
            running_node(hub, tmp_path / "gpu", name="gpu", pool="gpu"):
        nodes = {n.name: n for n in await client.list_nodes()}
        assert (nodes["plain"].pool, nodes["gpu"].pool) == ("default", "gpu")
        for _ in range(3):
            done = await client.run(argv=["true"], pool="gpu")
            assert done.task.node_id == nodes["gpu"].id
        pools = {p.name: p for p in await client.admin.list_pools()}
        assert (pools["gpu"].nodes, pools["gpu"].online) == (1, 1)
    with pytest.raises(NotFound, match="no pool 'nope'"):
        await client.submit(argv=["true"], pool="nope")
    with pytest.raises(NotFound, match="create it first"):
        await client.create_join_token(pool="nope")


async def test_a_node_serves_only_its_own_tenants_tasks(hub: Hub, client: Client,
                                                        tmp_path: Path) -> None:
    """Tenant beta's task waits while only acme has a node, and says why."""
    async with tenant_client(hub, client, "acme") as acme, \
            tenant_client(hub, client, "beta") as beta, \
            running_node(hub, tmp_path / "acme-node", tenant="acme"):
        assert (await acme.run(argv=["true"])).ok
        waiting = await beta.submit(argv=["true"])
        task = await beta.get(waiting.id)
        assert task.state == TaskState.QUEUED
        assert "no node is connected" in task.reason
        assert await beta.list_nodes() == []
        with pytest.raises(NotFound):
            await acme.get(waiting.id)


async def test_api_tokens_are_listed_and_a_revoked_one_stops_at_once(
        hub: Hub, client: Client) -> None:
    """token ls shows the tenant's tokens (no secrets); revoke cuts one off immediately."""
    async with tenant_client(hub, client, "acme") as acme:
        made = await acme.admin.create_api_token("ci", role="agent", ttl="1h")
        assert made.secret.startswith(f"ctk_{made.token.id}.")
        listed = {t.id: t for t in await acme.admin.list_api_tokens()}
        assert listed[made.token.id].role == "agent"
        assert listed[made.token.id].expires_at > 0
        assert hub.ca is not None
        async with Client(ClientConfig(address=hub.address, token=made.secret,
                                       ca_pem=hub.ca.cert_pem)) as ci:
            await ci.list_tasks()
            await acme.admin.revoke_api_token(made.token.id)
            with pytest.raises(PermissionDenied, match="revoked"):
                await ci.list_tasks()
        with pytest.raises(PermissionDenied, match="only a hub-admin"):
            await acme.admin.list_pools(tenant="default")


async def test_a_shared_pool_is_split_between_tenants_by_weight(
        hub: Hub, client: Client, tmp_path: Path) -> None:
    """A pool of tenant default shared with heavy (weight 3) and light (weight 1): its one
    4-slot node, connecting to a queue of both tenants' work, starts 3 heavy and 1 light
    task; each tenant sees only its own tasks, and the node stays default's."""
    async with tenant_client(hub, client, "heavy", weight=3.0) as heavy, \
            tenant_client(hub, client, "light", weight=1.0) as light:
        pool = await client.admin.create_pool("shared", shared_with=["heavy", "light"])
        assert list(pool.shared_with) == ["heavy", "light"]
        ids: dict[str, list[str]] = {"heavy": [], "light": []}
        for name, tenant in (("heavy", heavy), ("light", light)):
            for _ in range(6):
                ids[name].append((await tenant.submit(argv=[PY, "-c", FOREVER])).id)
        async with running_node(hub, tmp_path / "shared", pool="shared", slots=4):
            async def running() -> dict[str, int] | None:
                counts = {"heavy": 0, "light": 0}
                for name, t in (("heavy", heavy), ("light", light)):
                    for i in ids[name]:
                        counts[name] += (await t.get(i)).state == TaskState.RUNNING
                return counts if sum(counts.values()) == 4 else None
            assert await eventually(running, "4 tasks running") == {"heavy": 3, "light": 1}
            assert await heavy.list_nodes() == []
            assert len(await client.list_nodes()) == 1
            with pytest.raises(NotFound):
                await light.get(ids["heavy"][0])
            for name, t in (("heavy", heavy), ("light", light)):
                for i in ids[name]:
                    await t.cancel(i)
    with pytest.raises(NotFound, match="no tenant 'ghost'"):
        await client.admin.create_pool("p2", shared_with=["ghost"])


async def test_nodes_report_gpus_and_tasks_wanting_more_than_any_node_say_so(
        hub: Hub, client: Client, tmp_path: Path) -> None:
    """A node started with gpus=2 reports them; a 1-GPU task runs there; a 3-GPU task
    waits with a reason naming the largest node."""
    async with running_node(hub, tmp_path / "n", gpus=2):
        (node,) = await client.list_nodes()
        assert node.capacity.gpus == 2
        assert (await client.run(argv=["true"], gpus=1)).ok
        big = await client.submit(argv=["true"], gpus=3)
        reason = await eventually(lambda: _reason_if(client, big.id, "no matching node"),
                                  "the 3-GPU task's reason")
        assert reason == "no matching node has 3 GPUs (the most any has is 2)"
        await client.cancel(big.id)
