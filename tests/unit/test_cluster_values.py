"""Pure parts of scale-out: the change feed's payloads and how relayed input is split."""

from __future__ import annotations

import base64

from cortex._proto.cortex.v1 import node_pb2
from cortex.hub._cluster import _input_parts
from cortex.store._pg_cluster import parse_change, parse_input
from cortex.store.base import TaskChange


def test_a_trigger_payload_becomes_a_change_and_junk_becomes_nothing() -> None:
    assert parse_change("acme t-1 3 7 - n-9") == TaskChange("acme", "t-1", 3, 7, "n-9")
    body = base64.b64encode(b"\x08\x01").decode()
    assert parse_change(f"acme t-1 1 1 {body} ") == TaskChange("acme", "t-1", 1, 1, "",
                                                               b"\x08\x01")
    assert parse_change("acme t-1 x 1 - n") is None
    assert parse_change("acme t-1 1 1 !!! n") is None
    assert parse_change("too few") is None


def test_relayed_input_round_trips_and_junk_becomes_nothing() -> None:
    msg = node_pb2.HubMessage(stdin=node_pb2.Stdin(data=b"hi\n")).SerializeToString()
    payload = f"acme t-1 {base64.b64encode(msg).decode()}"
    assert parse_input(payload) == ("acme", "t-1", msg)
    assert parse_input("acme t-1 !!notbase64!!") is None
    assert parse_input("acme") is None


def test_big_stdin_is_relayed_in_parts_with_eof_on_the_last_only() -> None:
    data = bytes(range(256)) * 40   # 10,240 bytes
    parts = _input_parts(node_pb2.HubMessage(stdin=node_pb2.Stdin(data=data, eof=True)))
    assert [len(p.stdin.data) for p in parts] == [4096, 4096, 2048]
    assert b"".join(p.stdin.data for p in parts) == data
    assert [p.stdin.eof for p in parts] == [False, False, True]
    resize = node_pb2.HubMessage(resize=node_pb2.Resize(rows=5, cols=9))
    assert _input_parts(resize) == [resize]
    # Each part fits a NOTIFY payload (under 8,000 bytes) once base64-encoded.
    assert all(len(base64.b64encode(p.SerializeToString())) < 7900 for p in parts)
