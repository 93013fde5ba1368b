"""OpenTelemetry tracing of a task across client → hub → node: one trace id, correct
parent links and span kinds, with a real SDK TracerProvider and its in-memory exporter;
and, with tracing off, nothing recorded and the client's context passed through as is."""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
import httpx2
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from cortex import tracing
from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex._proto.cortex.v1 import tasks_pb2, tasks_pb2_grpc
from cortex.hub.server import Hub
from cortex.node.agent import Agent
from cortex.sdk import Client

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process for one test, every span kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider)
    try:
        yield exporter
    finally:
        tracing.configure(None)
        provider.shutdown()


def _by_name(exporter: InMemorySpanExporter, task_id: str, root_name: str = "cortex.client.run"
             ) -> dict[str, ReadableSpan]:
    """The spans of one task's trace, by name (each name once)."""
    finished = exporter.get_finished_spans()
    (root,) = [s for s in finished if s.name == root_name
               and (s.attributes or {}).get("cortex.task_id") == task_id]
    trace = [s for s in finished if s.context is not None and root.context is not None
             and s.context.trace_id == root.context.trace_id]
    names = [s.name for s in trace]
    assert len(names) == len(set(names)), names
    return {s.name: s for s in trace}


def _parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


@pytest.mark.asyncio
async def test_one_trace_links_client_hub_and_node(
        hub: Hub, node: Agent, client: Client, spans: InMemorySpanExporter) -> None:
    """client.run (one TaskService.Run call) → hub.submit → hub.queue and hub.dispatch →
    node.execute: one trace id, each span the child of the one before, with its kind."""
    done = await client.run(argv=["echo", "traced"])
    assert done.ok
    got = _by_name(spans, done.task.id)
    assert set(got) == {"cortex.client.run", "cortex.hub.submit", "cortex.hub.queue",
                        "cortex.hub.dispatch", "cortex.node.execute"}
    run, hub_submit = got["cortex.client.run"], got["cortex.hub.submit"]
    queue = got["cortex.hub.queue"]
    dispatch, execute = got["cortex.hub.dispatch"], got["cortex.node.execute"]
    assert run.parent is None
    assert _parent_of(hub_submit) == _id(run)
    assert hub_submit.parent is not None
    assert hub_submit.parent.is_remote      # it came over the wire, in gRPC metadata
    assert _parent_of(queue) == _id(hub_submit)
    assert _parent_of(dispatch) == _id(hub_submit)
    assert _parent_of(execute) == _id(dispatch)
    assert [s.kind for s in (run, hub_submit, dispatch, execute)] == [
        SpanKind.CLIENT, SpanKind.SERVER, SpanKind.PRODUCER, SpanKind.CONSUMER]
    # A plain submit is its own client span, the parent of the hub's.
    queued = await client.submit(argv=["true"])
    await client.wait(queued.id)
    again = _by_name(spans, queued.id, "cortex.client.submit")
    assert _parent_of(again["cortex.hub.submit"]) == _id(again["cortex.client.submit"])
    assert again["cortex.client.submit"].kind == SpanKind.CLIENT
    for span in (hub_submit, queue, dispatch, execute):
        assert span.attributes is not None
        assert span.attributes.get("cortex.task_id", done.task.id) == done.task.id
    assert execute.attributes is not None
    assert execute.attributes["cortex.state"] == "succeeded"
    (conn,) = hub.registry.all()
    assert execute.attributes["cortex.node_id"] == conn.node_id
    assert queue.start_time is not None
    assert queue.end_time is not None
    assert queue.start_time <= queue.end_time
    assert run.end_time is not None
    assert execute.end_time is not None
    assert execute.end_time <= run.end_time
    stored = await client.get(done.task.id)
    ctx = hub_submit.context
    assert ctx is not None
    assert stored.spec.traceparent == \
        f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


@pytest.mark.asyncio
async def test_a_retried_attempt_is_dispatched_again_in_the_same_trace(
        hub: Hub, node: Agent, client: Client, spans: InMemorySpanExporter) -> None:
    """Each attempt gets its own dispatch and execution spans, all under the one submit."""
    done = await client.run(argv=["false"], max_attempts=2, retry_on_failure=True)
    assert done.task.attempt == 2
    finished = spans.get_finished_spans()
    executes = [s for s in finished if s.name == "cortex.node.execute"]
    dispatches = [s for s in finished if s.name == "cortex.hub.dispatch"]
    assert len(executes) == len(dispatches) == 2
    assert {_parent_of(e) for e in executes} == {_id(d) for d in dispatches}
    assert len({s.context.trace_id for s in finished if s.context}) == 1


@pytest.mark.asyncio
async def test_off_records_nothing_and_passes_the_clients_context_through(
        hub: Hub, node: Agent, client: Client, raw_channel: grpc.aio.Channel) -> None:
    """With tracing off the SDK sends no traceparent (the spec's stays empty); a caller's
    valid traceparent is stored as is for the node to continue; a malformed one, or one
    set in the spec itself, is dropped."""
    assert not tracing.active()
    done = await client.run(argv=["true"])
    assert done.task.spec.traceparent == ""
    stub = tasks_pb2_grpc.TaskServiceStub(raw_channel)
    auth = ("authorization", f"Bearer {hub.admin_token}")
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    for sent, in_spec, kept in ((theirs, "", theirs), ("00-zz-1-01", "", ""),
                                ("", theirs, "")):
        spec = pb.TaskSpec(skill="noop", traceparent=in_spec)
        metadata = (auth, ("traceparent", sent)) if sent else (auth,)
        res = await stub.Submit(tasks_pb2.SubmitRequest(spec=spec), metadata=metadata)
        assert res.task.spec.traceparent == kept, (sent, in_spec)


@pytest.mark.asyncio
async def test_a_dashboard_retry_starts_a_trace_of_its_own(
        hub: Hub, raw_channel: grpc.aio.Channel) -> None:
    """Retry copies the spec but not its traceparent: the new task is not part of the old
    task's trace."""
    stub = tasks_pb2_grpc.TaskServiceStub(raw_channel)
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    old = (await stub.Submit(tasks_pb2.SubmitRequest(spec=pb.TaskSpec(skill="noop")),
                             metadata=(("authorization", f"Bearer {hub.admin_token}"),
                                       ("traceparent", theirs)))).task
    assert old.spec.traceparent == theirs
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{hub.http_port}") as http:
        form = await http.get("/ui/login")
        (secret,) = re.findall(r'name="csrf" value="([^"]+)"', form.text)
        await http.post("/ui/login", data={"token": hub.admin_token, "csrf": secret})
        page = await http.get(f"/ui/tasks/{old.id}")
        csrf = re.findall(r'name="csrf" value="([^"]+)"', page.text)[0]
        res = await http.post(f"/ui/tasks/{old.id}/retry", data={"csrf": csrf})
    assert res.status_code == 303
    new_id = res.headers["location"].rsplit("/", 1)[-1]
    new = await stub.Get(tasks_pb2.GetTaskRequest(task_id=new_id),
                         metadata=(("authorization", f"Bearer {hub.admin_token}"),))
    assert new.spec.skill == "noop"
    assert new.spec.traceparent == ""
