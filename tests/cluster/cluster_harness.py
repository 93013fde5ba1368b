"""Cluster harness: several real `cortex hub` processes on one Postgres schema, HAProxy in
TCP passthrough in front of them (mTLS ends at the hubs), real `cortex node` processes.

The hubs share one CA (the first hub creates it; the others' `<data_dir>/ca` is a symlink
to it) and one artifact directory. Nodes enroll through the balancer, and their identity
is then pointed at the balancer's node port (the enroll reply names the node port of the
hub that served it), so a node whose hub dies reconnects to another one.

Every process, the schema and task processes (found by the cluster's marker) are removed
at teardown, pass or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psutil
import psycopg
import pytest
import pytest_asyncio

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.node.enroll import enroll
from cortex.node.identity import save_identity
from cortex.sdk import Client, ClientConfig, NodeState, Unavailable
from cortex.testing import HubProcess, NodeProcess, postgres_schema_url, reserved_port

POSTGRES_URL = os.environ.get("CORTEX_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432/test")
HAPROXY = "/usr/sbin/haproxy"
LOST_AFTER_S = "10"
WAIT_S = 60.0
T = TypeVar("T")


@dataclass
class Balancer:
    """HAProxy in TCP mode: one frontend for the client ports, one for the node ports."""

    root: Path
    client_port: int = field(default_factory=reserved_port)
    node_port: int = field(default_factory=reserved_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def node_address(self) -> str:
        return f"127.0.0.1:{self.node_port}"

    def start(self, hubs: list[HubProcess]) -> None:
        def backend(name: str, ports: list[int]) -> str:
            servers = "\n".join(f"    server h{i} 127.0.0.1:{p} check"
                                for i, p in enumerate(ports))
            return (f"backend {name}\n    balance roundrobin\n"
                    f"    default-server inter 300ms fall 1 rise 1\n{servers}\n")

        cfg = self.root / "haproxy.cfg"
        cfg.write_text(
            "global\n    maxconn 4096\n"
            "defaults\n    mode tcp\n    option redispatch\n    retries 3\n"
            "    timeout connect 1s\n    timeout client 60s\n    timeout server 60s\n"
            f"frontend clients\n    bind 127.0.0.1:{self.client_port}\n"
            "    default_backend hub_clients\n"
            f"frontend nodes\n    bind 127.0.0.1:{self.node_port}\n"
            "    default_backend hub_nodes\n"
            + backend("hub_clients", [h.port for h in hubs])
            + backend("hub_nodes", [h.node_port for h in hubs]))
        log = open(self.root / "haproxy.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.client_port), timeout=0.5):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("haproxy did not start:\n"
                           + (self.root / "haproxy.log").read_text(errors="replace"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Cluster:
    root: Path
    store_url: str
    marker: str = field(default_factory=lambda: f"cortex-cluster-{uuid.uuid4().hex}")
    hubs: list[HubProcess] = field(default_factory=list)
    nodes: list[NodeProcess] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)
    balancer: Balancer | None = None

    # -- hubs ---------------------------------------------------------------------------
    async def start_hubs(self, count: int) -> list[HubProcess]:
        shared = self.root / "artifacts"
        shared.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            data = self.root / f"hub{i + 1}"
            if i:
                data.mkdir(parents=True, mode=0o700)
                (data / "ca").symlink_to(self.root / "hub1" / "ca")
            hub = HubProcess(data, http_port=-1, extra=(
                "--store", self.store_url, "--hub-id", f"hub-{i + 1}",
                "--lost-after", LOST_AFTER_S, "--heartbeat-interval", "1",
                "--artifact-dir", str(shared)))
            self.hubs.append(hub)
            await asyncio.to_thread(hub.start, 60.0)
        return self.hubs

    def kill_hub(self, hub: HubProcess) -> None:
        hub.kill()
        if hub.proc is not None and hub.proc.stdout is not None:
            hub.proc.stdout.close()

    async def restart_hub(self, hub: HubProcess) -> None:
        """Start `hub` again on its ports (it waits out its killed self's hub lease)."""
        await asyncio.to_thread(hub.start, 60.0)

    def start_balancer(self) -> Balancer:
        self.balancer = Balancer(self.root)
        self.balancer.start(self.hubs)
        return self.balancer

    @property
    def ca_pem(self) -> bytes:
        return (self.root / "hub1" / "ca" / "bundle.pem").read_bytes()

    def client(self, address: str, *, call_timeout: float = 15.0) -> Client:
        token = (self.root / "hub1" / "admin.token").read_text().strip()
        client = Client(ClientConfig(address=address, token=token, ca_pem=self.ca_pem,
                                     call_timeout=call_timeout, reconnect_timeout=WAIT_S))
        self.clients.append(client)
        return client

    # -- nodes --------------------------------------------------------------------------
    async def start_node(self, client: Client, enroll_at: str, dial: str, name: str,
                         slots: int = 8) -> str:
        """A node enrolled through `enroll_at` that dials `dial` (a hub's node port or
        the balancer's); its id, once online."""
        token = await client.create_join_token(ttl=120, labels={"cluster-node": name})
        data = self.root / name
        ident = await asyncio.to_thread(enroll, hub=enroll_at, token=token.token,
                                        data_dir=data, name=name)
        save_identity(data, dataclasses.replace(ident, node_address=dial))
        node = NodeProcess(data, enroll_at, "", extra=("--name", name, "--slots", str(slots)))
        self.nodes.append(node)
        node.start()

        async def online() -> str | None:
            for n in await client.list_nodes(labels={"cluster-node": name}):
                if n.state == NodeState.ONLINE:
                    return str(n.id)
            return None

        return await eventually(online, f"node {name} online", node=node)

    # -- teardown -----------------------------------------------------------------------
    async def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.close()
        for node in self.nodes:
            node.kill()
        for hub in self.hubs:
            self.kill_hub(hub)
        if self.balancer is not None:
            self.balancer.stop()
        for proc in psutil.process_iter(["cmdline"]):
            if any(self.marker in arg for arg in proc.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error):
                    proc.kill()

    def logs(self) -> str:
        out = []
        for node in self.nodes:
            out.append(f"--- {node.data_dir.name}\n{node.log()[-3000:]}")
        return "\n".join(out)

    # -- the store, read directly ---------------------------------------------------------
    def db(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.store_url, autocommit=True, connect_timeout=5)


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, *,
                     within: float = WAIT_S, node: NodeProcess | None = None) -> T:
    last: object = None
    try:
        async with asyncio.timeout(within):
            while True:
                if node is not None and node.proc is not None and node.proc.poll() is not None:
                    raise AssertionError(f"{what}: the node exited:\n{node.log()}")
                try:
                    last = await probe()
                except Unavailable as exc:
                    last = exc
                else:
                    if last:
                        return last  # type: ignore[return-value]
                await asyncio.sleep(0.1)
    except TimeoutError:
        log = f"\nnode log:\n{node.log()[-3000:]}" if node is not None else ""
        raise AssertionError(f"not within {within:g} s: {what} (last: {last!r}){log}"
                             ) from None


