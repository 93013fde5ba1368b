"""The async `Client`: one gRPC channel to a hub, every TaskService call, typed results."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, Self, TypeVar, Unpack

import grpc

from cortex import tracing
from cortex._dial import balanced_target
from cortex._proto.cortex.v1 import common_pb2, pki_pb2, pki_pb2_grpc, tasks_pb2, tasks_pb2_grpc
from cortex.core.states import TERMINAL
from cortex.errors import CortexError, InvalidArgument, Unavailable
from cortex.sdk._admin import Admin
from cortex.sdk._artifacts import ArtifactMethods
from cortex.sdk._attach import Attachment
from cortex.sdk._backoff import Backoff
from cortex.sdk._config import ClientConfig, ConfigOverrides
from cortex.sdk._errors import CONNECT_RETRY_S, never_sent, translate
from cortex.sdk._files import NodeFileMethods
from cortex.sdk._run import OldHub, OutputCallback, RunOutput, run_messages
from cortex.sdk._specs import (
    Pairs,
    TaskOptions,
    build_spec,
    parse_duration,
    parse_labels,
    parse_node_state,
    parse_task_state,
)

if TYPE_CHECKING:
    from cortex._proto.cortex.v1.pki_pb2_grpc import PkiServiceAsyncStub
    from cortex._proto.cortex.v1.tasks_pb2_grpc import TaskServiceAsyncStub

__all__ = ["TERMINAL_STATES", "Client", "JoinToken", "OutputCallback", "Result"]

Task = common_pb2.Task
TaskEvent = common_pb2.TaskEvent
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

TERMINAL_STATES: frozenset[int] = frozenset(int(s) for s in TERMINAL)
"""TaskState values a task attempt ends in (LOST may still be followed by a retry)."""

_PAGE_MAX = 1000
# A stream that lived this long was connected, so its failure starts a fresh reconnect
# budget; grpc gives up on an unreachable address well before (20 s connect timeout).
_HEALTHY_AFTER_S = 30.0
_CANCEL_GRACE_S = 5.0
_SUBMIT_CHUNK = 1000   # the hub's SubmitMany bound
_WAIT_CHUNK = 10_000   # the hub's WaitTasks bound
# Server-side cancellation (a hub shutting down) arrives as CANCELLED; our own
# cancellation surfaces as asyncio.CancelledError instead, never as this status.
_RECONNECT_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
})


class JoinToken(NamedTuple):
    """A one-time token another machine uses to join: ``cortex node --token TOKEN``."""

    token: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Result:
    """A finished task and the output of its last attempt."""

    task: common_pb2.Task
    stdout: bytes           # STDOUT and PTY output
    stderr: bytes           # STDERR and the hub's SYSTEM notes (e.g. the truncation marker)

    @property
    def exit_code(self) -> int | None:
        return self.task.exit_code if self.task.has_exit_code else None

    @property
    def state(self) -> common_pb2.TaskState.ValueType:
        return self.task.state

    @property
    def ok(self) -> bool:
        return self.task.state == common_pb2.SUCCEEDED

    @property
    def files(self) -> list[common_pb2.File]:
        """Artifacts of the task (fetch with `Client.download_artifact`)."""
        return list(self.task.files)


class Client(ArtifactMethods, NodeFileMethods):
    """Async client of one hub. ``async with Client() as client:`` or `Client.connect`.

    With no config, `ClientConfig.from_env` resolves one (flags given here as keywords >
    environment > ``$CORTEX_HOME/client.json``). The channel opens on first use, on the
    running event loop; a Client belongs to that loop.
    """

    def __init__(
        self, config: ClientConfig | None = None, /, **overrides: Unpack[ConfigOverrides]
    ) -> None:
        if config is not None and overrides:
            raise InvalidArgument("pass a ClientConfig or overrides, not both")
        self._config = config if config is not None else ClientConfig.from_env(**overrides)
        self._metadata = (("authorization", f"Bearer {self._config.token}"),)
        tracing.setup_from_env("cortex-client")  # once per process; off unless asked
        self._channel: grpc.aio.Channel | None = None
        self._stub_: TaskServiceAsyncStub | None = None
        self._admin: Admin | None = None
        self._closed = False

    @classmethod
    async def connect(
        cls, config: ClientConfig | None = None, /, **overrides: Unpack[ConfigOverrides]
    ) -> Self:
        """A client with its channel open (gRPC still connects lazily, on the first call)."""
        client = cls(config, **overrides)
        client._stub()
        return client

    @property
    def config(self) -> ClientConfig:
        return self._config

    async def __aenter__(self) -> Self:
        self._stub()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls still running end with an error. Idempotent."""
        self._closed = True
        channel, self._channel, self._stub_ = self._channel, None, None
        self._admin = None
        if channel is not None:
            await channel.close(None)

    # --- tasks ---------------------------------------------------------------------------

    async def submit(
        self, spec: common_pb2.TaskSpec | None = None, /, **options: Unpack[TaskOptions]
    ) -> common_pb2.Task:
        """Submit a task, from a TaskSpec or from keyword options (see `TaskOptions`)."""
        if spec is None:
            spec = build_spec(**options)
        elif options:
            raise InvalidArgument("pass a TaskSpec or keyword options, not both")
        with tracing.span("cortex.client.submit", kind="client",
                          attributes={"cortex.skill": spec.skill or "shell"}) as span:
            response = await self._unary(self._stub().Submit,
                                         tasks_pb2.SubmitRequest(spec=spec), traced=True)
            if span is not None:
                span.set_attribute("cortex.task_id", response.task.id)
        return response.task

    async def submit_many(
        self, specs: Iterable[common_pb2.TaskSpec]
    ) -> list[common_pb2.Task]:
        """Submit many tasks in as few calls as possible (1000 per call), in order.

        Each call is validated as a whole (a bad spec rejects its call, naming its index);
        calls run concurrently, so tasks of a later call may be accepted before an earlier
        call fails. Build specs with `cortex.sdk.build_spec`.
        """
        specs = list(specs)
        chunks = [specs[i:i + _SUBMIT_CHUNK] for i in range(0, len(specs), _SUBMIT_CHUNK)]
        responses = await asyncio.gather(*(
            self._unary(self._stub().SubmitMany, tasks_pb2.SubmitManyRequest(specs=chunk),
                        traced=True)
            for chunk in chunks))
        return [task for response in responses for task in response.tasks]

    async def wait_many(
        self, task_ids: Iterable[str]
    ) -> AsyncGenerator[common_pb2.Task, None]:
        """Each task once it is finished, in the order they finish (every id exactly once).

        One server stream per 10,000 ids instead of one watch per task. If the stream
        breaks, the ids not yet seen are waited for again on a new stream.
        """
        pending = list(dict.fromkeys(task_ids))
        backoff = Backoff(self._config.reconnect_timeout)
        loop = asyncio.get_running_loop()
        while pending:
            chunk, seen = pending[:_WAIT_CHUNK], set()
            call = self._stub().WaitTasks(tasks_pb2.WaitTasksRequest(task_ids=chunk),
                                          metadata=self._metadata)
            try:
                async for response in call:
                    for task in response.tasks:
                        seen.add(task.id)
                        backoff.reset()
                        yield task
            except grpc.aio.AioRpcError as e:
                error = translate(e, address=self._config.address)
                if e.code() not in _RECONNECT_CODES:
                    raise error from e
                delay = backoff.next_delay(loop.time())
                if delay is None:
                    raise Unavailable(f"gave up waiting for tasks: {error}") from e
                await asyncio.sleep(delay)
            finally:
                call.cancel()
            pending = [t for t in pending if t not in seen]

    async def get(self, task_id: str) -> common_pb2.Task:
        """The task with its attempts."""
        return await self._unary(self._stub().Get, tasks_pb2.GetTaskRequest(task_id=task_id))

    async def cancel(self, task_id: str, *, reason: str = "") -> common_pb2.Task:
        """Ask the hub to cancel; the returned task may still be running until the node confirms."""
        request = tasks_pb2.CancelRequest(task_id=task_id, reason=reason)
        return await self._unary(self._stub().Cancel, request)

    async def list_tasks(
        self,
        *,
        states: Iterable[int | str] | None = None,
        node_id: str | None = None,
        labels: Pairs | None = None,
        limit: int = 100,
    ) -> list[common_pb2.Task]:
        """Up to `limit` tasks matching every filter (following pages as needed)."""
        if limit < 1:
            raise InvalidArgument(f"limit must be at least 1, got {limit}")
        tasks: list[common_pb2.Task] = []
        pages = self.iter_tasks(
            states=states, node_id=node_id, labels=labels, page_size=min(limit, _PAGE_MAX)
        )
        async with contextlib.aclosing(pages):
            async for task in pages:
                tasks.append(task)
                if len(tasks) >= limit:
                    break
        return tasks

    async def iter_tasks(
        self,
        *,
        states: Iterable[int | str] | None = None,
        node_id: str | None = None,
        labels: Pairs | None = None,
        page_size: int = 100,
    ) -> AsyncGenerator[common_pb2.Task, None]:
        """Every task matching the filters, one page (of `page_size`) per call."""
        if not 1 <= page_size <= _PAGE_MAX:
            raise InvalidArgument(f"page_size must be between 1 and {_PAGE_MAX}")
        request = tasks_pb2.ListTasksRequest(
            states=[parse_task_state(s) for s in states or ()],
            node_id=node_id or "",
            labels=parse_labels(labels),
            limit=page_size,
        )
        while True:
            page = await self._unary(self._stub().List, request)
            for task in page.tasks:
                yield task
            if not page.next_page_token or not page.tasks:
                return
            request.page_token = page.next_page_token

    async def watch(
        self,
        task_id: str,
        *,
        after_seq: int = 0,
        follow: bool = True,
        reconnect_timeout: float | None = None,
    ) -> AsyncGenerator[common_pb2.TaskEvent, None]:
        """The task's events after `after_seq`: its history, then (with `follow`) live events
        until the task is finished.

        A lost hub is invisible but for a delay: the watch reconnects with jittered backoff
        and resumes after the last event it yielded, for up to `reconnect_timeout` seconds
        (default: the config's) of continuous failure, then raises Unavailable.
        """
        budget = self._config.reconnect_timeout if reconnect_timeout is None else reconnect_timeout
        backoff = Backoff(budget)
        loop = asyncio.get_running_loop()
        last_seq, finished = after_seq, False
        while True:
            started = loop.time()
            request = tasks_pb2.WatchRequest(task_id=task_id, after_seq=last_seq, follow=follow)
            call = self._stub().Watch(request, metadata=self._metadata)
            try:
                async for event in call:
                    if event.seq <= last_seq:
                        continue  # already yielded before a reconnect
                    last_seq = event.seq
                    if event.HasField("state"):
                        # LOST then QUEUED (a retry) arrive together: the last one counts.
                        finished = event.state.state in TERMINAL_STATES
                    backoff.reset()
                    yield event
                if not follow or finished or await self._is_finished(task_id):
                    return
                error: CortexError = Unavailable(
                    f"hub {self._config.address}: the watch of task {task_id} "
                    "ended before the task finished"
                )
            except grpc.aio.AioRpcError as e:
                error = translate(e, address=self._config.address)
                error.__cause__ = e
                if e.code() not in _RECONNECT_CODES:
                    raise error from e
                if loop.time() - started >= _HEALTHY_AFTER_S:
                    backoff.reset()
            finally:
                call.cancel()
            delay = backoff.next_delay(loop.time())
            if delay is None:
                raise Unavailable(
                    f"gave up watching task {task_id} after {budget:g} s of failures: {error}"
                ) from error
            await asyncio.sleep(delay)

    async def wait(self, task_id: str) -> common_pb2.Task:
        """The task once it is finished (retries included)."""
        task = await self.get(task_id)
        if task.state in TERMINAL_STATES:
            return task
        events = self.watch(task_id, after_seq=task.last_seq)
        async with contextlib.aclosing(events):
            async for _ in events:
                pass
        return await self.get(task_id)

    async def run(
        self,
        spec: common_pb2.TaskSpec | None = None,
        /,
        *,
        stdout: OutputCallback | None = None,
        stderr: OutputCallback | None = None,
        **options: Unpack[TaskOptions],
    ) -> Result:
        """Submit, stream output to the callbacks, wait, and return the `Result`.

        One call (TaskService.Run) does what submit + watch + get do. If the hub goes away
        after it accepted the task, the events resume through `watch` where they stopped.
        If the caller is cancelled while waiting, the task is cancelled too (like
        `subprocess.run` kills its child). The Result keeps the last attempt's output;
        the callbacks see every attempt's, live.
        """
        if spec is None:
            spec = build_spec(**options)
        elif options:
            raise InvalidArgument("pass a TaskSpec or keyword options, not both")
        with tracing.span("cortex.client.run", kind="client",
                          attributes={"cortex.skill": spec.skill or "shell"}) as span:
            result = await self._run(spec, stdout, stderr)
            if span is not None:
                span.set_attributes({"cortex.task_id": result.task.id,
                                     "cortex.state": common_pb2.TaskState.Name(result.state)})
        return result

    async def _run(self, spec: common_pb2.TaskSpec, stdout: OutputCallback | None,
                   stderr: OutputCallback | None) -> Result:
        output = RunOutput(stdout, stderr)
        task_id = ""
        try:
            final: common_pb2.Task | None = None
            try:
                messages = run_messages(self._stub(), spec, metadata=self._metadata,
                                        address=self._config.address)
                async for msg in messages:
                    # Batched (what we ask for): submitted, then events, then finished, any
                    # of them in one message; a hub that predates batching sends `event`.
                    kind = msg.WhichOneof("kind")
                    if kind == "submitted":
                        task_id = msg.submitted.task.id
                    elif kind == "event":
                        output.take(msg.event)
                    for event in msg.events:
                        output.take(event)
                    if kind == "finished":
                        final = msg.finished
            except OldHub:
                task_id = (await self.submit(spec)).id
            except CortexError as exc:
                if not task_id or not isinstance(exc, Unavailable):
                    raise
                # Accepted, then the stream broke: follow it like a watch does.
            if final is None:
                if not task_id:
                    raise Unavailable(f"hub {self._config.address}: the Run call ended "
                                      "before the task was accepted")
                events = self.watch(task_id, after_seq=output.last_seq)
                async with contextlib.aclosing(events):
                    async for event in events:
                        output.take(event)
                final = await self.get(task_id)
        except asyncio.CancelledError:
            if task_id:
                await self._cancel_quietly(task_id, "the caller stopped waiting for run()")
            raise
        return Result(task=final, stdout=bytes(output.out), stderr=bytes(output.err))

    def attach(self, task_id: str, *, after_seq: int = 0) -> Attachment:
        """``async with client.attach(task_id) as att:`` stdin / resize in, events out."""
        stub = self._stub()
        return Attachment(
            lambda: stub.Attach(None, metadata=self._metadata),
            task_id,
            after_seq=after_seq,
            address=self._config.address,
        )

    # --- nodes and tokens ----------------------------------------------------------------

    async def list_nodes(
        self,
        *,
        labels: Pairs | None = None,
        skill: str | None = None,
        states: Iterable[int | str] | None = None,
    ) -> list[common_pb2.Node]:
        """Nodes carrying every label, offering `skill`, in one of `states`."""
        request = tasks_pb2.ListNodesRequest(
            labels=parse_labels(labels),
            skill=skill or "",
            states=[parse_node_state(s) for s in states or ()],
        )
        response = await self._unary(self._stub().ListNodes, request)
        return list(response.nodes)

    async def create_join_token(
        self, *, ttl: float | str = 3600.0, labels: Pairs | None = None, pool: str = ""
    ) -> JoinToken:
        """A one-time token for ``cortex node --token``; `labels` are added to the node's,
        which joins `pool` (default: the tenant's "default" pool)."""
        ttl_s = parse_duration(ttl, what="ttl")
        if ttl_s <= 0:
            raise InvalidArgument(f"ttl must be more than 0 s, got {ttl!r}")
        request = tasks_pb2.CreateJoinTokenRequest(ttl_s=ttl_s, labels=parse_labels(labels),
                                                   pool=pool)
        response = await self._unary(self._stub().CreateJoinToken, request)
        return JoinToken(response.token, response.expires_at)

    @property
    def admin(self) -> Admin:
        """Tenants, pools and API tokens (AdminService), over this client's channel."""
        if self._admin is None:
            self._admin = Admin(self)
        return self._admin


    # --- certificate lifecycle (admin role) -----------------------------------------------

    async def revoke_node(self, node_id: str, *, reason: str = "") -> pki_pb2.RevokeNodeResponse:
        """Revoke a node: its stream is cut, its running tasks fail over as lost, and it
        can neither reconnect nor renew (it needs a new join token)."""
        request = pki_pb2.RevokeNodeRequest(node_id=node_id, reason=reason)
        return await self._unary(self._pki().RevokeNode, request)

    async def ca_status(self) -> pki_pb2.CaStatusResponse:
        """The CA chain with expiry dates, and the tenant's node certificates."""
        return await self._unary(self._pki().CaStatus, pki_pb2.CaStatusRequest())

    async def rotate_ca(self, *, root: bool = False) -> pki_pb2.CaStatusResponse:
        """A new issuing intermediate (and a new, cross-signed root when `root`)."""
        return await self._unary(self._pki().RotateCa, pki_pb2.RotateCaRequest(root=root))

    # --- plumbing ------------------------------------------------------------------------

    def _open_channel(self) -> grpc.aio.Channel:
        self._stub()
        assert self._channel is not None  # noqa: S101 - _stub() just opened it
        return self._channel

    def _pki(self) -> PkiServiceAsyncStub:
        self._stub()  # opens the channel
        if self._channel is None:
            raise RuntimeError("this Client is closed; create a new one")
        return pki_pb2_grpc.PkiServiceStub(self._channel)

    def _stub(self) -> TaskServiceAsyncStub:
        if self._closed:
            raise RuntimeError("this Client is closed; create a new one")
        if self._stub_ is None:
            self._channel = _open_channel(self._config)
            self._stub_ = tasks_pb2_grpc.TaskServiceStub(self._channel)
        return self._stub_

    async def _unary(
        self, method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req, *,
        traced: bool = False
    ) -> _Resp:
        metadata = self._metadata
        if traced and (parent := tracing.current_traceparent()):
            metadata = (*metadata, ("traceparent", parent))
        for delay in (*CONNECT_RETRY_S, None):
            try:
                return await method(
                    request, timeout=self._config.call_timeout, metadata=metadata
                )
            except grpc.aio.AioRpcError as e:
                # A call that never reached the hub (the TLS handshake failed, e.g. under
                # load) is safe to send again, whatever it does; anything else is not.
                if delay is None or not never_sent(e):
                    raise translate(e, address=self._config.address) from e
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the last attempt returns or raises

    async def _is_finished(self, task_id: str) -> bool:
        try:
            return (await self.get(task_id)).state in TERMINAL_STATES
        except Unavailable:
            return False

    async def _cancel_quietly(self, task_id: str, reason: str) -> None:
        # Best effort and bounded: the caller is leaving; a second cancel aborts this.
        with contextlib.suppress(CortexError, TimeoutError):
            await asyncio.wait_for(self.cancel(task_id, reason=reason), _CANCEL_GRACE_S)


def _open_channel(config: ClientConfig) -> grpc.aio.Channel:
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # Keep idle watches alive through NAT and notice a dead hub within ~30 s.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # After a hub restart, come back within seconds (gRPC's default backoff grows to 120 s).
        ("grpc.max_reconnect_backoff_ms", 5_000),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
    ]
    # Several hubs: round robin over those that answer (cortex._dial); one: as given.
    target, balancing = balanced_target(config.addresses)
    options += balancing
    if config.insecure:
        return grpc.aio.insecure_channel(target, options=options)
    if config.tls_server_name is not None:
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    credentials = grpc.ssl_channel_credentials(root_certificates=config.ca_pem)
    return grpc.aio.secure_channel(target, credentials, options=options)
