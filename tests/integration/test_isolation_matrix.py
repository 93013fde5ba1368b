"""The tenant isolation matrix: every RPC and HTTP endpoint, called as every kind of caller.

Tenant ``acme`` owns a node, a finished task, pools and tokens. Each endpoint is called as:
each role of acme (admin, operator, agent, viewer), the hub's bootstrap hub-admin (its home
tenant is ``default``), the admin of another tenant, no token, an expired acme token and a
revoked acme token. `EXPECTED` writes down the outcome of every cell: the gRPC status
name (or HTTP status), and for listings whether acme's resource was visible (``OK:sees``)
or not (``OK:blind``).

Completeness is checked, not hoped for: the RPCs of every service the hub serves are read
from the protocol descriptors and the HTTP routes from the app, so a new endpoint without
a row here — or a row without a cell for some caller — fails `test_matrix_is_complete`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx2
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.routing import Mount

from cortex._proto.cortex.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    artifacts_pb2,
    artifacts_pb2_grpc,
    enroll_pb2,
    enroll_pb2_grpc,
    pki_pb2,
    pki_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.hub.access import ACCESS
from cortex.hub.auth import issue_api_token, issue_api_token_record
from cortex.hub.http._app import build_app
from cortex.hub.server import Hub
from cortex.hub.web import Dashboard
from cortex.sdk import Client, ClientConfig
from cortex.store.base import TenantRecord
from cortex.testing import running_hub, running_node

CALLERS = ("admin", "operator", "agent", "viewer", "hub-admin", "other", "none", "expired",
           "revoked")
ACME = "acme"
SESSION = "s-matrix"

# Served on the client port; the node port (NodeService) takes no API token at all: a node
# authenticates by its certificate (see tests/integration/test_tasks.py and the PKI tests).
SERVICES = {
    "cortex.v1.TaskService": tasks_pb2.DESCRIPTOR,
    "cortex.v1.AdminService": admin_pb2.DESCRIPTOR,
    "cortex.v1.EnrollService": enroll_pb2.DESCRIPTOR,
    "cortex.v1.ArtifactService": artifacts_pb2.DESCRIPTOR,
    "cortex.v1.PkiService": pki_pb2.DESCRIPTOR,
    "cortex.v1.NodeCertService": pki_pb2.DESCRIPTOR,
    "grpc.health.v1.Health": health_pb2.DESCRIPTOR,
}
# Endpoints that take no API token by design, and why (their rows still have every cell).
PUBLIC = {
    "/cortex.v1.EnrollService/GetTrustBundle": "the CA bundle; a joining node pins it",
    "/cortex.v1.EnrollService/Enroll": "authenticated by the join token in the request",
    "/cortex.v1.NodeCertService/Renew": "needs the node's certificate (node port, mTLS)",
    "/cortex.v1.NodeCertService/Reenroll": "authenticated by the expired certificate and "
                                           "a signature of its key",
    "/grpc.health.v1.Health/Check": "load balancers probe it",
    "/grpc.health.v1.Health/Watch": "load balancers probe it",
    "/grpc.health.v1.Health/List": "load balancers probe it",
    "GET /healthz": "liveness probe",
    "GET /readyz": "readiness probe",
    "GET /metrics": "Prometheus scrape (bind the HTTP port to the monitoring network)",
    "GET /ui/login": "the dashboard's login form",
    "GET /ui/static/{path}": "the dashboard's vendored htmx and CSS",
}

D, NF, OK, SEES, BLIND = "PERMISSION_DENIED", "NOT_FOUND", "OK", "OK:sees", "OK:blind"
ANON = (D, D, D)             # none, expired, revoked
_ALL_OK = (OK,) * 9


def row(*cells: str) -> dict[str, str]:
    assert len(cells) == len(CALLERS), cells
    return dict(zip(CALLERS, cells, strict=True))


#                       admin operator agent viewer hub-admin other  none/expired/revoked
EXPECTED: dict[str, dict[str, str]] = {
    "/cortex.v1.TaskService/Submit": row(OK, OK, OK, D, OK, OK, *ANON),
    "/cortex.v1.TaskService/SubmitMany": row(OK, OK, OK, D, OK, OK, *ANON),
    "/cortex.v1.TaskService/Run": row(OK, OK, OK, D, OK, OK, *ANON),
    "/cortex.v1.TaskService/Get": row(OK, OK, OK, OK, NF, NF, *ANON),
    "/cortex.v1.TaskService/List": row(SEES, SEES, SEES, SEES, BLIND, BLIND, *ANON),
    "/cortex.v1.TaskService/Watch": row(OK, OK, OK, OK, NF, NF, *ANON),
    "/cortex.v1.TaskService/Cancel": row(OK, OK, OK, D, NF, NF, *ANON),
    "/cortex.v1.TaskService/WaitTasks": row(OK, OK, OK, OK, NF, NF, *ANON),
    "/cortex.v1.TaskService/Attach": row(OK, OK, OK, D, NF, NF, *ANON),
    "/cortex.v1.TaskService/ListNodes": row(SEES, SEES, SEES, SEES, BLIND, BLIND, *ANON),
    "/cortex.v1.TaskService/CreateJoinToken": row(OK, OK, D, D, OK, OK, *ANON),
    "/cortex.v1.AdminService/CreateTenant": row(D, D, D, D, OK, D, *ANON),
    "/cortex.v1.AdminService/ListTenants": row(D, D, D, D, SEES, D, *ANON),
    "/cortex.v1.AdminService/SetTenantLimits": row(D, D, D, D, OK, D, *ANON),
    "/cortex.v1.AdminService/GetTenant": row(OK, OK, OK, OK, OK, D, *ANON),
    "/cortex.v1.AdminService/CreatePool": row(OK, D, D, D, OK, D, *ANON),
    "/cortex.v1.AdminService/ListPools": row(SEES, SEES, SEES, SEES, SEES, D, *ANON),
    "/cortex.v1.AdminService/CreateApiToken": row(OK, D, D, D, OK, D, *ANON),
    "/cortex.v1.AdminService/ListApiTokens": row(SEES, D, D, D, SEES, D, *ANON),
    "/cortex.v1.AdminService/RevokeApiToken": row(OK, D, D, D, OK, D, *ANON),
    "/cortex.v1.ArtifactService/Write": row(OK, OK, OK, D, OK, OK, *ANON),
    # An upload id is per tenant: another tenant (or the hub-admin's) has no such upload.
    "/cortex.v1.ArtifactService/QueryWriteStatus": row(OK, OK, OK, D, NF, NF, *ANON),
    "/cortex.v1.ArtifactService/Read": row(OK, OK, OK, OK, NF, NF, *ANON),
    "/cortex.v1.ArtifactService/Stat": row(OK, OK, OK, OK, NF, NF, *ANON),
    "/cortex.v1.ArtifactService/List": row(SEES, SEES, SEES, SEES, BLIND, BLIND, *ANON),
    "/cortex.v1.ArtifactService/Delete": row(OK, OK, OK, D, NF, NF, *ANON),
    # Authorised acme callers revoke an unknown node (NOT_FOUND: revoking the matrix's own
    # node would end the run); the others aim at acme's real node and must not reach it.
    "/cortex.v1.PkiService/RevokeNode": row(NF, NF, D, D, NF, NF, *ANON),
    "/cortex.v1.PkiService/CaStatus": row(OK, D, D, D, OK, OK, *ANON),
    "/cortex.v1.PkiService/RotateCa": row(D, D, D, D, OK, D, *ANON),
    "/cortex.v1.NodeCertService/Renew": row(*(D,) * 9),
    "/cortex.v1.NodeCertService/Reenroll": row(*("INVALID_ARGUMENT",) * 9),
    "/cortex.v1.EnrollService/GetTrustBundle": row(*_ALL_OK),
    "/cortex.v1.EnrollService/Enroll": row(*("INVALID_ARGUMENT",) * 9),
    "/grpc.health.v1.Health/Check": row(*_ALL_OK),
    "/grpc.health.v1.Health/Watch": row(*_ALL_OK),
    # grpcio-health-checking's servicer leaves List unimplemented; it says so to everyone.
    "/grpc.health.v1.Health/List": row(*("UNIMPLEMENTED",) * 9),
    "GET /healthz": row(*("200",) * 9),
    "GET /readyz": row(*("200",) * 9),
    "GET /metrics": row(*("200",) * 9),
    # The dashboard: each caller logs in with its token; pages need the session cookie
    # (303 to the login page without one), actions a CSRF token too (401 without a session).
    "GET /": row(*("307",) * 9),
    "GET /ui": row(*("307",) * 9),
    "GET /ui/": row(*("303",) * 9),
    "GET /ui/login": row(*("200",) * 9),
    "POST /ui/login": row("303", "303", "303", "303", "303", "303", "401", "401", "401"),
    "POST /ui/logout": row("303", "303", "303", "303", "303", "303", "401", "401", "401"),
    "GET /ui/nodes": row(SEES, SEES, SEES, SEES, BLIND, BLIND, "303", "303", "303"),
    "GET /ui/tasks": row(SEES, SEES, SEES, SEES, BLIND, BLIND, "303", "303", "303"),
    "GET /ui/tasks/{task_id}": row("200", "200", "200", "200", "404", "404", "303", "303",
                                   "303"),
    "GET /ui/tasks/{task_id}/events": row("200", "200", "200", "200", "404", "404", "401",
                                          "401", "401"),
    "GET /ui/tasks/{task_id}/files/{artifact_id}": row("200", "200", "200", "200", "404",
                                                       "404", "303", "303", "303"),
    "POST /ui/tasks/{task_id}/cancel": row("303", "303", "303", "403", "404", "404", "401",
                                           "401", "401"),
    "POST /ui/tasks/{task_id}/retry": row("303", "303", "303", "403", "404", "404", "401",
                                          "401", "401"),
    # A session of acme's (pinned in the store) is listed for acme's callers only; the
    # live view answers 404 to all (it is not recording; other tenants: no such session).
    "GET /ui/sessions": row(SEES, SEES, SEES, SEES, BLIND, BLIND, "303", "303", "303"),
    "GET /ui/sessions/{session_id:path}/live": row("404", "404", "404", "404", "404",
                                                   "404", "303", "303", "303"),
    # Each admin sees its own tenant's section ("other" sees only tenant other's); the
    # hub-admin sees every tenant's, acme's included.
    "GET /ui/tenant": row(SEES, "403", "403", "403", SEES, BLIND, "303", "303", "303"),
    # Changing limits is SetTenantLimits' business: hub-admin only.
    "POST /ui/tenant/limits": row("403", "403", "403", "403", "303", "403", "401", "401",
                                  "401"),
    "GET /ui/static/{path}": row(*("200",) * 9),
    # MCP over streamable HTTP: list_nodes bound by the caller's token.
    "DELETE|GET|POST /mcp": row(SEES, SEES, SEES, SEES, BLIND, BLIND, "401", "401", "401"),
}


def served_rpcs() -> set[str]:
    out = set()
    for name, file in SERVICES.items():
        service = file.services_by_name[name.rsplit(".", 1)[-1]]
        out |= {f"/{name}/{m.name}" for m in service.methods}
    return out


def http_routes() -> set[str]:
    """Every route of the hub's HTTP app, dashboard included ("METHODS /path")."""
    dashboard = Dashboard(tasks=None, registry=None, store=None)  # type: ignore[arg-type]
    app = build_app(ready=lambda: True, metrics=str, mcp=_NoApp(), dashboard=dashboard.routes())
    return set(_flatten(app.routes, ""))