def numbered_lines(n: int) -> str:
    return "".join(f"line-{i}\n" for i in range(1, n + 1))


def stored_tasks(cluster: Cluster) -> dict[str, pb.Task]:
    with cluster.db() as conn:
        return {t.id: t for t in (pb.Task.FromString(r[0]) for r in
                                  conn.execute("SELECT body FROM tasks").fetchall())}


def stored_events(cluster: Cluster) -> dict[str, list[pb.TaskEvent]]:
    out: dict[str, list[pb.TaskEvent]] = {}
    with cluster.db() as conn:
        for task_id, body in conn.execute(
                "SELECT task_id, body FROM task_events ORDER BY task_id, seq").fetchall():
            out.setdefault(str(task_id), []).append(pb.TaskEvent.FromString(body))
    return out


def stored_attempts(cluster: Cluster) -> dict[str, list[pb.Attempt]]:
    out: dict[str, list[pb.Attempt]] = {}
    with cluster.db() as conn:
        for task_id, body in conn.execute(
                "SELECT task_id, body FROM task_attempts ORDER BY task_id, attempt"
        ).fetchall():
            out.setdefault(str(task_id), []).append(pb.Attempt.FromString(body))
    return out


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    if shutil.which(HAPROXY) is None:
        pytest.fail(f"{HAPROXY} is missing: install the haproxy Debian package "
                    "(scripts/ensure_system_deps.sh)")
    with postgres_schema_url(POSTGRES_URL) as url:
        c = Cluster(tmp_path, url)
        try:
            yield c
        finally:
            await c.close()
