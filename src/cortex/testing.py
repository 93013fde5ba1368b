"""Helpers to run a real hub and real nodes in tests — Cortex's own and its users'.

In-process (fast, for integration tests)::

    async with running_hub(tmp_path) as hub, running_node(hub, tmp_path / "n1") as node:
        async with hub.client() as client: ...

As subprocesses (for fault tests: kill -9, restarts)::

    hub = HubProcess(tmp_path / "hub"); hub.start(); ...; hub.kill(); hub.start()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cortex.hub.config import HubConfig
from cortex.hub.server import Hub
from cortex.node.agent import Agent
from cortex.node.config import NodeConfig
from cortex.node.main import build_agent, ensure_identity

__all__ = [
    "HubProcess",
    "NodeProcess",
    "cli_env",
    "eventually",
    "join_token",
    "postgres_schema_url",
    "reserved_port",
    "running_hub",
    "running_node",
]

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, *,
                     within: float = 30.0, every: float = 0.05) -> T:
    """The first truthy result of `probe`, polled every `every` s; an AssertionError naming
    `what` (and the last result) after `within` s. For what happens apart from the call
    that caused it (a page's fetch, a node's report), on a machine that may be loaded."""
    last: T | None = None
    try:
        async with asyncio.timeout(within):
            while True:
                last = await probe()
                if last:
                    return last
                await asyncio.sleep(every)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {within} s (last: {last!r})") from None


def reserved_port() -> int:
    """A free loopback port for a server another process binds later (a balancer whose
    address the hubs must know first). Picked below the kernel's ephemeral range, so the
    ports the hubs and nodes get by binding port 0 meanwhile can never be this one."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    start = max(1024, low - 12000)
    for _ in range(200):
        port = random.randrange(start, low)  # noqa: S311 - spreads tests, not a secret
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port between {start} and {low}")


_READY = re.compile(r"cortex hub ready: clients ([^\s,]+), nodes ([^\s,]+)(?:, http (\S+))?")


async def join_token(hub: Hub, *, labels: dict[str, str] | None = None, ttl_s: float = 300,
                     tenant: str = "default", pool: str = "default") -> str:
    return await hub.join_token(labels=labels, ttl_s=ttl_s, tenant=tenant, pool=pool)


@contextlib.asynccontextmanager
async def running_hub(data_dir: Path, **overrides: Any) -> AsyncIterator[Hub]:
    """A hub on 127.0.0.1 with free ports; closed (and its store) on exit."""
    overrides.setdefault("http_port", 0)
    cfg = HubConfig(data_dir=data_dir, port=0, node_port=0,
                    client_file=data_dir / "client.json", **overrides)
    hub = Hub(cfg)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.close(grace=0.5)


@contextlib.asynccontextmanager
async def running_node(hub: Hub, data_dir: Path, **overrides: Any) -> AsyncIterator[Agent]:
    """A node agent enrolled with `hub` (into `tenant=` and `pool=`, default "default"),
    connected before the body runs, drained on exit."""
    token = await join_token(hub, tenant=overrides.pop("tenant", "default"),
                             pool=overrides.pop("pool", "default"))
    cfg = NodeConfig(data_dir=data_dir, hub=hub.address, token=token,
                     name=overrides.pop("name", data_dir.name), **overrides)
    ident = await asyncio.to_thread(ensure_identity, cfg)
    agent, journal = build_agent(cfg, ident)
    task = asyncio.create_task(agent.run())
    try:
        waiter = asyncio.ensure_future(agent.connected.wait())
        await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiter.cancel()
            task.result()
        yield agent
    finally:
        agent.request_stop()
        agent.request_stop()  # tests do not wait for drains
        await task
        journal.close()


@contextlib.contextmanager
def postgres_schema_url(base_url: str) -> Iterator[str]:
    """A store URL on a fresh, empty schema of the database at `base_url`, dropped after.

    Each test of a Postgres-backed hub gets its own schema, so tests never see each other.
    """
    import secrets

    import psycopg
    from psycopg import sql

    schema = f"cortex_test_{secrets.token_hex(6)}"
    with psycopg.connect(base_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield f"{base_url}{'&' if '?' in base_url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def cli_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["CORTEX_HOME"] = str(home)
    env.pop("CORTEX_HUB", None)
    env.pop("CORTEX_TOKEN", None)
    return env


@dataclass
class HubProcess:
    """`cortex hub` as a child process. Ports are picked at first start and kept."""

    data_dir: Path
    port: int = 0
    node_port: int = 0
    http_port: int = 0          # -1: HTTP off
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        cmd = [sys.executable, "-m", "cortex", "hub", "--port", str(self.port),
               "--node-port", str(self.node_port), "--http-port", str(self.http_port),
               "--data-dir", str(self.data_dir), *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=cli_env(self.data_dir.parent))
        line = _wait_for(self.proc, _READY, timeout)
        clients, nodes = line.group(1), line.group(2)
        self.port = int(clients.rpartition(":")[2])
        self.node_port = int(nodes.rpartition(":")[2])
        if line.group(3):
            self.http_port = int(line.group(3).rpartition(":")[2])

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@dataclass
class NodeProcess:
    """`cortex node` as a child process; output goes to `log`."""

    data_dir: Path
    hub: str
    token: str = ""
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "node.log", "ab")  # noqa: SIM115 - owned by the child
        cmd = [sys.executable, "-m", "cortex", "node", "--hub", self.hub, "--data-dir",
               str(self.data_dir), "--token", self.token, *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     env=cli_env(self.data_dir.parent))
        log.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log(self) -> str:
        path = self.data_dir / "node.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _wait_for(proc: subprocess.Popen[bytes], pattern: re.Pattern[str], timeout: float
              ) -> re.Match[str]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    os.set_blocking(proc.stdout.fileno(), True)
    while time.monotonic() < deadline:
        raw = proc.stdout.readline()
        if not raw:
            raise RuntimeError("process exited before it was ready:\n" + "".join(seen))
        line = raw.decode(errors="replace")
        seen.append(line)
        m = pattern.search(line)
        if m:
            _drain_in_background(proc)
            return m
    raise RuntimeError("process not ready in time:\n" + "".join(seen))


def _drain_in_background(proc: subprocess.Popen[bytes]) -> None:
    # The child keeps logging to the pipe; a reader thread keeps it from filling up.
    import threading

    def pump() -> None:
        assert proc.stdout is not None
        for _ in proc.stdout:
            pass

    threading.Thread(target=pump, daemon=True).start()