def _flatten(routes: Any, prefix: str) -> Iterator[str]:
    for r in routes:
        if isinstance(r, Mount):
            if r.routes:
                yield from _flatten(r.routes, prefix + r.path)
            else:   # static files
                yield f"GET {prefix}{r.path}/{{path}}"
        else:
            yield f"{'|'.join(sorted(r.methods - {'HEAD'}))} {prefix}{r.path}"


class _NoApp:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("never called")


def test_matrix_is_complete() -> None:
    """Every served RPC and HTTP route has a row, every row a cell for every caller, and
    every authenticated RPC an access rule (and nothing in the table that is not served)."""
    endpoints = served_rpcs() | http_routes()
    assert set(EXPECTED) == endpoints, (
        f"missing rows: {sorted(endpoints - set(EXPECTED))}; "
        f"rows for nothing served: {sorted(set(EXPECTED) - endpoints)}")
    for name, cells in EXPECTED.items():
        assert tuple(cells) == CALLERS, f"{name}: cells for {tuple(cells)}"
    authenticated = {r for r in served_rpcs() if r not in PUBLIC}
    assert set(ACCESS) == authenticated


# -- the world the matrix runs in ---------------------------------------------------------

@dataclass
class World:
    hub: Hub
    tokens: dict[str, str]
    finished_task: str
    node_id: str
    acme_token_id: str
    channel: grpc.aio.Channel
    http: httpx2.AsyncClient
    artifact_id: str = ""
    task_artifact: str = ""     # an artifact of finished_task
    ui: dict[str, httpx2.AsyncClient] = field(default_factory=dict)
    counter: list[int] = field(default_factory=lambda: [0])

    def unique(self, prefix: str) -> str:
        self.counter[0] += 1
        return f"{prefix}-{self.counter[0]}"

    def md(self, caller: str) -> tuple[tuple[str, str], ...]:
        token = self.tokens.get(caller)
        return (("authorization", f"Bearer {token}"),) if token else ()


