"""gRPC servicers: authenticate, validate, translate, and hand over to the task manager."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex._proto.cortex.v1 import (
    enroll_pb2,
    enroll_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from cortex.core import states
from cortex.core.states import State
from cortex.core.validation import check_labels
from cortex.errors import Conflict, CortexError, InvalidArgument, NotFound
from cortex.hub._grpc_errors import Ctx, streaming, unary
from cortex.hub._tracing import submit_span
from cortex.hub.access import authorize
from cortex.hub.auth import (
    Authenticator,
    Principal,
    hash_secret,
    issue_join_token,
    parse_join_token,
)
from cortex.hub.config import HubConfig
from cortex.hub.ids import new_id
from cortex.hub.nodes import NodeSessions
from cortex.hub.pki import CertificateAuthority
from cortex.hub.registry import Registry
from cortex.hub.tasks import TaskManager
from cortex.store.base import DEFAULT_POOL, CertificateRecord, Store, TaskQuery

__all__ = ["EnrollServicer", "NodeServicer", "TaskServicer"]

log = logging.getLogger("cortex.hub")

_SERVICE = "/cortex.v1.TaskService/"


async def authenticated(auth: Authenticator, context: Ctx, method: str) -> Principal:
    """The caller's principal, if its token is valid and its role may call `method`."""
    metadata = tuple((k, v) for k, v in context.invocation_metadata() or ())
    principal = await auth.authenticate(metadata, now=time.time(), mono=time.monotonic())
    authorize(method, principal.role)
    return principal


