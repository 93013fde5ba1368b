"""One node's stream: identify by certificate, hello, welcome, then reports and heartbeats.

The reader and the writer of the stream are two tasks owned by one TaskGroup; when either
ends (the node hung up, the hub shuts down, the node fell behind), both stop and the node
is marked gone — its tasks stay assigned until `lost_after` passes without it returning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex._proto.cortex.v1 import node_pb2
from cortex.errors import CortexError, PermissionDenied
from cortex.hub._grpc_errors import Ctx, status_for
from cortex.hub._tracing import on_send
from cortex.hub.config import HubConfig
from cortex.hub.pki import NodeIdentity, identity_from_pem
from cortex.hub.registry import NodeConn, Registry
from cortex.hub.tasks import TaskManager
from cortex.store.base import Store

__all__ = ["NodeSessions"]

log = logging.getLogger("cortex.hub.nodes")
_HELLO_TIMEOUT_S = 10.0
_PERSIST_EVERY_S = 10.0


class NodeSessions:
    def __init__(self, *, store: Store, registry: Registry, tasks: TaskManager,
                 config: HubConfig, monotonic: Callable[[], float] = time.monotonic,
                 admit: Callable[[NodeIdentity], Awaitable[None]] | None = None) -> None:
        self._store = store
        self._registry = registry
        self._tasks = tasks
        self._config = config
        self._monotonic = monotonic
        self._admit = admit  # refuses revoked nodes and unknown certificates

    async def serve(self, requests: AsyncIterator[node_pb2.NodeMessage],
                    context: Ctx) -> AsyncIterator[node_pb2.HubMessage]:
        try:
            ident = _identify(context)
            if self._admit is not None:
                await self._admit(ident)
            stored = await self._store.get_node(ident.tenant, ident.node_id)
            if stored is None:
                raise PermissionDenied(f"node {ident.node_id} is not enrolled on this hub")
            it = aiter(requests)
            first = await asyncio.wait_for(anext(it), _HELLO_TIMEOUT_S)
            if first.WhichOneof("kind") != "hello":
                raise PermissionDenied("the first message of a node stream must be hello")
        except CortexError as exc:
            await context.abort(status_for(exc), str(exc))
            return
        except (TimeoutError, StopAsyncIteration):
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no hello from the node")
            return
        conn = await self._open(ident, stored, first.hello)
        try:
            await self._tasks.adopt_node(conn)  # several hubs: its lease and its tasks
            yield node_pb2.HubMessage(welcome=node_pb2.Welcome(
                node_id=ident.node_id, hub_id=self._config.hub_id,
                heartbeat_interval_s=self._config.heartbeat_interval_s,
                held=self._tasks.held_status(conn, list(first.hello.held))))
            await self._tasks.after_welcome(conn, list(first.hello.held))
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._read(conn, it))
                while True:
                    msg = await _next_frame(conn.outbox)
                    if msg is None:
                        break
                    on_send(msg, conn.node_id)
                    yield msg
                reader.cancel()
        finally:
            await self._close(conn)

    async def _open(self, ident: NodeIdentity, stored: pb.Node, hello: node_pb2.Hello
                    ) -> NodeConn:
        node = pb.Node()
        node.CopyFrom(stored)
        node.name = hello.name or stored.name
        node.labels.clear()
        node.labels.update(dict(hello.labels))
        node.labels.update(dict(stored.enrolled_labels))  # labels from the join token win
        del node.skills[:]
        node.skills.extend(sorted(set(hello.skills)))
        node.capacity.CopyFrom(hello.capacity)
        node.limit_enforcement = hello.limit_enforcement
        node.version = hello.version
        node.state = pb.ONLINE
        node.connected_at = node.last_seen = time.time()
        node.hub_id = self._config.hub_id
        node.cert_not_after = ident.not_after
        slots = hello.capacity.slots or 16
        conn = NodeConn(ident.node_id, ident.tenant, node, slots, hello.boot_id)
        conn.heard_at = conn.persisted_at = self._monotonic()
        old = self._registry.attach(conn)
        if old is not None:
            old.close()
        await self._store.upsert_node(ident.tenant, _persisted(node))
        log.info("node %s (%s) connected: %d held tasks", ident.node_id, node.name,
                 len(hello.held))
        return conn

    async def _read(self, conn: NodeConn, it: AsyncIterator[node_pb2.NodeMessage]) -> None:
        try:
            async for msg in it:
                conn.heard_at = self._monotonic()
                frame = list(msg.batch.messages) if msg.WhichOneof("kind") == "batch" else [msg]
                # Reports of different tasks are applied concurrently (their store writes
                # share one commit); those of one task stay in order.
                by_task: dict[str, list[node_pb2.TaskReport]] = {}
                for m in frame:
                    if m.WhichOneof("kind") == "report":
                        by_task.setdefault(m.report.task_id, []).append(m.report)
                    else:
                        await self._control(conn, m)
                if by_task:
                    # While this hub applies a frame it reads no more of them, so a slow
                    # store write must not make the node look silent to the reaper.
                    conn.applying = True
                    try:
                        await asyncio.gather(*(self._reports(conn, r)
                                               for r in by_task.values()))
                    finally:
                        conn.applying = False
                        conn.heard_at = self._monotonic()
        except grpc.aio.AioRpcError:
            pass  # the node hung up; _close handles it
        except asyncio.CancelledError:
            raise
        finally:
            conn.close()

    async def _reports(self, conn: NodeConn, reports: list[node_pb2.TaskReport]) -> None:
        for report in reports:
            await self._tasks.on_report(conn, report)

    async def _control(self, conn: NodeConn, msg: node_pb2.NodeMessage) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "heartbeat":
            if conn.node.load.browser_sessions != msg.heartbeat.load.browser_sessions:
                self._tasks.wake()  # a browser session closed: a queued opener may fit now
            conn.node.load.CopyFrom(msg.heartbeat.load)
            conn.new_sessions = 0
            conn.node.last_seen = time.time()
            if msg.heartbeat.draining != conn.draining:
                conn.draining = msg.heartbeat.draining
                conn.node.state = pb.DRAINING if conn.draining else pb.ONLINE
                self._tasks.wake()
            if self._monotonic() - conn.persisted_at > _PERSIST_EVERY_S:
                conn.persisted_at = self._monotonic()
                await self._store.upsert_node(conn.tenant, _persisted(conn.node))
        elif kind == "stdin_ack":
            self._tasks.on_stdin_ack(conn, msg.stdin_ack)
        elif kind == "goodbye":
            log.info("node %s says goodbye: %s", conn.node_id, msg.goodbye.reason)
            conn.draining = True

    async def _close(self, conn: NodeConn) -> None:
        conn.close()
        if self._registry.detach(conn, now=self._monotonic()):
            await self._tasks.node_left(conn)
            if conn.node.state != pb.REVOKED:
                conn.node.state = pb.OFFLINE
            conn.node.last_seen = time.time()
            try:
                await asyncio.shield(self._store.upsert_node(conn.tenant, _persisted(conn.node)))
            except CortexError as exc:
                log.warning("could not record node %s offline: %s", conn.node_id, exc)
            log.info("node %s disconnected", conn.node_id)
        self._tasks.wake()


def _identify(context: Ctx) -> NodeIdentity:
    auth = context.auth_context()
    pems = list(auth.get("x509_pem_cert") or [])
    if not pems:
        raise PermissionDenied("nodes must present a client certificate issued by this hub")
    return identity_from_pem(pems[0])


def _persisted(node: pb.Node) -> pb.Node:
    out = pb.Node()
    out.CopyFrom(node)
    out.running_tasks = 0
    return out


_FRAME_MESSAGES = 512
_FRAME_BYTES = 4 * 1024 * 1024


async def _next_frame(outbox: asyncio.Queue[node_pb2.HubMessage | None]
                      ) -> node_pb2.HubMessage | None:
    """The next message, or a batch of everything queued (bounded) when there is more."""
    first = await outbox.get()
    if first is None or outbox.empty():
        return first
    batch = node_pb2.HubMessage(batch=node_pb2.HubBatch(messages=[first]))
    size = first.ByteSize()
    while not outbox.empty() and len(batch.batch.messages) < _FRAME_MESSAGES \
            and size < _FRAME_BYTES:
        msg = outbox.get_nowait()
        if msg is None:
            outbox.put_nowait(None)  # deliver what we have, stop on the next call
            break
        batch.batch.messages.append(msg)
        size += msg.ByteSize()
    return batch