@contextlib.asynccontextmanager
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with running_hub(tmp_path / "hub") as hub:
        assert hub.ca is not None
        now = time.time()
        await hub.store.create_tenant(TenantRecord(ACME, now))
        await hub.store.create_tenant(TenantRecord("other", now))
        hub.tasks.set_limits(ACME, weight=1.0, quota=_no_quota())
        tokens = {"hub-admin": hub.admin_token}
        for role in ("admin", "operator", "agent", "viewer"):
            tokens[role] = await issue_api_token(hub.store, tenant=ACME, role=role,
                                                 name=role, now=now)
        tokens["other"] = await issue_api_token(hub.store, tenant="other", role="admin",
                                                name="other", now=now)
        tokens["expired"], _ = await issue_api_token_record(
            hub.store, tenant=ACME, role="admin", name="expired", now=now - 100, ttl_s=10)
        tokens["revoked"], rec = await issue_api_token_record(
            hub.store, tenant=ACME, role="admin", name="revoked", now=now)
        await hub.store.revoke_api_token(ACME, rec.id, now=now)
        async with running_node(hub, tmp_path / "acme-node", tenant=ACME):
            (conn,) = hub.registry.all()
            node_id = conn.node_id
            await hub.store.pin_session(ACME, SESSION, node_id, now=now)
            config = ClientConfig(address=hub.address, token=tokens["admin"],
                                  ca_pem=hub.ca.cert_pem)
            async with Client(config) as acme:
                done = await acme.wait((await acme.submit(argv=["true"])).id)
                assert done.state == pb.SUCCEEDED
            creds = grpc.ssl_channel_credentials(root_certificates=hub.ca.cert_pem)
            channel = grpc.aio.secure_channel(
                hub.address, creds, options=[("grpc.ssl_target_name_override", "cortex-hub")])
            async with httpx2.AsyncClient() as http:
                try:
                    w = World(hub, tokens, done.id, node_id, rec.id, channel, http)
                    _, stored = await _upload(w, "admin")
                    w.artifact_id = stored.file.artifact_id
                    w.task_artifact = await _task_output(w, hub, tokens["admin"], tmp_path)
                    try:
                        yield w
                    finally:
                        for client in w.ui.values():
                            await client.aclose()
                finally:
                    await channel.close(None)