class TaskServicer(tasks_pb2_grpc.TaskServiceServicer):
    def __init__(self, *, tasks: TaskManager, registry: Registry, store: Store,
                 auth: Authenticator, ca: CertificateAuthority, config: HubConfig) -> None:
        self._tasks = tasks
        self._registry = registry
        self._store = store
        self._auth = auth
        self._ca = ca
        self._config = config

    async def _principal(self, context: Ctx, rpc: str) -> Principal:
        return await authenticated(self._auth, context, _SERVICE + rpc)

    @unary
    async def Submit(self, request: tasks_pb2.SubmitRequest,
                     context: Ctx) -> tasks_pb2.SubmitResponse:
        who = await self._principal(context, "Submit")
        with submit_span(context, who.tenant, [request.spec]) as span:
            task, created = await self._tasks.submit(who.tenant, request.spec)
            if span is not None:
                span.set_attribute("cortex.task_id", task.id)
        return tasks_pb2.SubmitResponse(task=task, created=created)

    @unary
    async def SubmitMany(self, request: tasks_pb2.SubmitManyRequest,
                         context: Ctx) -> tasks_pb2.SubmitManyResponse:
        who = await self._principal(context, "SubmitMany")
        with submit_span(context, who.tenant, request.specs):
            results = await self._tasks.submit_many(who.tenant, list(request.specs))
        return tasks_pb2.SubmitManyResponse(tasks=[t for t, _ in results],
                                            created=[c for _, c in results])

    @streaming
    async def WaitTasks(self, request: tasks_pb2.WaitTasksRequest,
                        context: Ctx) -> AsyncIterator[tasks_pb2.WaitTasksResponse]:
        who = await self._principal(context, "WaitTasks")
        ids = [_id(t) for t in request.task_ids]
        async for batch in self._tasks.wait_tasks(who.tenant, ids):
            yield tasks_pb2.WaitTasksResponse(tasks=batch)

    @streaming
    async def Run(self, request: tasks_pb2.SubmitRequest,
                  context: Ctx) -> AsyncIterator[tasks_pb2.RunResponse]:
        who = await self._principal(context, "Run")
        with submit_span(context, who.tenant, [request.spec]) as span:
            task, created = await self._tasks.submit(who.tenant, request.spec)
            if span is not None:
                span.set_attribute("cortex.task_id", task.id)
        submitted = tasks_pb2.RunResponse(submitted=tasks_pb2.SubmitResponse(task=task,
                                                                             created=created))
        if not request.batch_events:
            yield submitted
            events = self._tasks.watch(who.tenant, task.id, after_seq=0, follow=True)
            async with contextlib.aclosing(events):
                async for ev in events:
                    yield tasks_pb2.RunResponse(event=ev)
            yield tasks_pb2.RunResponse(finished=await self._full_task(who.tenant, task.id))
            return
        # Batched: the first events ride with `submitted` (they are there already), and the
        # events that end the task with `finished` - a short task costs three messages.
        pending: tasks_pb2.RunResponse | None = submitted
        batches = self._tasks.watch_batches(who.tenant, task.id, after_seq=0, follow=True)
        try:
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    msg, pending = pending or tasks_pb2.RunResponse(), None
                    msg.events.extend(batch)
                    if _ends_task(batch[-1]):
                        pending = msg  # the stream ends now: `finished` goes with these
                    else:
                        yield msg
        except CortexError:
            if pending is not None:  # the task was accepted: say so before failing the call
                yield pending
            raise
        msg = pending or tasks_pb2.RunResponse()
        msg.finished.CopyFrom(await self._full_task(who.tenant, task.id))
        yield msg

    @unary
    async def Get(self, request: tasks_pb2.GetTaskRequest,
                  context: Ctx) -> pb.Task:
        who = await self._principal(context, "Get")
        return await self._full_task(who.tenant, _id(request.task_id))

    async def _full_task(self, tenant: str, task_id: str) -> pb.Task:
        """The task as Get answers it: with its attempts and its files."""
        # Together, so both reads land in the store's same batch (one round trip).
        task, files = await asyncio.gather(
            self._tasks.get(tenant, task_id, with_attempts=True),
            self._store.list_artifacts(tenant, task_id=task_id, limit=1000))
        task.files.extend(files)
        return task

    @unary
    async def List(self, request: tasks_pb2.ListTasksRequest,
                   context: Ctx) -> tasks_pb2.ListTasksResponse:
        who = await self._principal(context, "List")
        limit = request.limit or 100
        if limit > 1000:
            raise InvalidArgument("limit: at most 1000 tasks per page")
        problems = check_labels(request.labels)
        if problems:
            raise InvalidArgument("; ".join(problems))
        tasks = await self._tasks.list_tasks(who.tenant, TaskQuery(
            states=list(request.states), node_id=request.node_id, labels=dict(request.labels),
            limit=limit, after_id=request.page_token))
        token = tasks[-1].id if len(tasks) == limit else ""
        return tasks_pb2.ListTasksResponse(tasks=tasks, next_page_token=token)

    @streaming
    async def Watch(self, request: tasks_pb2.WatchRequest,
                    context: Ctx) -> AsyncIterator[pb.TaskEvent]:
        who = await self._principal(context, "Watch")
        # aclosing: when the client goes away the watch must end now (it counts followers
        # for cancel_on_disconnect), not whenever the abandoned generator is collected.
        events = self._tasks.watch(who.tenant, _id(request.task_id),
                                   after_seq=request.after_seq, follow=request.follow)
        async with contextlib.aclosing(events):
            async for ev in events:
                yield ev

    @unary
    async def Cancel(self, request: tasks_pb2.CancelRequest,
                     context: Ctx) -> pb.Task:
        who = await self._principal(context, "Cancel")
        if len(request.reason) > 1024:
            raise InvalidArgument("reason: at most 1024 characters")
        return await self._tasks.cancel(who.tenant, _id(request.task_id), request.reason)

    @streaming
    async def Attach(self, request_iterator: AsyncIterator[tasks_pb2.AttachRequest],
                     context: Ctx) -> AsyncIterator[pb.TaskEvent]:
        who = await self._principal(context, "Attach")
        it = aiter(request_iterator)
        try:
            first = await anext(it)
        except StopAsyncIteration:
            return
        task_id = _id(first.task_id)
        await self._tasks.get(who.tenant, task_id)
        async with asyncio.TaskGroup() as tg:
            pump = tg.create_task(self._pump_stdin(who.tenant, task_id, first, it))
            events = self._tasks.watch(who.tenant, task_id, after_seq=first.after_seq,
                                       follow=True)
            async with contextlib.aclosing(events):
                async for ev in events:
                    yield ev
            pump.cancel()

    async def _pump_stdin(self, tenant: str, task_id: str, first: tasks_pb2.AttachRequest,
                          rest: AsyncIterator[tasks_pb2.AttachRequest]) -> None:
        """Forward input until the client stops sending or the task stops running; input
        for a finished task has nowhere to go and is dropped (the events say it ended)."""
        try:
            await self._forward(tenant, task_id, first)
            async for req in rest:
                await self._forward(tenant, task_id, req)
        except Conflict:
            return
        except grpc.aio.AioRpcError:
            return  # the client went away; the watch side ends with the call

    async def _forward(self, tenant: str, task_id: str, req: tasks_pb2.AttachRequest) -> None:
        if req.stdin or req.eof:
            await self._tasks.stdin(tenant, task_id, node_pb2.HubMessage(
                stdin=node_pb2.Stdin(data=req.stdin, eof=req.eof)))
        if req.rows and req.cols:
            await self._tasks.stdin(tenant, task_id, node_pb2.HubMessage(
                resize=node_pb2.Resize(rows=req.rows, cols=req.cols)))

    @unary
    async def ListNodes(self, request: tasks_pb2.ListNodesRequest,
                        context: Ctx) -> tasks_pb2.ListNodesResponse:
        who = await self._principal(context, "ListNodes")
        out = []
        for node in await self._store.list_nodes(who.tenant):
            conn = self._registry.get(node.id)
            if conn is not None and conn.tenant == who.tenant:
                node.CopyFrom(conn.node)
                node.running_tasks = len(conn.running)
            elif node.state in (pb.ONLINE, pb.DRAINING) and not self._store.shared:
                # (With several hubs the row says: another hub serves it, and marks it
                # offline when it leaves or its lease is taken over.)
                node.state = pb.OFFLINE
            if request.skill and request.skill not in node.skills:
                continue
            if any(node.labels.get(k) != v for k, v in request.labels.items()):
                continue
            if request.states and node.state not in request.states:
                continue
            out.append(node)
        return tasks_pb2.ListNodesResponse(nodes=out)

    @unary
    async def CreateJoinToken(self, request: tasks_pb2.CreateJoinTokenRequest,
                              context: Ctx
                              ) -> tasks_pb2.CreateJoinTokenResponse:
        who = await self._principal(context, "CreateJoinToken")
        problems = check_labels(request.labels)
        if problems:
            raise InvalidArgument("; ".join(problems))
        pool = request.pool or DEFAULT_POOL
        if await self._store.get_pool(who.tenant, pool) is None:
            raise NotFound(f"no pool {pool!r} in tenant {who.tenant!r}: create it first "
                           f"with `cortex pool create {pool}`")
        token, expires = await issue_join_token(
            self._store, tenant=who.tenant, labels=dict(request.labels), now=time.time(),
            ttl_s=request.ttl_s or 3600.0, fingerprint=self._ca.fingerprint, pool=pool)
        return tasks_pb2.CreateJoinTokenResponse(token=token, expires_at=expires)


