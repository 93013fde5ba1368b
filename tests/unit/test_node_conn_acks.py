"""The hub's deferred acknowledgements to a node (NodeConn.ack): newest seq per attempt,
sent ahead of the next message to the node, or on their own after ACK_DELAY_S."""

from __future__ import annotations

import asyncio

import pytest

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex._proto.cortex.v1 import node_pb2
from cortex.hub.registry import ACK_DELAY_S, NodeConn


def _conn() -> NodeConn:
    return NodeConn(node_id="n1", tenant="default", node=pb.Node(), slots=4, boot_id="b")


def _drain(conn: NodeConn) -> list[node_pb2.HubMessage]:
    """What is queued for the node (without the closing sentinel)."""
    out = []
    while not conn.outbox.empty():
        msg = conn.outbox.get_nowait()
        if msg is not None:
            out.append(msg)
    return out


def _acks(msgs: list[node_pb2.HubMessage]) -> list[tuple[str, int, int]]:
    return [(m.ack.task_id, m.ack.attempt, m.ack.acked_seq) for m in msgs
            if m.WhichOneof("kind") == "ack"]


@pytest.mark.asyncio
async def test_acks_ride_ahead_of_the_next_message() -> None:
    conn = _conn()
    conn.ack("t1", 1, 3)
    conn.ack("t1", 1, 5)   # the same attempt: only the newest seq goes out
    conn.ack("t2", 2, 1)
    assert _drain(conn) == []  # deferred
    conn.send(node_pb2.HubMessage(assign=node_pb2.Assign(task_id="t3", attempt=1)))
    msgs = _drain(conn)
    assert _acks(msgs) == [("t1", 1, 5), ("t2", 2, 1)]
    assert msgs[-1].WhichOneof("kind") == "assign"  # after the acks, in order
    assert conn.ack_timer is None


@pytest.mark.asyncio
async def test_acks_go_out_alone_after_the_delay() -> None:
    conn = _conn()
    conn.ack("t1", 1, 2)
    await asyncio.sleep(ACK_DELAY_S * 5)
    assert _acks(_drain(conn)) == [("t1", 1, 2)]


@pytest.mark.asyncio
async def test_a_closed_connection_sends_no_deferred_acks() -> None:
    conn = _conn()
    conn.ack("t1", 1, 2)
    conn.close()
    await asyncio.sleep(ACK_DELAY_S * 5)
    assert _drain(conn) == []