async def _task_output(w: World, hub: Hub, token: str, tmp_path: Path) -> str:
    """Make acme's finished task one with an output artifact; that artifact's id."""
    assert hub.ca is not None
    work = tmp_path / "work"
    work.mkdir()
    async with Client(ClientConfig(address=hub.address, token=token,
                                   ca_pem=hub.ca.cert_pem)) as acme:
        done = await acme.run(command="echo out > out.txt", cwd=str(work),
                              artifacts=["out.txt"])
    assert done.ok
    w.finished_task = done.task.id
    return done.files[0].artifact_id


def _no_quota() -> Any:
    from cortex.core.quota import Quota
    return Quota()


# -- one probe per endpoint: what happened, as a cell value --------------------------------

Probe = Callable[[World, str], Awaitable[str]]
PROBES: dict[str, Probe] = {}


def probe(name: str) -> Callable[[Probe], Probe]:
    def register(fn: Probe) -> Probe:
        PROBES[name] = fn
        return fn
    return register


async def _code(call: Awaitable[Any]) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return OK


def _sees(found: bool) -> str:
    return SEES if found else BLIND


def _tasks(w: World) -> Any:
    return tasks_pb2_grpc.TaskServiceStub(w.channel)


def _admin(w: World) -> Any:
    return admin_pb2_grpc.AdminServiceStub(w.channel)


_NOWHERE = pb.TaskSpec(skill="noop", labels={"nowhere": "1"})   # stays queued


@probe("/cortex.v1.TaskService/Submit")
async def _submit(w: World, c: str) -> str:
    return await _code(_tasks(w).Submit(tasks_pb2.SubmitRequest(spec=_NOWHERE), metadata=w.md(c)))


@probe("/cortex.v1.TaskService/SubmitMany")
async def _submit_many(w: World, c: str) -> str:
    return await _code(_tasks(w).SubmitMany(tasks_pb2.SubmitManyRequest(specs=[_NOWHERE]),
                                            metadata=w.md(c)))


@probe("/cortex.v1.TaskService/Run")
async def _run(w: World, c: str) -> str:
    async def first() -> None:
        # The first message is the stored task; the task stays queued, so stop there.
        call = _tasks(w).Run(tasks_pb2.SubmitRequest(spec=_NOWHERE), metadata=w.md(c))
        try:
            async for _ in call:
                return
        finally:
            call.cancel()
    return await _code(first())


@probe("/cortex.v1.TaskService/Get")
async def _get(w: World, c: str) -> str:
    return await _code(_tasks(w).Get(tasks_pb2.GetTaskRequest(task_id=w.finished_task),
                                     metadata=w.md(c)))


