"""Several hubs on one Postgres and one CA directory, dialed through address lists: a
client whose first hub is dead still works, a node whose first hub is dead connects to the
next, reads and admin calls work through either hub, and a CA rotation on one hub is
served by the other. Real hubs, real TLS over loopback, real Postgres."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509

from cortex.hub.server import Hub
from cortex.node.config import NodeConfig
from cortex.node.main import build_agent, ensure_identity
from cortex.sdk import Client, ClientConfig, NodeState
from cortex.testing import postgres_schema_url, running_hub

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio, pytest.mark.postgres]

POSTGRES_URL = os.environ.get("CORTEX_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432/test")


def dead_address() -> str:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def shared_store() -> Iterator[str]:
    with postgres_schema_url(POSTGRES_URL) as url:
        yield url


@pytest_asyncio.fixture
async def two_hubs(tmp_path: Path, shared_store: str) -> AsyncIterator[tuple[Hub, Hub]]:
    """Hubs a and b: own data dirs, one store, one CA directory."""
    ca_dir = tmp_path / "shared-ca"
    async with running_hub(tmp_path / "a", store=shared_store, ca_dir=ca_dir,
                           hub_id="hub-a") as a, \
            running_hub(tmp_path / "b", store=shared_store, ca_dir=ca_dir,
                        hub_id="hub-b") as b:
        yield a, b


def config(hub: Hub, address: str) -> ClientConfig:
    assert hub.ca is not None
    return ClientConfig(address=address, token=hub.admin_token, ca_pem=hub.ca.cert_pem,
                        call_timeout=10.0)


async def test_hubs_sharing_a_ca_dir_pin_the_same_ca(two_hubs: tuple[Hub, Hub]) -> None:
    """The second hub loads the CA the first created: one fingerprint, one bundle."""
    a, b = two_hubs
    assert a.ca is not None
    assert b.ca is not None
    assert a.ca.fingerprint == b.ca.fingerprint
    assert a.ca.cert_pem == b.ca.cert_pem


async def test_a_client_whose_first_hub_is_dead_still_works(two_hubs: tuple[Hub, Hub]
                                                            ) -> None:
    """`dead,a` and `dead,b`: every call lands on the live hub; none fails."""
    a, b = two_hubs
    for hub in (a, b):
        async with Client(config(a, f"{dead_address()},{hub.address}")) as client:
            for _ in range(5):
                await client.list_nodes()
            assert (await client.ca_status()).fingerprint


async def test_reads_and_admin_calls_work_through_either_hub(two_hubs: tuple[Hub, Hub]
                                                             ) -> None:
    """A token minted through hub a is usable on hub b (one store) and the other way."""
    a, b = two_hubs
    async with Client(config(a, f"{a.address},{b.address}")) as both:
        token = (await both.admin.create_api_token("ops", role="admin")).secret
    for hub in (a, b):
        assert hub.ca is not None
        cfg = ClientConfig(address=hub.address, token=token, ca_pem=hub.ca.cert_pem)
        async with Client(cfg) as client:
            assert await client.list_nodes() == []


async def test_a_node_whose_first_hub_is_dead_connects_to_the_next(
        two_hubs: tuple[Hub, Hub], tmp_path: Path) -> None:
    """Enrollment skips a dead first address; the agent dials the dead node address, fails,
    moves to hub b's, connects and runs a task submitted on hub b."""
    a, b = two_hubs
    token = await a.join_token()
    cfg = NodeConfig(data_dir=tmp_path / "n1", name="n1", token=token,
                     hub=f"{dead_address()},{a.address}",
                     node_address=f"{dead_address()},{b.node_address}",
                     reconnect_max_s=0.5)
    ident = await asyncio.to_thread(ensure_identity, cfg)
    assert ident.node_address == cfg.node_address
    agent, journal = build_agent(cfg, ident)
    run = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 60)
        assert b.registry.get(ident.node_id) is not None
        assert a.registry.get(ident.node_id) is None
        async with Client(config(b, b.address)) as client:
            nodes = await client.list_nodes()
            assert [(n.id, n.state) for n in nodes] == [(ident.node_id, NodeState.ONLINE)]
            result = await client.run(argv=["echo", "via b"])
            assert result.stdout == b"via b\n"
    finally:
        agent.request_stop()
        agent.request_stop()
        await run
        journal.close()


def served_issuer(address: str) -> str:
    """The subject of the intermediate in the chain a hub serves right now."""
    host, _, port = address.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="cortex-hub") as tls:
        chain = tls._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
        der = chain[1].public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


async def test_a_rotation_on_one_hub_is_served_by_the_other(two_hubs: tuple[Hub, Hub]
                                                            ) -> None:
    """`cortex ca rotate` through hub a: within seconds hub b issues through, and serves,
    the new intermediate (it watches the shared directory)."""
    a, b = two_hubs
    assert b.ca is not None
    assert "issuing CA 1" in await asyncio.to_thread(served_issuer, b.address)
    async with Client(config(a, a.address)) as client:
        status = await client.rotate_ca()
    assert status.issuer == "int-2/ca"
    for _ in range(100):   # the watch runs every 2 s
        if b.ca.node_issuer == "int-2/ca":
            break
        await asyncio.sleep(0.1)
    assert b.ca.node_issuer == "int-2/ca"
    assert "issuing CA 2" in await asyncio.to_thread(served_issuer, b.address)
