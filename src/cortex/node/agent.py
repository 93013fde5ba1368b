"""The node agent: dials the hub, runs what it is given, reports everything exactly once.

Tasks run independently of the connection. Their events are batched (a few ms), journaled,
then sent; the hub acknowledges what it stored and the journal forgets it. After a
reconnect the hub says how far it got for each held attempt and the agent resends the
rest from the journal; after a restart the same happens for whatever the journal holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid

import grpc

from cortex import __version__, tracing
from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex._proto.cortex.v1 import node_pb2, node_pb2_grpc
from cortex.core.addresses import parse_addresses
from cortex.core.states import State
from cortex.errors import CortexError, InvalidArgument
from cortex.node._host import count_gpus, host_capacity
from cortex.node._reporting import Held, Reporting
from cortex.node.artifacts import NodeArtifacts
from cortex.node.cgroups import CgroupManager
from cortex.node.config import NodeConfig
from cortex.node.identity import HUB_SERVER_NAME, Identity
from cortex.node.journal import Journal
from cortex.node.renewal import Renewer, is_revocation
from cortex.node.supervisor import Supervisor
from cortex.skills.base import Outcome
from cortex.skills.worker import WorkerPool

__all__ = ["Agent"]

log = logging.getLogger("cortex.node")
_OUTBOX_BOUND = 256               # reports in flight to the gRPC writer before we wait
_ACK_WAIT_S = 5.0
_FRAME_BYTES = 4 * 1024 * 1024
_STDIN_CHUNK = 64 * 1024
_STDIN_RETRY_S = 0.005
_Call = grpc.aio.StreamStreamCall[node_pb2.NodeMessage, node_pb2.HubMessage]


class Agent(Reporting):
    def __init__(self, config: NodeConfig, identity: Identity, supervisor: Supervisor,
                 skills: list[str], journal: Journal, *,
                 cgroups: CgroupManager | None = None,
                 workers: WorkerPool | None = None, limit_enforcement: str = "none") -> None:
        self._config = config
        self._id = identity
        self._supervisor = supervisor
        self._reported_sessions = 0
        self._skills = skills
        self._journal = journal
        self._cgroups = cgroups
        self._workers = workers
        self._limit_enforcement = limit_enforcement
        self._gpus = config.gpus if config.gpus is not None else count_gpus()
        self._held: dict[tuple[str, int], Held] = {}
        self._outbox: asyncio.Queue[node_pb2.NodeMessage] | None = None
        self._dirty = asyncio.Event()
        self._acked = asyncio.Event()
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._draining = False
        self._boot_id = uuid.uuid4().hex
        self._runs: asyncio.TaskGroup | None = None
        self.connected = asyncio.Event()
        self._channel_now: grpc.aio.Channel | None = None  # the connected stream's channel
        self._dials = 0   # which of the hub addresses (node_address may list several) is next
        self.renewer = Renewer(data_dir=config.data_dir, name=config.name,
                               identity=lambda: self._id, replace=self._set_identity,
                               channel=lambda: self._channel_now)

    def _set_identity(self, identity: Identity) -> None:
        """A renewed certificate: the next connection presents it; this one keeps going."""
        self._id = identity

    # -- lifecycle -----------------------------------------------------------------------
    def request_stop(self) -> None:
        """First call: drain gracefully. Second call: stop now (tasks are killed)."""
        if self._stopping.is_set():
            log.warning("second stop request: killing running tasks now")
            self._forced.set()
            for held in self._held.values():
                if held.run is not None:
                    held.run.cancel(State.CANCELLED, "node stopped (forced)")
        else:
            log.info("stopping: no new tasks; running ones get %.0f s", self._config.drain_grace_s)
            self._stopping.set()
            self._draining = True

    async def run(self) -> None:
        self._recover()
        async with asyncio.TaskGroup() as runs:
            self._runs = runs
            async with asyncio.TaskGroup() as tg:
                conn = tg.create_task(self._connect_loop())
                flusher = tg.create_task(self._flush_loop())
                renewer = tg.create_task(self.renewer.run())
                await self._stopping.wait()
                self._send_heartbeat()
                await self._drain()
                await self._settle()
                conn.cancel()
                flusher.cancel()
                renewer.cancel()
        self._journal.prune()
        if self._workers is not None:
            await self._workers.aclose()  # every task ended; sessions end with the agent
        await self._supervisor.aclose_skills()  # e.g. the browser sessions' Chromiums
        if self._cgroups is not None:
            try:  # every task ended: leave no empty per-node cgroup folders behind
                self._cgroups.destroy()
            except CortexError as exc:
                log.warning("cgroup cleanup: %s", exc)

    async def _drain(self) -> None:
        running = [h for h in self._held.values() if h.run is not None and not h.finished]
        if not running:
            return
        deadline = time.monotonic() + self._config.drain_grace_s
        while any(not h.finished for h in running) and not self._forced.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._dirty.clear()
            try:
                await asyncio.wait_for(self._wait_any(self._dirty, self._forced), remaining)
            except TimeoutError:
                break
        for held in running:
            if not held.finished and held.run is not None:
                held.run.cancel(State.CANCELLED, "node shutting down (drain grace ran out)")

    async def _settle(self) -> None:
        """Let runs finish reporting and wait (bounded) for the hub's acknowledgements."""
        while any(h.run is not None and not h.finished for h in self._held.values()):
            self._dirty.clear()
            await self._dirty.wait()
        self._flush()
        deadline = time.monotonic() + _ACK_WAIT_S
        while (self._outbox is not None and any(h.acked < h.next_seq - 1
                                                 for h in self._held.values())
               and time.monotonic() < deadline and not self._forced.is_set()):
            self._acked.clear()
            try:
                await asyncio.wait_for(self._acked.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        if self._outbox is not None:
            self._outbox.put_nowait(node_pb2.NodeMessage(
                goodbye=node_pb2.Goodbye(reason="node stopping")))
            await asyncio.sleep(0)

    @staticmethod
    async def _wait_any(*events: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def _recover(self) -> None:
        """Re-hold what the journal holds; tasks that were running died with the old agent."""
        for row in self._journal.held():
            held = Held(row.assign, next_seq=row.next_seq, acked=row.acked_seq,
                         sent=row.acked_seq, started=True, finished=row.finished)
            self._held[held.key] = held
            if not row.finished:
                _kill_leftover(row.pid)
                self._emit(held, node_pb2.NodeEvent(time=time.time(), finished=node_pb2.Finished(
                    state=pb.LOST,
                    reason="the node agent restarted while the task ran; its outcome is unknown")))
                held.finished = True
        if self._held:
            log.info("journal holds %d task attempts from before the restart", len(self._held))
            self._flush()

    # -- connection ----------------------------------------------------------------------
    async def _connect_loop(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await self._session()
            # The session's TaskGroup wraps a broken stream in an ExceptionGroup; a write
            # racing the hub's end of the stream (e.g. a revocation) is InvalidStateError.
            except* (grpc.aio.AioRpcError, CortexError, OSError,
                     asyncio.InvalidStateError) as group:
                log.warning("hub connection: %s", _describe(group.exceptions[0]))
                if is_revocation(group.exceptions[0]):
                    self._stop_revoked_work()
            finally:
                self._outbox = None
                self._channel_now = None
                self.connected.clear()
                self._dials += 1   # with several hub addresses, try the next one
            failures = 0 if time.monotonic() - started > 30 else failures + 1
            cap = min(self._config.reconnect_max_s, 0.2 * 2 ** min(failures, 10))
            await asyncio.sleep(random.uniform(cap / 2, cap))  # noqa: S311 - jitter, not crypto

    def _stop_revoked_work(self) -> None:
        """The hub revoked this node and failed its tasks over: running them on would only
        do the work twice."""
        for held in self._held.values():
            if not held.finished:
                self._cancel(held, State.CANCELLED, "this node was revoked")

    def _channel(self) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self._id.ca_pem, private_key=self._id.key_pem,
            certificate_chain=self._id.cert_pem)
        size = self._config.max_message_bytes
        addresses = parse_addresses(self._id.node_address, what="node address")
        address = addresses[self._dials % len(addresses)]
        return grpc.aio.secure_channel(address, creds, options=[
            ("grpc.ssl_target_name_override", HUB_SERVER_NAME),
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ])

    async def _session(self) -> None:
        async with self._channel() as channel:
            # Called without an iterator, the call is written to with write() below.
            call: _Call = node_pb2_grpc.NodeServiceStub(channel).Connect()  # type: ignore[call-arg]
            await call.write(node_pb2.NodeMessage(hello=self._hello()))
            responses = aiter(call)
            try:
                first = await anext(responses)
            except StopAsyncIteration:
                raise ConnectionError(
                    "the hub closed the stream before welcoming the node") from None
            if first.WhichOneof("kind") != "welcome":
                raise ConnectionError("the hub did not welcome the node")
            interval = first.welcome.heartbeat_interval_s or 2.0
            self._reconcile(first.welcome)
            outbox: asyncio.Queue[node_pb2.NodeMessage] = asyncio.Queue(_OUTBOX_BOUND)
            self._outbox = outbox
            self._channel_now = channel
            self.connected.set()
            log.info("connected to hub %s as %s", first.welcome.hub_id, self._id.node_id)
            self._dirty.set()
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(self._write(call, outbox))
                beats = tg.create_task(self._heartbeats(interval))
                try:
                    async for msg in responses:
                        self._on_message(msg)
                finally:
                    writer.cancel()
                    beats.cancel()
            raise ConnectionError("the hub ended the stream")

    def _hello(self) -> node_pb2.Hello:
        return node_pb2.Hello(
            name=self._config.name, version=__version__, labels=self._labels(),
            skills=self._skills, boot_id=self._boot_id,
            limit_enforcement=self._limit_enforcement,
            capacity=host_capacity(slots=self._config.slots, gpus=self._gpus,
                                   **self._supervisor.capacity()),
            held=[node_pb2.HeldTask(task_id=t, attempt=a) for t, a in self._held],
        )

    def _labels(self) -> dict[str, str]:
        uname = os.uname()
        return {"os": uname.sysname.lower(), "arch": uname.machine, **self._config.labels}

    def _reconcile(self, welcome: node_pb2.Welcome) -> None:
        for status in welcome.held:
            held = self._held.get((status.task_id, status.attempt))
            if held is None:
                continue
            if status.keep:
                self._on_ack(held, status.acked_seq)
                held.sent = held.acked
                held.unsent = []  # resent from the journal by the flusher
            else:
                log.info("hub dropped %s attempt %d: %s", status.task_id, status.attempt,
                         status.reason)
                self._drop(held, status.reason)
        for held in self._held.values():
            held.sent = held.acked
            held.unsent = []

    async def _write(self, call: _Call, outbox: asyncio.Queue[node_pb2.NodeMessage]) -> None:
        while True:
            msg = await outbox.get()
            if not outbox.empty():  # pack what is queued into one frame (bounded)
                batch = node_pb2.NodeMessage(batch=node_pb2.NodeBatch(messages=[msg]))
                size = msg.ByteSize()
                while not outbox.empty() and size < _FRAME_BYTES:
                    nxt = outbox.get_nowait()
                    batch.batch.messages.append(nxt)
                    size += nxt.ByteSize()
                msg = batch
            await call.write(msg)

    async def _heartbeats(self, interval: float) -> None:
        while True:
            self._send_heartbeat()
            await asyncio.sleep(interval)

    def _send_heartbeat(self) -> None:
        if self._outbox is None:
            return
        running = sum(1 for h in self._held.values() if h.run is not None and not h.finished)
        sessions = self._supervisor.in_use().get("browser_sessions", 0)
        self._reported_sessions = sessions
        load = pb.NodeLoad(load1=os.getloadavg()[0], running_tasks=running,
                           memory_used_mib=_memory_used_mib(), browser_sessions=sessions)
        # When the stream is backed up with reports, those prove liveness as well.
        with contextlib.suppress(asyncio.QueueFull):
            self._outbox.put_nowait(node_pb2.NodeMessage(
                heartbeat=node_pb2.Heartbeat(load=load, draining=self._draining)))

    # -- messages from the hub ------------------------------------------------------------
    def _on_message(self, msg: node_pb2.HubMessage) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "batch":
            with self._journal.batch():  # one journal commit for the whole frame
                for inner in msg.batch.messages:
                    self._on_message(inner)
        elif kind == "assign":
            self._on_assign(msg.assign)
        elif kind == "cancel":
            held = self._held.get((msg.cancel.task_id, msg.cancel.attempt))
            if held is not None:
                state = (State.TIMED_OUT if msg.cancel.state == pb.TIMED_OUT
                         else State.CANCELLED)
                self._cancel(held, state, msg.cancel.reason)
        elif kind == "stdin":
            held = self._held.get((msg.stdin.task_id, msg.stdin.attempt))
            if held is not None:
                self._stdin(held, msg.stdin.data, msg.stdin.eof)
        elif kind == "resize":
            held = self._held.get((msg.resize.task_id, msg.resize.attempt))
            if held is not None:
                held.size = (msg.resize.rows, msg.resize.cols)  # applied at start if early
                if held.run is not None:
                    held.run.resize(*held.size)
        elif kind == "ack":
            held = self._held.get((msg.ack.task_id, msg.ack.attempt))
            if held is not None:
                self._on_ack(held, msg.ack.acked_seq)
        elif kind == "reject":
            held = self._held.get((msg.reject.task_id, msg.reject.attempt))
            if held is not None:
                log.warning("hub rejected %s attempt %d: %s", msg.reject.task_id,
                            msg.reject.attempt, msg.reject.reason)
                self._drop(held, msg.reject.reason)
        elif kind == "drain":
            self._draining = True

    def _on_assign(self, assign: node_pb2.Assign) -> None:
        key = (assign.task_id, assign.attempt)
        if key in self._held:
            return  # a resend of an assignment we already hold
        self._journal.record_assign(assign, now=time.time())
        held = Held(assign)
        self._held[key] = held
        if self._runs is None:
            raise RuntimeError("assignments arrive only while the agent runs")
        self._runs.create_task(self._execute(held), name=f"task {assign.task_id}")

    def _cancel(self, held: Held, state: State, reason: str) -> None:
        if held.run is not None:
            held.run.cancel(state, reason)
        elif not held.finished:
            held.cancel = (state, reason)

    def _stdin(self, held: Held, data: bytes, eof: bool) -> None:
        """Queue input for the process; a pump hands it over as the process takes it."""
        for i in range(0, len(data), _STDIN_CHUNK):
            held.stdin.append(data[i:i + _STDIN_CHUNK])
        held.stdin_eof = held.stdin_eof or eof
        if held.run is not None and held.stdin_pump is None and self._runs is not None:
            held.stdin_pump = self._runs.create_task(self._pump_stdin(held))

    async def _pump_stdin(self, held: Held) -> None:
        run = held.run
        if run is None:
            return
        try:
            while held.stdin or held.stdin_eof:
                if held.finished or held.dropped:
                    return
                if not held.stdin:
                    run.close_stdin()
                    return
                try:
                    run.write_stdin(held.stdin[0])
                except InvalidArgument:
                    # The process is not reading: its backlog is full. Wait, don't drop.
                    await asyncio.sleep(_STDIN_RETRY_S)
                    continue
                held.stdin_written += len(held.stdin.popleft())
                self._send(node_pb2.NodeMessage(stdin_ack=node_pb2.StdinAck(
                    task_id=held.assign.task_id, attempt=held.assign.attempt,
                    bytes=held.stdin_written)))
        except CortexError as exc:  # e.g. stdin closed: the task was not interactive
            log.warning("stdin for %s dropped: %s", held.assign.task_id, exc)
            held.stdin.clear()
        finally:
            held.stdin_pump = None

    def _send(self, msg: node_pb2.NodeMessage) -> None:
        """Best effort: control messages lost with a connection are recomputed after it."""
        if self._outbox is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._outbox.put_nowait(msg)

    def _on_ack(self, held: Held, upto: int) -> None:
        if upto <= held.acked:
            return
        held.acked = upto
        self._journal.ack(held.assign.task_id, held.assign.attempt, upto)
        if held.finished and held.acked >= held.next_seq - 1 and not held.buffer:
            self._held.pop(held.key, None)
        self._acked.set()

    def _drop(self, held: Held, reason: str) -> None:
        held.dropped = True
        held.buffer.clear()
        held.unsent.clear()
        self._journal.drop(held.assign.task_id, held.assign.attempt)
        self._held.pop(held.key, None)
        if held.run is not None and not held.finished:
            held.run.cancel(State.CANCELLED, f"the hub no longer wants this attempt: {reason}")

    # -- running a task ---------------------------------------------------------------------
    async def _execute(self, held: Held) -> None:
        a = held.assign
        who = _span_attributes(a, self._id.node_id)
        with tracing.span("cortex.node.execute", parent=a.traceparent or a.spec.traceparent,
                          kind="consumer", attributes=who) as span:
            outcome = await self._outcome(held)
            if span is not None:
                span.set_attribute("cortex.state", outcome.state.label)
        self._mark_started(held)
        fin = node_pb2.Finished(state=int(outcome.state), reason=outcome.reason)  # type: ignore[arg-type]
        if outcome.exit_code is not None:
            fin.exit_code = outcome.exit_code
            fin.has_exit_code = True
        self._emit(held, node_pb2.NodeEvent(time=time.time(), finished=fin))
        held.finished = True
        self._flush()
        if self._supervisor.in_use().get("browser_sessions", 0) != self._reported_sessions:
            self._send_heartbeat()  # a session opened or closed: the hub places by it

    async def _outcome(self, held: Held) -> Outcome:
        """Run the assignment (inputs, process, outputs) to its outcome."""
        a = held.assign
        timeout = a.remaining_s if a.remaining_s > 0 else None
        if held.cancel is not None:
            outcome = Outcome(held.cancel[0], None, held.cancel[1])
        elif a.spec.inputs and (note := await NodeArtifacts(self._id).fetch_inputs(a.spec)):
            outcome = Outcome(State.FAILED, None, note)
        else:
            try:
                run = await self._supervisor.start(
                    a.task_id, a.attempt, _tenant_scoped(a.spec, a.tenant), timeout,
                    lambda stream, data: self._output(held, stream, data))
            except CortexError as exc:
                outcome = Outcome(State.FAILED, None, str(exc))
            else:
                held.run = run
                self._mark_started(held)
                if run.pid:
                    self._journal.record_pid(a.task_id, a.attempt, run.pid)
                if held.stdin or held.stdin_eof:
                    self._stdin(held, b"", held.stdin_eof)
                if held.size is not None:
                    run.resize(*held.size)
                if held.cancel is not None:
                    run.cancel(*held.cancel)
                outcome = _with_requested_timeout(await run.wait(), a.spec)
                if a.spec.artifacts:
                    outcome = await self._upload_outputs(held, outcome)
        return outcome

    async def _upload_outputs(self, held: Held, outcome: Outcome) -> Outcome:
        """Upload the spec's output globs before the task reports its end (so a finished
        task lists its files); a failed upload fails a task that had succeeded."""
        note = await NodeArtifacts(self._id).store_outputs(held.assign.task_id,
                                                           held.assign.spec)
        if note:
            self._output(held, pb.SYSTEM, f"cortex: {note}\n".encode())
        if note.startswith("uploading") and outcome.state is State.SUCCEEDED:
            return Outcome(State.FAILED, outcome.exit_code, note)
        return outcome

    def _mark_started(self, held: Held) -> None:
        if not held.started:
            held.started = True
            pid = held.run.pid if held.run is not None and held.run.pid else 0
            self._emit(held, node_pb2.NodeEvent(time=time.time(),
                                                started=node_pb2.Started(pid=pid)))

    def _output(self, held: Held, stream: int, data: bytes) -> None:
        self._mark_started(held)
        self._emit(held, node_pb2.NodeEvent(time=time.time(), output=pb.Output(
            stream=stream, data=data)))  # type: ignore[arg-type]

def _span_attributes(a: node_pb2.Assign, node_id: str) -> dict[str, str | int]:
    return {"cortex.task_id": a.task_id, "cortex.attempt": a.attempt, "cortex.tenant": a.tenant,
            "cortex.node_id": node_id, "cortex.skill": a.spec.skill or "shell"}


def _tenant_scoped(spec: pb.TaskSpec, tenant: str) -> pb.TaskSpec:
    """The spec with its session id qualified by the tenant, so two tenants' sessions of
    the same name never share a worker on a shared node."""
    if not spec.session_id:
        return spec
    scoped = pb.TaskSpec()
    scoped.CopyFrom(spec)
    scoped.session_id = f"{tenant or 'default'}/{spec.session_id}"
    return scoped


def _with_requested_timeout(outcome: Outcome, spec: pb.TaskSpec) -> Outcome:
    """Name the timeout the user asked for, not what was left of it when the node started
    the task (the deadline counts from submission, queueing included)."""
    if outcome.state is State.TIMED_OUT and spec.timeout_s:
        return Outcome(outcome.state, outcome.exit_code,
                       f"timed out after {spec.timeout_s:g} s (counted from submission)")
    return outcome


def _kill_leftover(pid: int) -> None:
    """Kill the process group a crashed agent left behind (its pgid is the task's pid)."""
    if pid <= 1:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, 9)


def _memory_used_mib() -> int:
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) for line in f}
        return (info["MemTotal"] - info.get("MemAvailable", 0)) // 1024
    except (OSError, KeyError, ValueError):
        return 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__