class EnrollServicer(enroll_pb2_grpc.EnrollServiceServicer):
    def __init__(self, *, store: Store, ca: CertificateAuthority, config: HubConfig,
                 node_port: Callable[[], int]) -> None:
        self._store = store
        self._ca = ca
        self._config = config
        self._node_port = node_port

    @unary
    async def GetTrustBundle(self, request: enroll_pb2.GetTrustBundleRequest,
                             context: Ctx) -> enroll_pb2.TrustBundle:
        return enroll_pb2.TrustBundle(ca_pem=self._ca.cert_pem)

    @unary
    async def Enroll(self, request: enroll_pb2.EnrollRequest,
                     context: Ctx) -> enroll_pb2.EnrollResponse:
        token_id, secret, _ = parse_join_token(request.token)
        if len(request.name) > 128:
            raise InvalidArgument("name: at most 128 characters")
        node_id = new_id("n")
        now = time.time()
        # Check the CSR before burning the token, so a bad CSR does not cost a token.
        chain, cert = self._ca.sign_node_csr(
            request.csr_pem, tenant="_", node_id=node_id,
            now=dt.datetime.now(dt.UTC), ttl=dt.timedelta(seconds=1))
        rec = await self._store.consume_join_token(token_id, hash_secret(secret),
                                                   node_id=node_id, now=now)
        pool = rec.pool or DEFAULT_POOL   # the join token names the pool; the CSR cannot
        chain, cert = self._ca.sign_node_csr(
            request.csr_pem, tenant=rec.tenant, node_id=node_id, pool=pool,
            now=dt.datetime.now(dt.UTC), ttl=dt.timedelta(seconds=self._config.node_cert_ttl_s))
        await self._store.record_issued_certificate(rec.tenant, CertificateRecord(
            serial=format(cert.serial_number, "x"), tenant=rec.tenant, node_id=node_id,
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(), issuer=self._ca.node_issuer,
            pool=pool))
        await self._store.upsert_node(rec.tenant, pb.Node(
            id=node_id, tenant=rec.tenant, name=request.name or node_id, labels=rec.labels,
            enrolled_labels=rec.labels, pool=rec.pool,
            state=pb.OFFLINE, cert_not_after=cert.not_valid_after_utc.timestamp()))
        log.info("enrolled node %s (%s) into tenant %s, pool %s", node_id, request.name,
                 rec.tenant, rec.pool)
        return enroll_pb2.EnrollResponse(node_id=node_id, certificate_pem=chain,
                                         ca_pem=self._ca.cert_pem, tenant=rec.tenant,
                                         labels=rec.labels, node_port=self._node_port(),
                                         node_address=self._config.public_node_address)


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, sessions: NodeSessions) -> None:
        self._sessions = sessions

    async def Connect(self, request_iterator: AsyncIterator[node_pb2.NodeMessage],
                      context: Ctx) -> AsyncIterator[node_pb2.HubMessage]:
        async for msg in self._sessions.serve(request_iterator, context):
            yield msg


def _ends_task(ev: pb.TaskEvent) -> bool:
    """Whether `ev` finishes its task (a retry would follow it with QUEUED, in the same
    batch: then it is not the batch's last event)."""
    return ev.HasField("state") and states.is_terminal(State(ev.state.state))


def _id(value: str) -> str:
    if not value or len(value) > 128 or not value.isascii():
        raise InvalidArgument("task_id: give a task id such as t-0123456789abcdefghij")
    return value
