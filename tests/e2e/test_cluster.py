"""A cluster on one machine, all real processes: HAProxy (TCP passthrough) in front of two
`cortex hub` processes on one Postgres and one CA directory, a `cortex node` enrolled
through the balancer; and `cortex cluster up`, stopped with SIGINT, leaving no process.

Until hubs hand tasks to each other through the store (the multi-hub core), a task runs
when it is submitted on the hub its node is connected to; the HAProxy test arranges that
by having one hub up at a time when it runs a task, which is also the failover it proves.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from cortex.cluster.haproxy import Backend, Balancer, render
from cortex.sdk import ClientConfig, SyncClient
from cortex.testing import (
    HubProcess,
    NodeProcess,
    cli_env,
    postgres_schema_url,
    reserved_port,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.slow,
              pytest.mark.timeout(240)]

POSTGRES_URL = os.environ.get("CORTEX_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432/test")
WAIT_S = 60.0
T = TypeVar("T")


def eventually(probe: Callable[[], T | None], what: str, within: float = WAIT_S) -> T:
    """`probe()`'s first non-None value; each probe is a real call, which paces the loop."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if (value := probe()) is not None:
                return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {within:g} s")


def listening(port: int) -> bool | None:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def close_pipe(hub: HubProcess) -> None:
    """The stopped process's stdout pipe (its reader thread hit EOF when it died)."""
    if hub.proc is not None and hub.proc.poll() is not None and hub.proc.stdout is not None:
        with contextlib.suppress(OSError, ValueError):
            hub.proc.stdout.close()


@pytest.fixture
def store() -> Iterator[str]:
    with postgres_schema_url(POSTGRES_URL) as url:
        yield url


def test_haproxy_in_front_of_two_hubs(tmp_path: Path, store: str) -> None:
    """Enroll and run a task through HAProxy; stop the node's hub: the node reconnects
    through HAProxy to the other hub, and the next task runs there."""
    lb_port, lb_node_port = reserved_port(), reserved_port()
    lb, lb_node = f"127.0.0.1:{lb_port}", f"127.0.0.1:{lb_node_port}"
    shared = ("--store", store, "--ca-dir", str(tmp_path / "ca"), "--public-address", lb,
              "--public-node-address", lb_node)
    hubs = [HubProcess(tmp_path / name, extra=(*shared, "--hub-id", name))
            for name in ("hub-a", "hub-b")]
    node = NodeProcess(tmp_path / "node", hub=lb)
    proxy: subprocess.Popen[bytes] | None = None
    try:
        for hub in hubs:
            hub.start()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(render(Balancer(lb, lb_node, tuple(
            Backend(h.data_dir.name, "127.0.0.1", h.port, h.node_port, h.http_port)
            for h in hubs), check_interval_ms=300)))
        with open(tmp_path / "haproxy.log", "wb") as log:
            proxy = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=log,
                                     stderr=subprocess.STDOUT)
        eventually(lambda: listening(lb_port) and listening(lb_node_port), "haproxy listens")
        ca_pem = (tmp_path / "ca" / "bundle.pem").read_bytes()
        # client.json names the balancer, not the hub's own port.
        written = json.loads((tmp_path / "client.json").read_text())
        assert (written["address"], written["node_address"]) == (lb, lb_node)

        def client(address: str = lb) -> SyncClient:
            return SyncClient(ClientConfig(address=address, token=hubs[0].token,
                                           ca_pem=ca_pem, call_timeout=10.0))

        with client() as c:
            node.token = c.create_join_token(ttl=300).token
        node.start()
        ident = eventually(lambda: json.loads((node.data_dir / "identity.json").read_text()),
                           "the node enrolls through the balancer")
        assert ident["node_address"] == lb_node   # told by the hub: dial the balancer

        def holder() -> HubProcess | None:
            # Every hub lists the node from the shared store; the one holding its stream
            # counts it in its own /metrics.
            for hub in hubs:
                with contextlib.suppress(OSError):
                    url = f"http://127.0.0.1:{hub.http_port}/metrics"
                    with urllib.request.urlopen(url, timeout=5) as reply:
                        text = reply.read().decode()
                    if any(line.startswith("cortex_nodes_connected") and not
                           line.rstrip().endswith(" 0") for line in text.splitlines()):
                        return hub
            return None

        first = eventually(holder, "the node connects through the balancer")
        other = next(h for h in hubs if h is not first)
        other.stop()
        with client() as c:
            assert c.run(argv=["echo", "one"]).stdout == b"one\n"
        close_pipe(other)
        other.start()
        eventually(lambda: listening(other.port), "the stopped hub is back")
        first.stop()   # the node's hub goes away: it must reconnect via HAProxy to `other`
        eventually(lambda: holder() is other or None, "the node moves to the other hub")
        with client() as c:
            result = c.run(argv=["echo", "two"])
        assert result.stdout == b"two\n"
        assert result.task.node_id == ident["node_id"]
    finally:
        node.kill()
        if proxy is not None:
            proxy.kill()
            proxy.wait()
        for hub in hubs:
            hub.kill()
            close_pipe(hub)


UP = re.compile(r"cortex cluster up: balancer clients (\S+), nodes (\S+); (\d+) hubs, "
                r"node (\S+) connected")


def test_cluster_up_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    """`cortex cluster up --hubs 2`: the balancer answers admin calls with the client.json
    it wrote, `cluster status` shows both hubs ready; SIGINT stops every child."""
    schema = f"cortex_cluster_t{os.getpid()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cortex", "cluster", "up", "--hubs", "2", "--port", "0",
         "--node-port", "0", "--schema", schema, "--store", POSTGRES_URL],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=cli_env(tmp_path))
    children: list[psutil.Process] = []
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if m := UP.search(line):
                break
        else:
            raise AssertionError("cluster up ended before it was up:\n" + "".join(seen))
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert names.count(" hub ") == 2
        assert "haproxy" in names
        assert " node " in names
        written = json.loads((tmp_path / "client.json").read_text())
        assert written["address"] == m.group(1)
        env = cli_env(tmp_path)
        nodes = subprocess.run([sys.executable, "-m", "cortex", "ca", "status", "--json"],
                               env=env, capture_output=True, text=True, timeout=60,
                               check=False)
        assert nodes.returncode == 0, nodes.stderr
        status = subprocess.run([sys.executable, "-m", "cortex", "cluster", "status",
                                 "--json"], env=env, capture_output=True, text=True,
                                timeout=60, check=True)
        assert [h["ready"] for h in json.loads(status.stdout)["hubs"]] == [True, True]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
        assert not (tmp_path / "cluster" / "state.json").exists()
    finally:
        for c in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                c.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
