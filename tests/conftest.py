"""Shared fixtures: a real hub, a real node and an SDK client, in-process over loopback mTLS.

Every fixture is function-scoped: each test gets its own hub (fresh data dir, CA, store),
so no test can see another's tasks, nodes or tokens.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from cortex.hub.server import Hub
from cortex.node.agent import Agent
from cortex.sdk import Client, ClientConfig
from cortex.testing import postgres_schema_url, running_hub, running_node

# Small bounds so that fault and timeout paths finish quickly.
LOST_AFTER_S = 3.0
HEARTBEAT_INTERVAL_S = 0.5
HUB_SERVER_NAME = "cortex-hub"
# Big enough to send a frame the hub must refuse (its own bound is 16 MiB).
RAW_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


POSTGRES_URL = os.environ.get("CORTEX_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The hub's store: a SQLite file, or a fresh schema on the test Postgres server."""
    if request.param == "sqlite":
        yield str(tmp_path / "hub" / "hub.db")
        return
    with postgres_schema_url(POSTGRES_URL) as url:
        yield url


@pytest_asyncio.fixture
async def hub(tmp_path: Path, store_url: str) -> AsyncIterator[Hub]:
    """A hub on 127.0.0.1 (ports 0) with a short heartbeat and lost-node bound, on each
    store backend: every test using it runs against SQLite and against Postgres."""
    async with running_hub(tmp_path / "hub", lost_after_s=LOST_AFTER_S,
                           heartbeat_interval_s=HEARTBEAT_INTERVAL_S, store=store_url) as h:
        yield h


@pytest_asyncio.fixture
async def node(hub: Hub, tmp_path: Path) -> AsyncIterator[Agent]:
    """One node agent named n1, enrolled with `hub` and connected before the test runs."""
    async with running_node(hub, tmp_path / "n1") as agent:
        yield agent


def client_config(hub: Hub, token: str | None = None) -> ClientConfig:
    """How a client reaches `hub` (the admin token unless `token` is given)."""
    assert hub.ca is not None
    return ClientConfig(address=hub.address, token=token or hub.admin_token,
                        ca_pem=hub.ca.cert_pem)


@pytest_asyncio.fixture
async def client(hub: Hub) -> AsyncIterator[Client]:
    """The SDK client bound to `hub` with its admin token."""
    async with Client(client_config(hub)) as c:
        yield c


@pytest_asyncio.fixture
async def raw_channel(hub: Hub) -> AsyncIterator[grpc.aio.Channel]:
    """A bare grpc.aio channel to the hub's client port (for what the SDK will not send)."""
    assert hub.ca is not None
    creds = grpc.ssl_channel_credentials(root_certificates=hub.ca.cert_pem)
    channel = grpc.aio.secure_channel(hub.address, creds, options=[
        ("grpc.ssl_target_name_override", HUB_SERVER_NAME),
        ("grpc.max_send_message_length", RAW_MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", RAW_MAX_MESSAGE_BYTES),
    ])
    try:
        yield channel
    finally:
        await channel.close(None)
