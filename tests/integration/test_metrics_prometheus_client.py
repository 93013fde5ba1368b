"""/metrics read by Prometheus's own Python parser (`prometheus_client.parser`), on top of
the strict hand-written parser of test_http.py: the two must agree on every family. Where
promtool is installed (`make system-deps`), `promtool check metrics` must accept it too."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cortex.hub.server import Hub
from cortex.node.agent import Agent
from cortex.sdk import Client

pytestmark = pytest.mark.timeout(60)

PY = sys.executable
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def promtool_problems(text: str) -> str | None:
    """What `promtool check metrics` says about `text` ("" = fine), None without promtool
    (`make system-deps` installs it)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return None
    checked = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                             capture_output=True, timeout=30, check=False)
    return "" if checked.returncode == 0 else (checked.stdout + checked.stderr).decode()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """SQLite only: /metrics reads the hub's memory, never the store."""
    return str(tmp_path / "hub" / "hub.db")


@pytest.mark.asyncio
async def test_prometheus_client_parses_every_family_with_its_type(
        hub: Hub, node: Agent, client: Client, tmp_path: Path) -> None:
    """Tasks by tenant and state, dispatch latency, nodes (and their heartbeat load),
    backlog, certificate expiry (nodes, hub, CA), artifact bytes and dashboard sessions all
    come through Prometheus's parser with the right type and value."""
    assert (await client.run(argv=["true"])).ok
    work = tmp_path / "work"
    work.mkdir()
    out = await client.run(command="printf 0123456789 > out.bin", cwd=str(work),
                           artifacts=["out.bin"])
    assert out.ok
    assert out.files[0].size == 10
    assert not (await client.run(argv=[PY, "-c", "raise SystemExit(3)"])).ok
    base = f"http://127.0.0.1:{hub.http_port}"
    async with httpx2.AsyncClient(base_url=base) as http:
        form = await http.get("/ui/login")
        (secret,) = _CSRF.findall(form.text)
        login = await http.post("/ui/login", data={"token": hub.admin_token, "csrf": secret})
        assert login.status_code == 303
        text = (await http.get("/metrics")).text

    families = {f.name: f for f in text_string_to_metric_families(text)}
    kinds = {name: f.type for name, f in families.items()}
    assert kinds["cortex_tasks_active"] == "gauge"
    assert kinds["cortex_tasks_finished"] == "counter"   # the parser drops "_total"
    assert kinds["cortex_dispatch_latency_seconds"] == "histogram"
    for name in ("cortex_nodes_connected", "cortex_stream_backlog_messages",
                 "cortex_node_certificate_expiry_seconds", "cortex_dashboard_sessions"):
        assert kinds[name] == "gauge", name

    def value(family: str, sample: str, **labels: str) -> float:
        (hit,) = [s.value for s in families[family].samples
                  if s.name == sample and s.labels == labels]
        return float(hit)

    finished = "cortex_tasks_finished"
    assert value(finished, "cortex_tasks_finished_total", tenant="default",
                 state="succeeded") == 2
    assert value(finished, "cortex_tasks_finished_total", tenant="default",
                 state="failed") == 1
    assert value("cortex_dispatch_latency_seconds", "cortex_dispatch_latency_seconds_bucket",
                 le="+Inf") == 3
    assert value("cortex_dispatch_latency_seconds",
                 "cortex_dispatch_latency_seconds_count") == 3
    assert value("cortex_nodes_connected", "cortex_nodes_connected", tenant="default",
                 state="online") == 1
    assert value("cortex_dashboard_sessions", "cortex_dashboard_sessions") == 1
    (conn,) = hub.registry.all()
    expiry = value("cortex_node_certificate_expiry_seconds",
                   "cortex_node_certificate_expiry_seconds", tenant="default",
                   node_id=conn.node_id, node=conn.node.name)
    assert 0 < expiry <= hub.config.node_cert_ttl_s
    assert value("cortex_artifact_bytes", "cortex_artifact_bytes", tenant="default") == 10
    who = {"tenant": "default", "node_id": conn.node_id, "node": conn.node.name}
    assert value("cortex_node_memory_capacity_bytes", "cortex_node_memory_capacity_bytes",
                 **who) == conn.node.capacity.memory_mib * 1024 * 1024 > 0
    assert value("cortex_node_cpus", "cortex_node_cpus", **who) == conn.node.capacity.cpus > 0
    for family in ("cortex_node_load1", "cortex_node_cpu_percent",
                   "cortex_node_memory_used_bytes"):
        assert kinds[family] == "gauge"
        assert value(family, family, **who) >= 0
    certs = {(s.labels["kind"], s.labels["name"]): s.value
             for s in families["cortex_certificate_expiry_seconds"].samples}
    assert hub.ca is not None
    entries = hub.ca.status()
    assert {(e.kind, e.name) for e in entries} | {("hub-serving", "cortex-hub")} == set(certs)
    serving = certs[("hub-serving", "cortex-hub")]
    assert 86400 < serving <= min(e.not_after for e in entries) - time.time() + 5
    for e in entries:
        assert abs(certs[(e.kind, e.name)] - (e.not_after - time.time())) < 60
    assert promtool_problems(text) in (None, "")
    samples = sum(len(f.samples) for f in families.values())
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert samples == len(lines)   # nothing the strict parser sees was dropped here
