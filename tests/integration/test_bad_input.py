"""Bad input at every door of the hub: malformed specs, unknown ids, wrong credentials,
oversized frames, foreign certificates, forged node reports, bad and replayed join tokens.

Each refusal must carry the right CortexError class (or gRPC status) and a message that
says what is wrong; and the hub must keep serving afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cortex._proto.cortex.v1 import (
    common_pb2,
    enroll_pb2,
    enroll_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from cortex.errors import Conflict, InvalidArgument, NotFound, PermissionDenied
from cortex.hub.server import Hub
from cortex.node.agent import Agent
from cortex.node.enroll import Identity, enroll
from cortex.sdk import Client, ClientConfig, ConfigError, NodeState, TaskSpec, TaskState
from cortex.sdk import OutputStream as Stream

pytestmark = pytest.mark.timeout(60)

PY = sys.executable
HUB_SERVER_NAME = "cortex-hub"
UNKNOWN_TASK = "t-0000000000doesnotexist"
MiB = 1024 * 1024
# Answers from the hub arrive at once on loopback; this only turns a hang into a failure.
ANSWER_WITHIN_S = 15
GATED = (
    "import os, sys, time\n"
    "print('first', flush=True)\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    time.sleep(0.01)\n"
    "print('second', flush=True)\n"
)


def shell_spec(**shell: Any) -> TaskSpec:
    """A TaskSpec built by hand, without the SDK's checks (so the hub's are what count)."""
    spec = TaskSpec(skill="shell")
    for key, value in shell.items():
        if key == "env":
            spec.shell.env.update(value)
        elif key == "argv":
            spec.shell.argv.extend(value)
        elif key == "labels":
            spec.labels.update(value)
        elif key == "timeout":
            spec.timeout_s = value
        elif key == "max_attempts":
            spec.retry.max_attempts = value
        elif key in ("skill", "priority"):
            setattr(spec, key, value)
        else:
            setattr(spec.shell, key, value)
    return spec


# --- task specs: the SDK refuses them locally, and the hub refuses them too ---------------

BAD_SPECS = [
    pytest.param({"argv": []}, "exactly one of argv", id="empty-argv"),
    pytest.param({"argv": ["true"], "command": "true"}, "exactly one of argv",
                 id="argv-and-command"),
    pytest.param({"command": "x" * (64 * 1024 + 1)}, "the limit is 65536",
                 id="command-over-64KiB"),
    pytest.param({"argv": ["cat"], "stdin": b"x" * (4 * MiB + 1)}, "shell.stdin",
                 id="stdin-over-4MiB"),
    pytest.param({"argv": ["env"], "env": {"A=B": "1"}}, "'A=B' is not a valid variable",
                 id="env-key-with-equals"),
    pytest.param({"argv": ["true"], "labels": {"bad key": "x"}}, "key 'bad key'",
                 id="label-key-with-space"),
    pytest.param({"argv": ["true"], "timeout": 8 * 86400.0}, "timeout: must be between",
                 id="timeout-over-7-days"),
    pytest.param({"argv": ["true"], "max_attempts": 11}, "max_attempts: at most 10",
                 id="too-many-attempts"),
    pytest.param({"argv": ["true"], "priority": 5000}, "priority: must be between",
                 id="priority-out-of-range"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("options", "needle"), BAD_SPECS)
async def test_sdk_refuses_a_bad_spec_before_sending_it(
        client: Client, options: dict[str, Any], needle: str) -> None:
    """The SDK raises InvalidArgument naming the problem, and nothing reaches the hub."""
    with pytest.raises(InvalidArgument, match=needle) as err:
        await client.submit(**options)
    assert len(str(err.value)) < 1000, "the message should name the problem, not echo input"
    assert await client.list_tasks() == []


@pytest.mark.asyncio
@pytest.mark.parametrize(("options", "needle"), BAD_SPECS)
async def test_hub_refuses_a_bad_spec_sent_as_a_raw_taskspec(
        client: Client, options: dict[str, Any], needle: str) -> None:
    """The hub itself refuses the raw spec with InvalidArgument naming the problem."""
    with pytest.raises(InvalidArgument, match=needle):
        await client.submit(shell_spec(**options))
    assert await client.list_tasks() == []


@pytest.mark.asyncio
async def test_hub_lists_every_problem_of_a_spec_at_once(client: Client) -> None:
    """A spec with several problems is refused with all of them in one message."""
    spec = shell_spec(argv=["true"], command="true", env={"A=B": "1"})
    with pytest.raises(InvalidArgument) as err:
        await client.submit(spec)
    assert "exactly one of argv" in str(err.value)
    assert "'A=B'" in str(err.value)


# --- ids and states ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_get_of_an_unknown_task_is_not_found(client: Client) -> None:
    """get() of a task id the hub never issued raises NotFound naming the id."""
    with pytest.raises(NotFound, match=UNKNOWN_TASK):
        await client.get(UNKNOWN_TASK)


@pytest.mark.asyncio
async def test_watch_of_an_unknown_task_is_not_found(client: Client) -> None:
    """watch() of an unknown task raises NotFound at once (it does not retry)."""
    events = client.watch(UNKNOWN_TASK)
    with pytest.raises(NotFound, match=UNKNOWN_TASK):
        async with contextlib.aclosing(events):
            await asyncio.wait_for(anext(events), ANSWER_WITHIN_S)


@pytest.mark.asyncio
async def test_cancel_of_an_unknown_task_is_not_found(client: Client) -> None:
    """cancel() of an unknown task raises NotFound naming the id."""
    with pytest.raises(NotFound, match=UNKNOWN_TASK):
        await client.cancel(UNKNOWN_TASK)


@pytest.mark.asyncio
@pytest.mark.parametrize("task_id", ["", "t-" + "x" * 200, "t-\u00e9t\u00e9"])
async def test_malformed_task_id_is_invalid(client: Client, task_id: str) -> None:
    """An empty, overlong or non-ASCII task id is InvalidArgument saying what an id is."""
    with pytest.raises(InvalidArgument, match="task_id"):
        await client.get(task_id)


@pytest.mark.asyncio
async def test_cancel_of_a_finished_task_is_a_conflict(client: Client, node: Agent) -> None:
    """Cancelling a task that already finished raises Conflict saying it is finished."""
    done = await client.run(argv=["true"])
    assert done.ok
    with pytest.raises(Conflict, match="already finished"):
        await client.cancel(done.task.id)
    assert (await client.get(done.task.id)).state == TaskState.SUCCEEDED


# --- credentials -----------------------------------------------------------------------


def client_config(hub: Hub, token: str) -> ClientConfig:
    assert hub.ca is not None
    return ClientConfig(address=hub.address, token=token, ca_pem=hub.ca.cert_pem)


def test_client_config_refuses_an_empty_token(hub: Hub) -> None:
    """A client cannot even be configured without a token: ConfigError says which one."""
    with pytest.raises(ConfigError, match="token"):
        client_config(hub, "")


@pytest.mark.asyncio
async def test_call_without_a_token_is_permission_denied(
        hub: Hub, raw_channel: grpc.aio.Channel) -> None:
    """A call with no authorization metadata is PERMISSION_DENIED, telling how to pass one."""
    stub = tasks_pb2_grpc.TaskServiceStub(raw_channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.List(tasks_pb2.ListTasksRequest())
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no API token" in (err.value.details() or "")


@pytest.mark.asyncio
@pytest.mark.parametrize(("token", "needle"), [
    ("ctk_x.y", "unknown API token"),
    ("not-a-token", "malformed API token"),
])
async def test_wrong_token_is_permission_denied(
        hub: Hub, client: Client, token: str, needle: str) -> None:
    """A bogus or malformed API token gets PermissionDenied on every call; nothing stored."""
    async with Client(client_config(hub, token)) as intruder:
        with pytest.raises(PermissionDenied, match=needle):
            await intruder.list_tasks()
        with pytest.raises(PermissionDenied, match=needle):
            await intruder.submit(argv=["true"])
        with pytest.raises(PermissionDenied, match=needle):
            await intruder.list_nodes()
    assert await client.list_tasks() == []


# --- transport limits ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_frame_over_the_max_message_size_is_refused_and_the_hub_keeps_serving(
        hub: Hub, client: Client, node: Agent, raw_channel: grpc.aio.Channel) -> None:
    """A 20 MB frame is refused RESOURCE_EXHAUSTED; nothing stored, the hub keeps serving."""
    stub = tasks_pb2_grpc.TaskServiceStub(raw_channel)
    metadata = (("authorization", f"Bearer {hub.admin_token}"),)
    huge = shell_spec(argv=["cat"], stdin=b"x" * (20 * 1000 * 1000))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Submit(tasks_pb2.SubmitRequest(spec=huge), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    assert await client.list_tasks() == []
    again = await stub.List(tasks_pb2.ListTasksRequest(), metadata=metadata)
    assert list(again.tasks) == []
    result = await client.run(argv=["echo", "still serving"])
    assert result.ok
    assert result.stdout == b"still serving\n"


@pytest.mark.asyncio
async def test_malformed_protobuf_frame_is_refused_and_the_hub_keeps_serving(
        hub: Hub, client: Client, node: Agent, raw_channel: grpc.aio.Channel) -> None:
    """Bytes that are not a SubmitRequest are refused with an error; nothing is stored."""
    submit = raw_channel.unary_unary("/cortex.v1.TaskService/Submit")
    metadata = (("authorization", f"Bearer {hub.admin_token}"),)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(b"\xff\xff\xff\xff not protobuf", metadata=metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in (err.value.details() or "")
    assert await client.list_tasks() == []
    result = await client.run(argv=["echo", "still serving"])
    assert result.stdout == b"still serving\n"


# --- the node port: mTLS with this hub's CA only -----------------------------------------


def foreign_identity(node_id: str) -> tuple[bytes, bytes]:
    """(key PEM, chain PEM) of a node certificate from a throwaway CA, claiming `node_id`
    in the default tenant exactly as the hub's own certificates do."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Cortex root CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    uri = f"spiffe://cortex/tenant/default/node/{node_id}"
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(ca_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    pem = serialization.Encoding.PEM
    return key_pem, leaf.public_bytes(pem) + ca.public_bytes(pem)


def node_channel(address: str, ca_pem: bytes, key_pem: bytes | None = None,
                 cert_pem: bytes | None = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem,
                                         certificate_chain=cert_pem)
    return grpc.aio.secure_channel(address, creds, options=[
        ("grpc.ssl_target_name_override", HUB_SERVER_NAME)])


def hello(name: str) -> node_pb2.NodeMessage:
    # No skills: the dispatcher never gives this connection a task.
    return node_pb2.NodeMessage(hello=node_pb2.Hello(name=name, version="test", boot_id=name))


async def connect_and_read(channel: grpc.aio.Channel) -> node_pb2.HubMessage:
    """Open NodeService.Connect, say hello, and read the hub's first answer."""
    call = node_pb2_grpc.NodeServiceStub(channel).Connect()
    try:
        await call.write(hello("intruder"))
        answer = await asyncio.wait_for(call.read(), ANSWER_WITHIN_S)
        if answer is grpc.aio.EOF:
            raise AssertionError("the hub ended the stream without a status")
        return answer
    finally:
        call.cancel()


async def assert_hub_healthy(client: Client) -> None:
    """The real node is still online and the hub still runs tasks on it."""
    nodes = await client.list_nodes()
    assert [n.state for n in nodes if n.name == "n1"] == [NodeState.ONLINE]
    result = await client.run(argv=["echo", "ok"])
    assert result.ok
    assert result.stdout == b"ok\n"


@pytest.mark.asyncio
async def test_node_with_a_certificate_from_another_ca_cannot_connect(
        hub: Hub, client: Client, node: Agent) -> None:
    """A foreign-CA certificate (claiming a real node's id) cannot open the node stream."""
    assert hub.ca is not None
    (real,) = await client.list_nodes()
    key_pem, chain_pem = foreign_identity(real.id)
    channel = node_channel(hub.node_address, hub.ca.cert_pem, key_pem, chain_pem)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await connect_and_read(channel)
    finally:
        await channel.close(None)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    await assert_hub_healthy(client)


@pytest.mark.asyncio
async def test_node_without_a_client_certificate_cannot_connect(
        hub: Hub, client: Client, node: Agent) -> None:
    """A TLS connection to the node port without any client certificate is refused."""
    assert hub.ca is not None
    channel = node_channel(hub.node_address, hub.ca.cert_pem)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await connect_and_read(channel)
    finally:
        await channel.close(None)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    await assert_hub_healthy(client)


class EnrolledStream:
    """A hand-driven NodeService stream under a real, enrolled node identity."""

    def __init__(self, ident: Identity) -> None:
        self.ident = ident
        self.channel = node_channel(ident.node_address, ident.ca_pem, ident.key_pem,
                                    ident.cert_pem)
        self.call = node_pb2_grpc.NodeServiceStub(self.channel).Connect()

    async def read(self) -> node_pb2.HubMessage:
        msg = await asyncio.wait_for(self.call.read(), ANSWER_WITHIN_S)
        assert msg is not grpc.aio.EOF, "the hub ended the node stream"
        return msg

    async def report(self, task_id: str, attempt: int, *events: node_pb2.NodeEvent,
                     first_seq: int = 1) -> node_pb2.HubMessage:
        """Send one TaskReport and return the hub's answer to it."""
        await self.call.write(node_pb2.NodeMessage(report=node_pb2.TaskReport(
            task_id=task_id, attempt=attempt, first_seq=first_seq, events=events)))
        return await self.read()

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close(None)


@pytest_asyncio.fixture
async def rogue(hub: Hub, tmp_path: Path) -> AsyncIterator[EnrolledStream]:
    """An enrolled node identity speaking the node protocol by hand, welcomed by the hub."""
    token = await hub.join_token()
    ident = await asyncio.to_thread(enroll, hub=hub.address, token=token,
                                    data_dir=tmp_path / "rogue", name="rogue")
    stream = EnrolledStream(ident)
    try:
        await stream.call.write(hello("rogue"))
        welcome = await stream.read()
        assert welcome.WhichOneof("kind") == "welcome", welcome
        assert welcome.welcome.node_id == ident.node_id
        yield stream
    finally:
        await stream.close()


def forged_events() -> list[node_pb2.NodeEvent]:
    now = time.time()
    return [
        node_pb2.NodeEvent(time=now, started=node_pb2.Started(pid=4242)),
        node_pb2.NodeEvent(time=now, output=common_pb2.Output(
            stream=Stream.STDOUT, data=b"forged")),
        node_pb2.NodeEvent(time=now, finished=node_pb2.Finished(
            state=TaskState.SUCCEEDED, exit_code=0, has_exit_code=True)),
    ]


def assert_rejected(answer: node_pb2.HubMessage, task_id: str, attempt: int) -> str:
    assert answer.WhichOneof("kind") == "reject", f"the hub answered {answer}"
    assert answer.reject.task_id == task_id
    assert answer.reject.attempt == attempt
    assert answer.reject.reason
    return answer.reject.reason


@pytest.mark.asyncio
async def test_report_for_a_task_never_assigned_is_rejected(
        client: Client, rogue: EnrolledStream) -> None:
    """A report for a task id the hub never issued is answered with Reject; no task appears."""
    answer = await rogue.report("t-madeup0000000000000", 1, *forged_events())
    reason = assert_rejected(answer, "t-madeup0000000000000", 1)
    assert "unknown" in reason, reason
    with pytest.raises(NotFound):
        await client.get("t-madeup0000000000000")
    assert await client.list_tasks() == []


@pytest.mark.asyncio
async def test_report_for_a_finished_task_is_rejected(
        client: Client, node: Agent, rogue: EnrolledStream) -> None:
    """A report for an already finished task is answered with Reject and changes nothing."""
    done = await client.run(argv=["echo", "real"])
    assert done.ok
    before = await client.get(done.task.id)
    answer = await rogue.report(done.task.id, 1, *forged_events(),
                                first_seq=before.attempts[0].acked_seq + 1)
    assert_rejected(answer, done.task.id, 1)
    assert await client.get(done.task.id) == before
    await assert_hub_healthy(client)


@pytest.mark.asyncio
async def test_report_for_a_task_running_on_another_node_is_rejected(
        client: Client, node: Agent, rogue: EnrolledStream, tmp_path: Path) -> None:
    """A report for a task assigned to another node is rejected; the real run is untouched."""
    gate = tmp_path / "gate"
    task = await client.submit(argv=[PY, "-c", GATED, str(gate)], timeout=30)
    events = client.watch(task.id)
    async with contextlib.aclosing(events):
        async for ev in events:
            if ev.HasField("output") and b"first" in ev.output.data:
                break
    running = await client.get(task.id)
    assert running.node_id != rogue.ident.node_id
    answer = await rogue.report(task.id, 1, *forged_events(),
                                first_seq=running.attempts[0].acked_seq + 1)
    assert_rejected(answer, task.id, 1)
    gate.touch()
    final = await client.wait(task.id)
    assert final.state == TaskState.SUCCEEDED
    assert final.node_id == running.node_id
    history = client.watch(task.id, follow=False)
    async with contextlib.aclosing(history):
        out = b"".join([ev.output.data async for ev in history if ev.HasField("output")])
    assert out == b"first\nsecond\n"


# --- enrollment ---------------------------------------------------------------------------


def csr_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.mark.asyncio
@pytest.mark.parametrize("token", ["", "garbage", "cjt_nodot", "cjt_.secret",
                                   "ctk_abc.def#sha256:00"])
async def test_malformed_join_token_is_refused_by_the_node_before_dialing(
        hub: Hub, tmp_path: Path, token: str) -> None:
    """enroll() with a malformed join token raises InvalidArgument naming the format."""
    with pytest.raises(InvalidArgument, match="malformed join token"):
        await asyncio.to_thread(enroll, hub=hub.address, token=token,
                                data_dir=tmp_path / "n", name="n")
    assert not (tmp_path / "n" / "node.key").exists()


@pytest.mark.asyncio
@pytest.mark.parametrize("token", ["garbage", "cjt_nodot#sha256:00", "cjt_a.b#md5:00"])
async def test_malformed_join_token_is_refused_by_the_hub(
        client: Client, raw_channel: grpc.aio.Channel, token: str) -> None:
    """The hub answers Enroll with a malformed token INVALID_ARGUMENT naming the format."""
    stub = enroll_pb2_grpc.EnrollServiceStub(raw_channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Enroll(enroll_pb2.EnrollRequest(token=token, csr_pem=csr_pem(), name="x"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed join token" in (err.value.details() or "")
    assert await client.list_nodes() == []


@pytest.mark.asyncio
async def test_join_token_with_a_wrong_secret_is_refused(
        hub: Hub, client: Client, tmp_path: Path) -> None:
    """A join token whose id exists but whose secret is wrong is PermissionDenied."""
    token = await hub.join_token()
    body, _, pin = token.partition("#")
    token_id = body.partition(".")[0]
    forged = f"{token_id}.not-the-secret#{pin}"
    with pytest.raises(PermissionDenied, match="unknown join token"):
        await asyncio.to_thread(enroll, hub=hub.address, token=forged,
                                data_dir=tmp_path / "n", name="n")
    assert await client.list_nodes() == []


@pytest.mark.asyncio
async def test_join_token_pinning_another_ca_is_refused(
        hub: Hub, client: Client, tmp_path: Path) -> None:
    """A join token pinning a CA the hub does not present is refused before enrolling."""
    token = await hub.join_token()
    body, _, _ = token.partition("#")
    wrong_pin = f"{body}#sha256:{'0' * 64}"
    with pytest.raises(PermissionDenied, match="does not present the CA pinned"):
        await asyncio.to_thread(enroll, hub=hub.address, token=wrong_pin,
                                data_dir=tmp_path / "n", name="n")
    assert await client.list_nodes() == []


@pytest.mark.asyncio
async def test_replayed_join_token_is_refused(
        hub: Hub, client: Client, tmp_path: Path) -> None:
    """A join token works once; replaying it is PermissionDenied saying "already used"."""
    token = await hub.join_token()
    first = await asyncio.to_thread(enroll, hub=hub.address, token=token,
                                    data_dir=tmp_path / "n1", name="n1")
    with pytest.raises(PermissionDenied, match="already used"):
        await asyncio.to_thread(enroll, hub=hub.address, token=token,
                                data_dir=tmp_path / "n2", name="n2")
    assert [n.id for n in await client.list_nodes()] == [first.node_id]
    assert not (tmp_path / "n2" / "node.key").exists()


@pytest.mark.asyncio
async def test_a_second_hub_on_a_taken_port_fails_with_a_clear_error(
        hub: Hub, tmp_path: Path) -> None:
    """Starting a hub on a port another hub holds fails at once, naming the port."""
    from cortex.errors import Unavailable
    from cortex.hub.config import HubConfig
    from cortex.hub.server import Hub as HubServer

    second = HubServer(HubConfig(data_dir=tmp_path / "second", port=hub.port, node_port=0,
                                 client_file=tmp_path / "second.json"))
    with pytest.raises(Unavailable, match=f"cannot listen on 127.0.0.1:{hub.port}"):
        await second.start()
