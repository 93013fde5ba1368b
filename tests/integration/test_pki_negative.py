"""Certificate misuse with real TLS material: each is refused, precisely, and the hub
keeps serving. (Wrong CA, no client certificate, replayed and foreign-pinned join tokens
are in test_bad_input.py.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cortex._proto.cortex.v1 import (
    enroll_pb2,
    enroll_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    pki_pb2,
    pki_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from cortex.errors import NotFound
from cortex.hub._x509 import identity_from_pem
from cortex.hub.server import Hub
from cortex.node.agent import Agent
from cortex.node.enroll import enroll
from cortex.sdk import Client
from cortex.store.base import CertificateRecord

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio]
HUB_SERVER_NAME = "cortex-hub"


def secure(address: str, ca_pem: bytes, key_pem: bytes | None = None,
           cert_pem: bytes | None = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem,
                                         certificate_chain=cert_pem)
    return grpc.aio.secure_channel(address, creds, options=[
        ("grpc.ssl_target_name_override", HUB_SERVER_NAME)])


def new_csr(*, uri: str = "", cn: str = "n", pad: int = 0) -> tuple[bytes, bytes]:
    """(key PEM, CSR PEM); `pad` bytes of extra subject make an oversized CSR."""
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]
    attrs += [x509.NameAttribute(x509.NameOID.ORGANIZATIONAL_UNIT_NAME, "x" * 60)
              for _ in range(pad // 60)]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    if uri:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), False)
    csr = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()), csr


async def hello_answer(hub: Hub, key_pem: bytes | None, cert_pem: bytes | None,
                       metadata: tuple[tuple[str, str], ...] = ()) -> node_pb2.HubMessage:
    assert hub.ca is not None
    async with secure(hub.node_address, hub.ca.cert_pem, key_pem, cert_pem) as channel:
        call = node_pb2_grpc.NodeServiceStub(channel).Connect(metadata=metadata)
        await call.write(node_pb2.NodeMessage(hello=node_pb2.Hello(name="x", boot_id="x")))
        answer = await asyncio.wait_for(call.read(), 15)
        call.cancel()
        assert answer is not grpc.aio.EOF
        return answer


async def issued_at(hub: Hub, node: Agent, at: dt.datetime) -> tuple[bytes, bytes]:
    """A certificate for `node` signed by the hub's own CA at `at` (1 h), and recorded."""
    assert hub.ca is not None
    key_pem, csr = new_csr()
    chain, cert = hub.ca.sign_node_csr(csr, tenant="default", node_id=node._id.node_id,
                                       now=at, ttl=dt.timedelta(hours=1))
    await hub.store.record_issued_certificate("default", CertificateRecord(
        serial=format(cert.serial_number, "x"), tenant="default", node_id=node._id.node_id,
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(), issuer=hub.ca.node_issuer))
    return key_pem, chain


@pytest.mark.parametrize("shift", [dt.timedelta(days=-2), dt.timedelta(days=2)],
                         ids=["expired", "not-yet-valid"])
async def test_out_of_date_certificate_from_the_hubs_own_ca_cannot_connect(
        hub: Hub, node: Agent, client: Client, shift: dt.timedelta) -> None:
    """The hub's TLS layer refuses an expired or not-yet-valid node certificate, even one
    its own CA signed for a real node; the real node keeps working."""
    key_pem, chain = await issued_at(hub, node, dt.datetime.now(dt.UTC) + shift)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hello_answer(hub, key_pem, chain)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (await client.run(argv=["echo", "ok"])).stdout == b"ok\n"


async def test_a_node_certificate_is_no_client_credential(hub: Hub, node: Agent) -> None:
    """A node's certificate opens no door on the client port: it still needs an API token."""
    assert hub.ca is not None
    async with secure(hub.address, hub.ca.cert_pem, node._id.key_pem,
                      node._id.cert_pem) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tasks_pb2_grpc.TaskServiceStub(channel).ListNodes(
                tasks_pb2.ListNodesRequest())
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no API token" in (err.value.details() or "")


async def test_an_api_token_is_no_node_credential(hub: Hub, node: Agent) -> None:
    """Without a node certificate the node port refuses the handshake, admin token or not;
    Renew on the client port says it needs the node port's mutual TLS."""
    auth = (("authorization", f"Bearer {hub.admin_token}"),)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hello_answer(hub, None, None, auth)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert hub.ca is not None
    async with secure(hub.address, hub.ca.cert_pem) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pki_pb2_grpc.NodeCertServiceStub(channel).Renew(
                pki_pb2.RenewRequest(csr_pem=new_csr()[1]), metadata=auth)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "node port" in (err.value.details() or "")


