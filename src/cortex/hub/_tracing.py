"""The hub's tracing hooks (see `cortex.tracing`): the submit span around Submit, and the
queue and dispatch spans when an assignment leaves for its node. Each is one `None` check
while tracing is off."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from cortex import tracing
from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex._proto.cortex.v1 import node_pb2
from cortex.hub._grpc_errors import Ctx

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["on_send", "submit_span"]


def _incoming(context: Ctx) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent" and isinstance(value, str):
            return value if tracing.valid_traceparent(value) else ""
    return ""


@contextlib.contextmanager
def submit_span(context: Ctx, tenant: str, specs: Sequence[pb.TaskSpec]
                ) -> Iterator[Span | None]:
    """The hub's submit span (a child of the client's), stamped into each spec as its
    traceparent. While the hub does not trace, the client's own context passes through."""
    incoming = _incoming(context)
    with tracing.span("cortex.hub.submit", parent=incoming, kind="server",
                      attributes={"cortex.tenant": tenant, "cortex.tasks": len(specs)}
                      ) as span:
        stamp = tracing.traceparent_of(span) or incoming
        for spec in specs:
            spec.traceparent = stamp
        yield span


def on_send(msg: node_pb2.HubMessage, node_id: str) -> None:
    """Before a message goes out on a node's stream: each assignment in it gets its
    queue span (submission to now) and a dispatch span, whose context it carries."""
    if not tracing.active():
        return
    kind = msg.WhichOneof("kind")
    if kind == "batch":
        for inner in msg.batch.messages:
            on_send(inner, node_id)
    elif kind == "assign":
        _dispatch(msg.assign, node_id)


def _dispatch(assign: node_pb2.Assign, node_id: str) -> None:
    parent = assign.spec.traceparent
    who = {"cortex.task_id": assign.task_id, "cortex.attempt": assign.attempt,
           "cortex.tenant": assign.tenant, "cortex.node_id": node_id}
    if assign.queued_at:
        tracing.record("cortex.hub.queue", parent=parent, start=assign.queued_at,
                       attributes=who)
    assign.traceparent = tracing.record("cortex.hub.dispatch", parent=parent,
                                        start=tracing.now(), kind="producer",
                                        attributes=who)
