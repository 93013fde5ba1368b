"""Connected nodes: who is online, what they offer, and a bounded queue to each."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex._proto.cortex.v1 import node_pb2
from cortex.core.placement import NodeView

__all__ = ["NodeConn", "Registry"]

# Assignments are bounded by slots and acks by reports, so the queue stays small; the bound
# is a backstop against a node that stops reading (it is disconnected when hit).
SEND_QUEUE_BOUND = 10_000
# Acknowledgements wait this long for a message to ride with (the next assignment, mostly):
# the node journal keeps the events a little longer, and a task costs one frame less.
ACK_DELAY_S = 0.02


@dataclass(eq=False)
class NodeConn:
    node_id: str
    tenant: str
    node: pb.Node
    slots: int
    boot_id: str
    draining: bool = False
    running: set[tuple[str, int]] = field(default_factory=set)
    outbox: asyncio.Queue[node_pb2.HubMessage | None] = field(
        default_factory=lambda: asyncio.Queue(SEND_QUEUE_BOUND)
    )
    closed: bool = False
    heard_at: float = 0.0       # monotonic time of the last message from the node
    applying: bool = False      # the hub is applying a frame (not reading the stream)
    persisted_at: float = 0.0   # monotonic time the node row was last written
    # Browser sessions this hub placed on the node since its last heartbeat said how many
    # it has open (so one dispatch pass cannot overfill it).
    new_sessions: int = 0
    leased: bool = False        # this hub holds the node's lease (shared store only)
    acks: dict[tuple[str, int], int] = field(default_factory=dict)  # deferred: newest seq
    ack_timer: asyncio.TimerHandle | None = None

    def ack(self, task_id: str, attempt: int, upto: int) -> None:
        """Acknowledge a task attempt's events up to `upto`: sent with the next message to
        the node, or after ACK_DELAY_S."""
        key = (task_id, attempt)
        self.acks[key] = max(upto, self.acks.get(key, 0))
        if self.ack_timer is None:
            self.ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S,
                                                                   self.flush_acks)

    def flush_acks(self) -> None:
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
        acks, self.acks = self.acks, {}
        for (task_id, attempt), upto in acks.items():
            self.send(node_pb2.HubMessage(ack=node_pb2.ReportAck(
                task_id=task_id, attempt=attempt, acked_seq=upto)))

    def send(self, msg: node_pb2.HubMessage) -> bool:
        """Queue a message; False (and the connection is closed) if the node fell behind."""
        if self.closed:
            return False
        if self.acks and msg.WhichOneof("kind") != "ack":
            self.flush_acks()  # first: the node learns in order what was stored
        try:
            self.outbox.put_nowait(msg)
        except asyncio.QueueFull:
            self.close()
            return False
        return True

    def close(self) -> None:
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
        if not self.closed:
            self.closed = True
            while True:  # make room for the sentinel: the writer stops at it
                try:
                    self.outbox.put_nowait(None)
                    break
                except asyncio.QueueFull:
                    self.outbox.get_nowait()

    def view(self, used: pb.Resources | None = None) -> NodeView:
        """What placement needs of this node; `used` = what its tasks hold (None: unknown,
        counted as nothing)."""
        cap = self.node.capacity
        used = used or pb.Resources()
        return NodeView(
            id=self.node_id,
            labels=dict(self.node.labels),
            skills=frozenset(self.node.skills),
            slots=self.slots,
            running=len(self.running),
            draining=self.draining,
            pool=self.node.pool or "default",
            cpus=cap.cpus,
            memory_mib=cap.memory_mib,
            gpus=cap.gpus,
            cpus_free=cap.cpus - used.cpus,
            memory_free_mib=cap.memory_mib - used.memory_mib,
            gpus_free=cap.gpus - used.gpus,
            session_limit=cap.browser_sessions,
            sessions=self.node.load.browser_sessions + self.new_sessions,
        )


class Registry:
    def __init__(self) -> None:
        self._conns: dict[str, NodeConn] = {}
        # When each node that is not connected went away (monotonic), for lost detection.
        self.gone_since: dict[str, float] = {}

    def attach(self, conn: NodeConn) -> NodeConn | None:
        """Register `conn`; returns the connection it replaces (closed by the caller)."""
        old = self._conns.get(conn.node_id)
        self._conns[conn.node_id] = conn
        self.gone_since.pop(conn.node_id, None)
        return old

    def detach(self, conn: NodeConn, *, now: float) -> bool:
        """Forget `conn` if it is still the current one for its node."""
        if self._conns.get(conn.node_id) is conn:
            del self._conns[conn.node_id]
            self.gone_since[conn.node_id] = now
            return True
        return False

    def get(self, node_id: str) -> NodeConn | None:
        return self._conns.get(node_id)

    def for_tenant(self, tenant: str) -> list[NodeConn]:
        return [c for c in self._conns.values() if c.tenant == tenant]

    def all(self) -> list[NodeConn]:
        return list(self._conns.values())