@probe("/cortex.v1.TaskService/List")
async def _list(w: World, c: str) -> str:
    try:
        resp = await _tasks(w).List(tasks_pb2.ListTasksRequest(limit=1000), metadata=w.md(c))
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return _sees(any(t.id == w.finished_task for t in resp.tasks))


@probe("/cortex.v1.TaskService/Watch")
async def _watch(w: World, c: str) -> str:
    async def drain() -> None:
        async for _ in _tasks(w).Watch(tasks_pb2.WatchRequest(task_id=w.finished_task),
                                       metadata=w.md(c)):
            pass
    return await _code(drain())


@probe("/cortex.v1.TaskService/Cancel")
async def _cancel(w: World, c: str) -> str:
    target = await _tasks(w).Submit(tasks_pb2.SubmitRequest(spec=_NOWHERE),
                                    metadata=w.md("admin"))
    return await _code(_tasks(w).Cancel(tasks_pb2.CancelRequest(task_id=target.task.id),
                                        metadata=w.md(c)))


@probe("/cortex.v1.TaskService/WaitTasks")
async def _wait_tasks(w: World, c: str) -> str:
    async def drain() -> None:
        async for _ in _tasks(w).WaitTasks(tasks_pb2.WaitTasksRequest(
                task_ids=[w.finished_task]), metadata=w.md(c)):
            pass
    return await _code(drain())


@probe("/cortex.v1.TaskService/Attach")
async def _attach(w: World, c: str) -> str:
    async def requests() -> AsyncIterator[tasks_pb2.AttachRequest]:
        yield tasks_pb2.AttachRequest(task_id=w.finished_task)

    async def drain() -> None:
        async for _ in _tasks(w).Attach(requests(), metadata=w.md(c)):
            pass
    return await _code(drain())


@probe("/cortex.v1.TaskService/ListNodes")
async def _list_nodes(w: World, c: str) -> str:
    try:
        resp = await _tasks(w).ListNodes(tasks_pb2.ListNodesRequest(), metadata=w.md(c))
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return _sees(any(n.id == w.node_id for n in resp.nodes))


@probe("/cortex.v1.TaskService/CreateJoinToken")
async def _join_token(w: World, c: str) -> str:
    return await _code(_tasks(w).CreateJoinToken(tasks_pb2.CreateJoinTokenRequest(ttl_s=60),
                                                 metadata=w.md(c)))


@probe("/cortex.v1.AdminService/CreateTenant")
async def _create_tenant(w: World, c: str) -> str:
    return await _code(_admin(w).CreateTenant(admin_pb2.CreateTenantRequest(
        id=w.unique("t")), metadata=w.md(c)))


@probe("/cortex.v1.AdminService/ListTenants")
async def _list_tenants(w: World, c: str) -> str:
    try:
        resp = await _admin(w).ListTenants(admin_pb2.ListTenantsRequest(), metadata=w.md(c))
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return _sees(any(t.id == ACME for t in resp.tenants))


@probe("/cortex.v1.AdminService/SetTenantLimits")
async def _set_limits(w: World, c: str) -> str:
    return await _code(_admin(w).SetTenantLimits(admin_pb2.SetTenantLimitsRequest(
        tenant=ACME, weight=1.0), metadata=w.md(c)))


@probe("/cortex.v1.AdminService/GetTenant")
async def _get_tenant(w: World, c: str) -> str:
    return await _code(_admin(w).GetTenant(admin_pb2.GetTenantRequest(tenant=ACME),
                                           metadata=w.md(c)))


@probe("/cortex.v1.AdminService/CreatePool")
async def _create_pool(w: World, c: str) -> str:
    return await _code(_admin(w).CreatePool(admin_pb2.CreatePoolRequest(
        tenant=ACME, name=w.unique("p")), metadata=w.md(c)))


@probe("/cortex.v1.AdminService/ListPools")
async def _list_pools(w: World, c: str) -> str:
    try:
        resp = await _admin(w).ListPools(admin_pb2.ListPoolsRequest(tenant=ACME),
                                         metadata=w.md(c))
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return _sees(any(p.tenant == ACME and p.nodes == 1 for p in resp.pools))


@probe("/cortex.v1.AdminService/CreateApiToken")
async def _create_token(w: World, c: str) -> str:
    return await _code(_admin(w).CreateApiToken(admin_pb2.CreateApiTokenRequest(
        tenant=ACME, name=w.unique("tok"), role="agent"), metadata=w.md(c)))