async def test_a_certificate_the_hub_has_no_record_of_is_refused(
        hub: Hub, node: Agent) -> None:
    """Signed by the hub's CA but never issued through enrollment or renewal: refused."""
    assert hub.ca is not None
    key_pem, csr = new_csr()
    chain, _ = hub.ca.sign_node_csr(csr, tenant="default", node_id=node._id.node_id,
                                    now=dt.datetime.now(dt.UTC), ttl=dt.timedelta(hours=1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hello_answer(hub, key_pem, chain)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "unknown to this hub" in (err.value.details() or "")


async def test_a_token_of_another_tenant_enrolls_into_that_tenant_only(
        hub: Hub, client: Client, tmp_path: Path) -> None:
    """A join token of tenant `other` makes an `other` node: the default tenant neither
    sees it nor can revoke it, and its certificate says `other`."""
    await hub.store.ensure_tenant("other", now=time.time())
    token = await hub.join_token(tenant="other")
    ident = await asyncio.to_thread(enroll, hub=hub.address, token=token,
                                    data_dir=tmp_path / "o1", name="o1")
    assert ident.tenant == "other"
    assert identity_from_pem(ident.cert_pem).tenant == "other"
    assert [n.id for n in await client.list_nodes()] == []
    with pytest.raises(NotFound):
        await client.revoke_node(ident.node_id)


async def test_oversized_csr_is_refused_without_burning_the_token(
        hub: Hub, client: Client, raw_channel: grpc.aio.Channel, node: Agent) -> None:
    """A CSR over 16 KiB is INVALID_ARGUMENT at Enroll (the token stays usable) and at
    Renew."""
    _, big = new_csr(pad=17 * 1024)
    assert len(big) > 16 * 1024
    token = await hub.join_token()
    stub = enroll_pb2_grpc.EnrollServiceStub(raw_channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Enroll(enroll_pb2.EnrollRequest(token=token, csr_pem=big, name="big"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than" in (err.value.details() or "")
    ok = await stub.Enroll(enroll_pb2.EnrollRequest(token=token, csr_pem=new_csr()[1],
                                                    name="fine"))
    assert ok.node_id
    assert hub.ca is not None
    async with secure(hub.node_address, hub.ca.cert_pem, node._id.key_pem,
                      node._id.cert_pem) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pki_pb2_grpc.NodeCertServiceStub(channel).Renew(
                pki_pb2.RenewRequest(csr_pem=big))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_csr_forging_tenant_pool_and_node_gets_the_tokens_identity(
        hub: Hub, raw_channel: grpc.aio.Channel, node: Agent) -> None:
    """Names in a CSR are ignored at enrollment and at renewal: the certificate carries
    the token's tenant and pool and the hub's node id."""
    forged = "spiffe://cortex/tenant/evil/pool/gpu/node/n-forged"
    token = await hub.join_token()
    resp = await enroll_pb2_grpc.EnrollServiceStub(raw_channel).Enroll(
        enroll_pb2.EnrollRequest(token=token, csr_pem=new_csr(uri=forged, cn="n-forged")[1],
                                 name="forger"))
    ident = identity_from_pem(resp.certificate_pem)
    assert (ident.tenant, ident.pool, ident.node_id) == ("default", "default", resp.node_id)
    assert b"evil" not in resp.certificate_pem
    assert hub.ca is not None
    async with secure(hub.node_address, hub.ca.cert_pem, node._id.key_pem,
                      node._id.cert_pem) as channel:
        renewed = await pki_pb2_grpc.NodeCertServiceStub(channel).Renew(
            pki_pb2.RenewRequest(csr_pem=new_csr(uri=forged)[1]))
    again = identity_from_pem(renewed.certificate_pem)
    assert (again.tenant, again.node_id) == ("default", node._id.node_id)


async def test_revoking_an_unknown_node_is_not_found(client: Client) -> None:
    """Revoking a node id the tenant does not have says so and points at `nodes ls`."""
    with pytest.raises(NotFound, match="cortex nodes ls"):
        await client.revoke_node("n-nosuchnode")


