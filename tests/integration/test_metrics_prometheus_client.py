"""/metrics read by Prometheus's own Python parser (`prometheus_client.parser`), on top of
the strict hand-written parser of test_http.py: the two must agree on every family."""

from __future__ import annotations

import re
import sys
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


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """SQLite only: /metrics reads the hub's memory, never the store."""
    return str(tmp_path / "hub" / "hub.db")


@pytest.mark.asyncio
async def test_prometheus_client_parses_every_family_with_its_type(
        hub: Hub, node: Agent, client: Client) -> None:
    """Tasks by tenant and state, dispatch latency, nodes, backlog, certificate expiry and
    dashboard sessions all come through Prometheus's parser with the right type and value."""
    assert (await client.run(argv=["true"])).ok
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
                 state="succeeded") == 1
    assert value(finished, "cortex_tasks_finished_total", tenant="default",
                 state="failed") == 1
    assert value("cortex_dispatch_latency_seconds", "cortex_dispatch_latency_seconds_bucket",
                 le="+Inf") == 2
    assert value("cortex_dispatch_latency_seconds",
                 "cortex_dispatch_latency_seconds_count") == 2
    assert value("cortex_nodes_connected", "cortex_nodes_connected", tenant="default",
                 state="online") == 1
    assert value("cortex_dashboard_sessions", "cortex_dashboard_sessions") == 1
    (conn,) = hub.registry.all()
    expiry = value("cortex_node_certificate_expiry_seconds",
                   "cortex_node_certificate_expiry_seconds", tenant="default",
                   node_id=conn.node_id, node=conn.node.name)
    assert 0 < expiry <= hub.config.node_cert_ttl_s
    samples = sum(len(f.samples) for f in families.values())
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert samples == len(lines)   # nothing the strict parser sees was dropped here