@probe("/cortex.v1.AdminService/ListApiTokens")
async def _list_tokens(w: World, c: str) -> str:
    try:
        resp = await _admin(w).ListApiTokens(admin_pb2.ListApiTokensRequest(tenant=ACME),
                                             metadata=w.md(c))
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return _sees(any(t.id == w.acme_token_id for t in resp.tokens))


@probe("/cortex.v1.AdminService/RevokeApiToken")
async def _revoke_token(w: World, c: str) -> str:
    victim = await _admin(w).CreateApiToken(admin_pb2.CreateApiTokenRequest(
        tenant=ACME, name=w.unique("victim"), role="viewer"), metadata=w.md("admin"))
    return await _code(_admin(w).RevokeApiToken(admin_pb2.RevokeApiTokenRequest(
        tenant=ACME, id=victim.token.id), metadata=w.md(c)))


def _artifacts(w: World) -> Any:
    return artifacts_pb2_grpc.ArtifactServiceStub(w.channel)


async def _upload(w: World, caller: str, *, finish: bool = True) -> tuple[str, Any]:
    upload_id = w.unique("upload")
    data = upload_id.encode()

    async def requests() -> AsyncIterator[artifacts_pb2.WriteRequest]:
        yield artifacts_pb2.WriteRequest(
            upload_id=upload_id, header=artifacts_pb2.WriteHeader(
                name=f"{upload_id}.txt", size=len(data) if finish else -1),
            write_offset=0, data=data, finish_write=finish,
            sha256=hashlib.sha256(data).hexdigest() if finish else "")

    resp = await _artifacts(w).Write(requests(), metadata=w.md(caller))
    return upload_id, resp


@probe("/cortex.v1.ArtifactService/Write")
async def _art_write(w: World, c: str) -> str:
    return await _code(_upload(w, c))


@probe("/cortex.v1.ArtifactService/QueryWriteStatus")
async def _art_query(w: World, c: str) -> str:
    upload_id, _ = await _upload(w, "admin", finish=False)
    return await _code(_artifacts(w).QueryWriteStatus(
        artifacts_pb2.QueryWriteStatusRequest(upload_id=upload_id), metadata=w.md(c)))


@probe("/cortex.v1.ArtifactService/Read")
async def _art_read(w: World, c: str) -> str:
    async def drain() -> None:
        async for _ in _artifacts(w).Read(artifacts_pb2.ReadRequest(
                artifact_id=w.artifact_id), metadata=w.md(c)):
            pass
    return await _code(drain())


@probe("/cortex.v1.ArtifactService/Stat")
async def _art_stat(w: World, c: str) -> str:
    return await _code(_artifacts(w).Stat(artifacts_pb2.StatArtifactRequest(
        artifact_id=w.artifact_id), metadata=w.md(c)))


@probe("/cortex.v1.ArtifactService/List")
async def _art_list(w: World, c: str) -> str:
    try:
        resp = await _artifacts(w).List(artifacts_pb2.ListArtifactsRequest(limit=1000),
                                        metadata=w.md(c))
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return _sees(any(f.artifact_id == w.artifact_id for f in resp.files))


@probe("/cortex.v1.ArtifactService/Delete")
async def _art_delete(w: World, c: str) -> str:
    _, victim = await _upload(w, "admin")
    return await _code(_artifacts(w).Delete(artifacts_pb2.DeleteArtifactRequest(
        artifact_id=victim.file.artifact_id), metadata=w.md(c)))


def _pki(w: World) -> Any:
    return pki_pb2_grpc.PkiServiceStub(w.channel)


@probe("/cortex.v1.PkiService/RevokeNode")
async def _revoke_node(w: World, c: str) -> str:
    target = "n-matrix-unknown" if c in ("admin", "operator") else w.node_id
    return await _code(_pki(w).RevokeNode(pki_pb2.RevokeNodeRequest(node_id=target),
                                          metadata=w.md(c)))


@probe("/cortex.v1.PkiService/CaStatus")
async def _ca_status(w: World, c: str) -> str:
    return await _code(_pki(w).CaStatus(pki_pb2.CaStatusRequest(), metadata=w.md(c)))


@probe("/cortex.v1.PkiService/RotateCa")
async def _rotate_ca(w: World, c: str) -> str:
    return await _code(_pki(w).RotateCa(pki_pb2.RotateCaRequest(), metadata=w.md(c)))


@probe("/cortex.v1.NodeCertService/Renew")
async def _renew(w: World, c: str) -> str:
    stub = pki_pb2_grpc.NodeCertServiceStub(w.channel)
    return await _code(stub.Renew(pki_pb2.RenewRequest(csr_pem=b"junk"), metadata=w.md(c)))


