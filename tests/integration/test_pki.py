"""Certificate lifecycle end to end: renewal, re-enrollment, revocation, CA rotation.

Real hub, real nodes, real TLS over loopback; time is injected where a day would pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import sys
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex._proto.cortex.v1 import node_pb2, node_pb2_grpc, pki_pb2, pki_pb2_grpc
from cortex.errors import NotFound, PermissionDenied
from cortex.hub.server import Hub
from cortex.node import _certtool
from cortex.node.agent import Agent
from cortex.node.identity import load_identity
from cortex.node.renewal import Renewer
from cortex.sdk import Client, ClientConfig, NodeState, TaskState
from cortex.store.base import CertificateRecord
from cortex.testing import running_hub, running_node

pytestmark = [pytest.mark.timeout(90), pytest.mark.asyncio]

HUB_SERVER_NAME = "cortex-hub"
PY = sys.executable
# Prints a line every 50 ms for `argv[1]` seconds' worth of lines, then exits 0.
TICKER = ("import sys, time\n"
          "for i in range(int(float(sys.argv[1]) * 20)):\n"
          "    print(i, flush=True)\n"
          "    time.sleep(0.05)\n")


def config(hub: Hub, token: str | None = None, ca_pem: bytes | None = None) -> ClientConfig:
    assert hub.ca is not None
    return ClientConfig(address=hub.address, token=token or hub.admin_token,
                        ca_pem=ca_pem or hub.ca.cert_pem)


def secure(address: str, ca_pem: bytes, key_pem: bytes | None = None,
           cert_pem: bytes | None = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem,
                                         certificate_chain=cert_pem)
    return grpc.aio.secure_channel(address, creds, options=[
        ("grpc.ssl_target_name_override", HUB_SERVER_NAME)])


async def local_child(tool: str, *args: object, **kwargs: object) -> object:
    """The real certificate tool, run in a thread instead of a spawned process (fast)."""
    return await asyncio.to_thread(getattr(_certtool, tool), *args, **kwargs)


def fake_clock(start: float) -> tuple[list[float], object, object]:
    now = [start]

    async def sleep(seconds: float) -> None:
        now[0] += seconds  # a day passes at once
        await asyncio.sleep(0)

    return now, (lambda: now[0]), sleep


def serial_of(chain: bytes) -> str:
    return format(x509.load_pem_x509_certificate(chain).serial_number, "x")


async def open_stream(hub: Hub, key_pem: bytes, cert_pem: bytes, ca_pem: bytes
                      ) -> node_pb2.HubMessage:
    """Connect to the node port as this identity, say hello, return the first answer."""
    async with secure(hub.node_address, ca_pem, key_pem, cert_pem) as channel:
        call = node_pb2_grpc.NodeServiceStub(channel).Connect()
        await call.write(node_pb2.NodeMessage(hello=node_pb2.Hello(
            name="probe", version="test", boot_id="probe")))
        answer = await asyncio.wait_for(call.read(), 15)
        call.cancel()
        assert answer is not grpc.aio.EOF
        return answer


def csr_for(key: ec.EllipticCurvePrivateKey, *, uri: str = "", cn: str = "n") -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]))
    if uri:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


# --- renewal ----------------------------------------------------------------------------


async def test_renewal_with_an_injected_clock_keeps_the_stream_and_the_running_task(
        hub: Hub, node: Agent, tmp_path: Path) -> None:
    """A day later (injected), the node renews with a new key over its live connection: the
    stream and a running task carry on, and the next connection presents the new cert."""
    assert hub.pki is not None
    old = node._id
    conn = hub.registry.get(old.node_id)
    assert conn is not None
    async with Client(config(hub)) as client:
        task = await client.submit(argv=[PY, "-c", TICKER, "2"])
        now, clock, sleep = fake_clock(time.time())
        renewer = Renewer(data_dir=tmp_path / "n1", name="n1", identity=lambda: node._id,
                          replace=node._set_identity, channel=lambda: node._channel_now,
                          clock=clock, sleep=sleep, child=local_child)  # type: ignore[arg-type]
        await renewer.step()
        assert now[0] >= old.not_before + 0.5 * (old.not_after - old.not_before)
        new = node._id
        assert renewer.renewals == 1
        assert serial_of(new.cert_pem) != serial_of(old.cert_pem)
        assert new.key_pem != old.key_pem
        assert new.not_after > old.not_after - 1
        on_disk = load_identity(tmp_path / "n1")
        assert on_disk is not None
        assert on_disk.cert_pem == new.cert_pem
        assert hub.registry.get(old.node_id) is conn
        assert not conn.closed
        done = await client.wait(task.id)
        assert done.state == TaskState.SUCCEEDED
        # The next connection presents the renewed certificate.
        node.connected.clear()
        conn.close()
        await asyncio.wait_for(node.connected.wait(), 30)
        fresh = hub.registry.get(old.node_id)
        assert fresh is not None
        assert fresh is not conn
        assert fresh.node.cert_not_after == pytest.approx(new.not_after)
        assert (await client.run(argv=["echo", "renewed"])).stdout == b"renewed\n"


async def test_a_node_renews_by_itself_at_a_short_lifetime(tmp_path: Path) -> None:
    """With 8 s certificates the agent renews on its own (key made in a child process)."""
    async with running_hub(tmp_path / "hub", node_cert_ttl_s=8.0) as hub, \
            running_node(hub, tmp_path / "n1") as agent:
        first = agent._id
        await asyncio.wait_for(agent.renewer.renewed.wait(), 30)
        assert serial_of(agent._id.cert_pem) != serial_of(first.cert_pem)
        assert agent._id.key_pem != first.key_pem


# --- re-enrollment after expiry ----------------------------------------------------------


async def expired_identity(hub: Hub, node_id: str, *, expired_for_s: float
                           ) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """An enrolled node `node_id` whose only certificate expired `expired_for_s` ago."""
    assert hub.ca is not None
    await hub.store.upsert_node("default", pb.Node(id=node_id, tenant="default", name=node_id,
                                                   state=pb.OFFLINE))
    key = ec.generate_private_key(ec.SECP256R1())
    issued = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=expired_for_s + 3600)
    chain, cert = hub.ca.sign_node_csr(csr_for(key), tenant="default", node_id=node_id,
                                       now=issued, ttl=dt.timedelta(seconds=3600))
    await hub.store.record_issued_certificate("default", CertificateRecord(
        serial=format(cert.serial_number, "x"), tenant="default", node_id=node_id,
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(), issuer=hub.ca.node_issuer))
    return key, chain


async def reenroll_call(hub: Hub, key: ec.EllipticCurvePrivateKey, chain: bytes,
                        *, proof_key: ec.EllipticCurvePrivateKey | None = None
                        ) -> pki_pb2.RenewResponse:
    assert hub.ca is not None
    csr = csr_for(ec.generate_private_key(ec.SECP256R1()))
    proof = (proof_key or key).sign(_certtool.REENROLL_CONTEXT + csr, ec.ECDSA(hashes.SHA256()))
    async with secure(hub.address, hub.ca.cert_pem) as channel:
        return await pki_pb2_grpc.NodeCertServiceStub(channel).Reenroll(
            pki_pb2.ReenrollRequest(certificate_pem=chain, csr_pem=csr, proof=proof))


async def test_an_expired_node_reenrolls_within_the_grace_and_reconnects(
        hub: Hub, node: Agent, tmp_path: Path) -> None:
    """A node whose certificate expired an hour ago gets a new one and connects with it."""
    node_id = "n-expired"
    key, chain = await expired_identity(hub, node_id, expired_for_s=3600)
    stale = dataclasses.replace(node._id, key_pem=key_pem(key), cert_pem=chain, not_before=0.0,
                                not_after=0.0)
    replaced = []
    renewer = Renewer(data_dir=tmp_path / "stale", name="n1", identity=lambda: stale,
                      replace=replaced.append, channel=lambda: None, child=local_child)  # type: ignore[arg-type]
    await renewer.step()
    new = replaced[-1]
    assert new.not_after > time.time()
    saved = load_identity(tmp_path / "stale")
    assert saved is not None
    assert saved.cert_pem == new.cert_pem
    assert serial_of(new.cert_pem) != serial_of(chain)
    welcome = await open_stream(hub, new.key_pem, new.cert_pem, new.ca_pem)
    assert welcome.WhichOneof("kind") == "welcome"
    assert welcome.welcome.node_id == node_id


async def test_reenrollment_past_the_grace_needs_a_new_join_token(hub: Hub) -> None:
    """Four days after expiry (grace 72 h) the hub refuses, saying what to do."""
    key, chain = await expired_identity(hub, "n-expired", expired_for_s=4 * 86400)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await reenroll_call(hub, key, chain)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "new join token" in (err.value.details() or "")


async def test_reenrollment_needs_proof_of_the_old_key(hub: Hub) -> None:
    """Holding the expired certificate is not enough: the proof must verify with its key."""
    key, chain = await expired_identity(hub, "n-expired", expired_for_s=60)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await reenroll_call(hub, key, chain, proof_key=ec.generate_private_key(ec.SECP256R1()))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "proof" in (err.value.details() or "")


# --- revocation -------------------------------------------------------------------------


async def test_revoke_cuts_the_stream_fails_tasks_over_and_refuses_the_node(
        hub: Hub, node: Agent, tmp_path: Path) -> None:
    """Revocation: the live stream ends, the running task is lost and retried on the other
    node, and the revoked node can neither reconnect nor renew."""
    async with running_node(hub, tmp_path / "n2") as other, Client(config(hub)) as client:
        victim = node._id
        task = await client.submit(argv=[PY, "-c", TICKER, "3"], max_attempts=2)
        async for ev in client.watch(task.id):
            if ev.WhichOneof("kind") == "output":
                break  # it runs: its first line arrived
        revoked_id = (await client.get(task.id)).node_id
        agent = node if revoked_id == victim.node_id else other
        ident = agent._id
        live = hub.registry.get(revoked_id)
        assert live is not None
        resp = await client.revoke_node(revoked_id, reason="stolen laptop")
        assert resp.was_connected
        assert resp.tasks_lost == 1
        assert resp.certificates_revoked >= 1
        assert live.closed  # the stream was cut before the call returned
        final = await client.wait(task.id)
        assert final.state == TaskState.SUCCEEDED
        assert final.attempt == 2
        assert final.node_id != revoked_id
        nodes = {n.id: n.state for n in await client.list_nodes()}
        assert nodes[revoked_id] == NodeState.REVOKED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await open_stream(hub, ident.key_pem, ident.cert_pem, ident.ca_pem)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "revoked" in (err.value.details() or "")
        async with secure(hub.node_address, ident.ca_pem, ident.key_pem,
                          ident.cert_pem) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pki_pb2_grpc.NodeCertServiceStub(channel).Renew(pki_pb2.RenewRequest(
                    csr_pem=csr_for(ec.generate_private_key(ec.SECP256R1()))))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_revoked_node_stops_the_work_the_hub_failed_over(
        hub: Hub, node: Agent) -> None:
    """Refused as revoked on its reconnect, the agent kills the task it was running (the hub
    already marked it lost), instead of doing the work a second time."""
    async with Client(config(hub)) as client:
        task = await client.submit(argv=["sleep", "600"])  # ends only if killed
        async for ev in client.watch(task.id):
            if ev.WhichOneof("kind") == "state" and ev.state.state == TaskState.RUNNING:
                break
        await client.revoke_node(node._id.node_id)
        assert (await client.get(task.id)).state == TaskState.LOST
    held = node._held[(task.id, 1)]
    while not held.finished:  # woken by the agent at each event of its tasks
        node._dirty.clear()
        await node._dirty.wait()
    assert held.finished


async def test_only_admins_revoke_and_only_their_own_tenants_nodes(
        hub: Hub, node: Agent, tmp_path: Path) -> None:
    """An agent token may not revoke, an operator may not rotate (only a hub-admin rotates
    the CA every tenant shares); an admin of another tenant finds no such node."""
    from cortex.hub.auth import issue_api_token

    await hub.store.ensure_tenant("other", now=time.time())
    agent = await issue_api_token(hub.store, tenant="default", role="agent", name="ag",
                                  now=time.time())
    operator = await issue_api_token(hub.store, tenant="default", role="operator", name="op",
                                     now=time.time())
    foreign = await issue_api_token(hub.store, tenant="other", role="admin", name="adm",
                                    now=time.time())
    async with Client(config(hub, agent)) as client:
        with pytest.raises(PermissionDenied, match="may not call RevokeNode"):
            await client.revoke_node(node._id.node_id)
    async with Client(config(hub, operator)) as client:
        with pytest.raises(PermissionDenied, match="needs hub-admin"):
            await client.rotate_ca()
    async with Client(config(hub, foreign)) as client:
        with pytest.raises(NotFound):
            await client.revoke_node(node._id.node_id)
        with pytest.raises(PermissionDenied, match="needs hub-admin"):
            await client.rotate_ca()
    assert hub.registry.get(node._id.node_id) is not None


# --- rotation ---------------------------------------------------------------------------


async def test_rotation_with_tasks_running_throughout(hub: Hub, node: Agent,
                                                      tmp_path: Path) -> None:
    """Rotate the intermediate, then the root, while tasks run: none fails; old clients,
    renewed nodes and newly enrolled nodes all work; status shows who holds what."""
    assert hub.ca is not None
    legacy_ca = hub.ca.cert_pem  # what clients and nodes held before any rotation
    async with Client(config(hub)) as client:
        tasks = [await client.submit(argv=[PY, "-c", TICKER, "3"]) for _ in range(4)]
        first = await client.rotate_ca()
        assert [a.name for a in first.authorities if a.kind == "intermediate"
                and a.active] == ["int-2"]
        second = await client.rotate_ca(root=True)
        roots = [a for a in second.authorities if a.kind == "root"]
        assert [r.name for r in roots] == ["ca", "root-2"]
        assert second.issuer == "int-3/root-2"
        # int-3 is cross-signed: one certificate from each root.
        assert sorted(a.signed_by for a in second.authorities if a.name == "int-3") == [
            "ca", "root-2"]
        assert [c.current for c in second.certificates] == [False]
        # A client holding only the old root still verifies the hub (served via it).
        async with Client(config(hub, ca_pem=legacy_ca)) as old_client:
            assert len(await old_client.list_nodes()) == 1
        # The node renews onto the new chain and gets the new bundle, then reconnects.
        _now, clock, sleep = fake_clock(time.time())
        renewer = Renewer(data_dir=tmp_path / "n1", name="n1", identity=lambda: node._id,
                          replace=node._set_identity, channel=lambda: node._channel_now,
                          clock=clock, sleep=sleep, child=local_child)  # type: ignore[arg-type]
        await renewer.step()
        assert node._id.ca_pem == hub.ca.cert_pem
        conn = hub.registry.get(node._id.node_id)
        assert conn is not None
        node.connected.clear()
        conn.close()
        await asyncio.wait_for(node.connected.wait(), 30)
        # A node enrolled after the rotation works too.
        async with running_node(hub, tmp_path / "n2") as fresh:
            assert fresh._id.ca_pem == hub.ca.cert_pem
            more = [await client.submit(argv=[PY, "-c", TICKER, "0.5"]) for _ in range(4)]
            for t in tasks + more:
                assert (await client.wait(t.id)).state == TaskState.SUCCEEDED
        status = await client.ca_status()
        mine = [c for c in status.certificates if c.node_id == node._id.node_id]
        assert [c.current for c in mine] == [True], status.certificates  # renewed onto it
        assert [c.issuer for c in mine] == ["int-3/root-2"]


async def test_old_single_ca_data_dir_is_migrated_and_old_identities_keep_working(
        tmp_path: Path) -> None:
    """A data dir with only ca.key/ca.pem: the CA becomes the root, an intermediate is
    added, join tokens keep the same pin, and a node enrolled before keeps connecting."""
    from cortex.hub._x509 import ca_certificate, new_key, pem
    from cortex.hub._x509 import key_pem as kp

    ca_dir = tmp_path / "hub" / "ca"
    ca_dir.mkdir(parents=True)
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    cert = ca_certificate(subject="Cortex root CA", public=key.public_key(), issuer=None,
                          issuer_key=key, not_before=now - dt.timedelta(minutes=1),
                          not_after=now + dt.timedelta(days=3650), path_length=1)
    (ca_dir / "ca.key").write_bytes(kp(key))
    (ca_dir / "ca.pem").write_bytes(pem(cert))
    async with running_hub(tmp_path / "hub") as hub:
        assert hub.ca is not None
        assert hub.ca.cert_pem == pem(cert)
        assert (ca_dir / "int-1.key").exists()
        assert (ca_dir / "state.json").exists()
        async with running_node(hub, tmp_path / "n1") as agent, \
                Client(config(hub, ca_pem=pem(cert))) as client:
            assert agent._id.ca_pem == pem(cert)
            assert (await client.run(argv=["echo", "migrated"])).stdout == b"migrated\n"


def served_chain(address: str) -> list[x509.Certificate]:
    """The certificate chain the hub presents on a new handshake (not verified here)."""
    import socket
    import ssl

    host, _, port = address.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=HUB_SERVER_NAME) as tls:
        chain = tls._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    return [x509.load_der_x509_certificate(c.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
            for c in chain]


async def test_the_serving_certificate_is_swapped_live(hub: Hub, node: Agent) -> None:
    """After a rotation the next handshake on either port gets a certificate from the new
    intermediate, without a restart; a connection opened before keeps working."""
    async with Client(config(hub)) as client:
        assert len(await client.list_nodes()) == 1  # this client's connection predates it
        before = await asyncio.to_thread(served_chain, hub.address)
        assert before[1].subject.rfc4514_string() == "CN=Cortex issuing CA 1"
        await client.rotate_ca()
        for address in (hub.address, hub.node_address):
            after = await asyncio.to_thread(served_chain, address)
            assert after[1].subject.rfc4514_string() == "CN=Cortex issuing CA 2"
            assert after[0].serial_number != before[0].serial_number
        assert len(await client.list_nodes()) == 1