@probe("/cortex.v1.NodeCertService/Reenroll")
async def _reenroll(w: World, c: str) -> str:
    stub = pki_pb2_grpc.NodeCertServiceStub(w.channel)
    return await _code(stub.Reenroll(pki_pb2.ReenrollRequest(
        certificate_pem=b"junk", csr_pem=b"junk"), metadata=w.md(c)))


@probe("/cortex.v1.EnrollService/GetTrustBundle")
async def _trust_bundle(w: World, c: str) -> str:
    stub = enroll_pb2_grpc.EnrollServiceStub(w.channel)
    return await _code(stub.GetTrustBundle(enroll_pb2.GetTrustBundleRequest(),
                                           metadata=w.md(c)))


@probe("/cortex.v1.EnrollService/Enroll")
async def _enroll(w: World, c: str) -> str:
    # An API token gives no power here: without a valid CSR and join token, nobody enrolls.
    stub = enroll_pb2_grpc.EnrollServiceStub(w.channel)
    fake = f"cjt_{uuid.uuid4().hex[:16]}.secret#sha256:{'0' * 64}"
    return await _code(stub.Enroll(enroll_pb2.EnrollRequest(token=fake, csr_pem=b"junk"),
                                   metadata=w.md(c)))


@probe("/grpc.health.v1.Health/Check")
async def _health(w: World, c: str) -> str:
    stub = health_pb2_grpc.HealthStub(w.channel)
    return await _code(stub.Check(health_pb2.HealthCheckRequest(), metadata=w.md(c)))


@probe("/grpc.health.v1.Health/List")
async def _health_list(w: World, c: str) -> str:
    stub = health_pb2_grpc.HealthStub(w.channel)
    return await _code(stub.List(health_pb2.HealthListRequest(), metadata=w.md(c)))


@probe("/grpc.health.v1.Health/Watch")
async def _health_watch(w: World, c: str) -> str:
    async def first() -> None:
        call = health_pb2_grpc.HealthStub(w.channel).Watch(health_pb2.HealthCheckRequest(),
                                                           metadata=w.md(c))
        await call.read()
        call.cancel()
    return await _code(first())


def _http_get(path: str) -> Probe:
    async def get(w: World, c: str) -> str:
        assert w.hub.http_address is not None
        headers = {"Authorization": f"Bearer {w.tokens[c]}"} if c in w.tokens else {}
        res = await w.http.get(f"http://{w.hub.http_address}{path}", headers=headers)
        return str(res.status_code)
    return get


for _path in ("/healthz", "/readyz", "/metrics"):
    PROBES[f"GET {_path}"] = _http_get(_path)


@probe("DELETE|GET|POST /mcp")
async def _mcp(w: World, c: str) -> str:
    from mcp import Client as McpClient
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError

    assert w.hub.http_address is not None
    url = f"http://{w.hub.http_address}/mcp"
    headers = {"Authorization": f"Bearer {w.tokens[c]}"} if c in w.tokens else {}
    plain = await w.http.post(url, headers=headers, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    if plain.status_code == 401:
        return "401"
    text = "MCP_ERROR"
    with contextlib.suppress(MCPError):  # (an exception group: see below)
        async with httpx2.AsyncClient(headers=headers) as http:
            transport = streamable_http_client(url, http_client=http)
            async with McpClient(transport) as mcp:
                res = await mcp.call_tool("list_nodes", {})
                text = "".join(getattr(part, "text", "") for part in res.content)
    return text if text == "MCP_ERROR" else _sees(w.node_id in text)


# -- the dashboard: each caller logs in with its token (a session cookie), then calls ------

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def ui(w: World, caller: str) -> httpx2.AsyncClient:
    """A browser-like HTTP client of the dashboard, logged in as `caller` if it can be."""
    if caller in w.ui:
        return w.ui[caller]
    assert w.hub.http_address is not None
    base = f"http://{w.hub.http_address}"
    http = httpx2.AsyncClient(base_url=base, headers={"Origin": base})
    w.ui[caller] = http
    form = await http.get("/ui/login")
    (secret,) = _CSRF.findall(form.text)
    await http.post("/ui/login", data={"token": w.tokens.get(caller, ""), "csrf": secret})
    return http


async def _ui_csrf(http: httpx2.AsyncClient) -> str:
    page = await http.get("/ui/tasks")
    found = _CSRF.findall(page.text)
    return found[0] if found else "none"


def _ui_get(path: Callable[[World], str], *, sees: Callable[[World], str] | None = None
            ) -> Probe:
    async def get(w: World, c: str) -> str:
        res = await (await ui(w, c)).get(path(w))
        if sees is not None and res.status_code == 200:
            return _sees(sees(w) in res.text)
        return str(res.status_code)
    return get


def _ui_post(path: Callable[[World], Awaitable[str]]) -> Probe:
    async def post(w: World, c: str) -> str:
        http = await ui(w, c)
        res = await http.post(await path(w), data={"csrf": await _ui_csrf(http)})
        return str(res.status_code)
    return post


async def _queued_acme_task(w: World) -> str:
    sub = await _tasks(w).Submit(tasks_pb2.SubmitRequest(spec=_NOWHERE), metadata=w.md("admin"))
    return f"/ui/tasks/{sub.task.id}/cancel"


async def _fresh_login(w: World, c: str) -> str:
    assert w.hub.http_address is not None
    base = f"http://{w.hub.http_address}"
    async with httpx2.AsyncClient(base_url=base, headers={"Origin": base}) as http:
        form = await http.get("/ui/login")
        (secret,) = _CSRF.findall(form.text)
        res = await http.post("/ui/login", data={"token": w.tokens.get(c, ""), "csrf": secret})
        return str(res.status_code)


async def _logout(w: World, c: str) -> str:
    assert w.hub.http_address is not None
    base = f"http://{w.hub.http_address}"
    async with httpx2.AsyncClient(base_url=base, headers={"Origin": base}) as http:
        form = await http.get("/ui/login")
        (secret,) = _CSRF.findall(form.text)
        await http.post("/ui/login", data={"token": w.tokens.get(c, ""), "csrf": secret})
        res = await http.post("/ui/logout", data={"csrf": await _ui_csrf(http)})
        return str(res.status_code)


PROBES["GET /"] = _ui_get(lambda w: "/")
PROBES["GET /ui"] = _ui_get(lambda w: "/ui")
PROBES["GET /ui/"] = _ui_get(lambda w: "/ui/")
PROBES["GET /ui/login"] = _ui_get(lambda w: "/ui/login")
PROBES["POST /ui/login"] = _fresh_login
PROBES["POST /ui/logout"] = _logout
PROBES["GET /ui/nodes"] = _ui_get(lambda w: "/ui/nodes", sees=lambda w: w.node_id)
PROBES["GET /ui/tasks"] = _ui_get(lambda w: "/ui/tasks", sees=lambda w: w.finished_task)
PROBES["GET /ui/tasks/{task_id}"] = _ui_get(lambda w: f"/ui/tasks/{w.finished_task}")
PROBES["GET /ui/tasks/{task_id}/events"] = _ui_get(
    lambda w: f"/ui/tasks/{w.finished_task}/events")
PROBES["GET /ui/tasks/{task_id}/files/{artifact_id}"] = _ui_get(
    lambda w: f"/ui/tasks/{w.finished_task}/files/{w.task_artifact}")
PROBES["POST /ui/tasks/{task_id}/cancel"] = _ui_post(_queued_acme_task)


async def _retry_path(w: World) -> str:
    return f"/ui/tasks/{w.finished_task}/retry"


PROBES["POST /ui/tasks/{task_id}/retry"] = _ui_post(_retry_path)
PROBES["GET /ui/sessions"] = _ui_get(lambda w: "/ui/sessions", sees=lambda w: SESSION)
PROBES["GET /ui/sessions/{session_id:path}/live"] = _ui_get(
    lambda w: f"/ui/sessions/{SESSION}/live")
PROBES["GET /ui/tenant"] = _ui_get(lambda w: "/ui/tenant",
                                   sees=lambda w: f'id="tenant-{ACME}"')


async def _set_acme_limits(w: World, c: str) -> str:
    http = await ui(w, c)
    res = await http.post("/ui/tenant/limits", data={
        "csrf": await _ui_csrf(http), "tenant": ACME, "weight": "1", "tasks": "0"})
    return str(res.status_code)


PROBES["POST /ui/tenant/limits"] = _set_acme_limits
PROBES["GET /ui/static/{path}"] = _ui_get(lambda w: "/ui/static/htmx.min.js")


@pytest.mark.asyncio
async def test_every_endpoint_behaves_as_the_matrix_says_for_every_caller(
        tmp_path: Path) -> None:
    """Each cell of EXPECTED, called for real against a hub with two tenants."""
    assert set(PROBES) == set(EXPECTED), "every row needs a probe"
    got: dict[str, dict[str, str]] = {}
    async with world(tmp_path) as w:
        for name, fn in PROBES.items():
            got[name] = {caller: await fn(w, caller) for caller in CALLERS}
    wrong = [f"{name} as {caller}: expected {EXPECTED[name][caller]}, got {outcome}"
             for name, cells in got.items() for caller, outcome in cells.items()
             if EXPECTED[name][caller] != outcome]
    assert not wrong, "\n".join(wrong)
