"""The hub's HTTP port: health, readiness, Prometheus metrics, and MCP over streamable HTTP.

A real hub and node run in-process (port 0 everywhere); HTTP is spoken by httpx2 and MCP by
the `mcp` package's own streamable HTTP client, each call with a bearer API token. The
metrics text is parsed strictly by `parse_exposition` below, and by `promtool check
metrics` too where Debian's prometheus package is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
from mcp import Client as McpClient
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_calls import call, call_error, cancel_task

from cortex.errors import InvalidArgument, Unavailable
from cortex.hub.auth import issue_api_token
from cortex.hub.config import HTTP_OFF, HubConfig
from cortex.hub.http import Family, HttpServer, McpEndpoint, render
from cortex.hub.http._app import build_app
from cortex.hub.http._server import DeferredMcp, McpLoader
from cortex.hub.server import Hub
from cortex.mcp import TOOL_NAMES
from cortex.mcp._http import _TokenClients
from cortex.node.agent import Agent
from cortex.sdk import Client, ClientConfig
from cortex.testing import HubProcess, running_hub, running_node

pytestmark = pytest.mark.timeout(60)

PY = sys.executable
# Prints "up", then waits until it is killed.
FOREVER = "import time\nprint('up', flush=True)\ntime.sleep(600)\n"
UNKNOWN_CREDENTIAL = "ctk_nosuch.secret"  # well formed, unknown to the hub
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=120.0)  # task_output may wait 30 s for output


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """SQLite only (overrides conftest's both-backends fixture): the HTTP port reads the
    hub's memory and reaches the store only through gRPC, whose suites cover both."""
    return str(tmp_path / "hub" / "hub.db")


def url(hub: Hub, path: str) -> str:
    assert hub.http_port
    return f"http://127.0.0.1:{hub.http_port}{path}"


@contextlib.asynccontextmanager
async def mcp_http(hub: Hub, token: str | None = None, *, mode: str = "auto"
                   ) -> AsyncIterator[McpClient]:
    """An MCP client session with the hub's /mcp, sending `token` (default: admin) as bearer.

    A context manager, not a fixture: the client's anyio cancel scopes must be entered
    and left in the same task, which pytest-asyncio does not promise for fixtures.
    """
    headers = {"Authorization": f"Bearer {token or hub.admin_token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=HTTP_TIMEOUT) as http:
        transport = streamable_http_client(url(hub, "/mcp"), http_client=http)
        async with McpClient(transport, mode=mode) as client:
            yield client


async def output_until(client: McpClient, task_id: str, want: str) -> str:
    """The task's stdout read with task_output (each call waiting for news) until it holds
    `want`. task_output answers as soon as any output arrives, and `print` may reach it in
    pieces (with PYTHONUNBUFFERED 'up' and '\\n' are two writes), so one call may not do."""
    seen, after_seq, skip_bytes = "", 0, 0
    while len(seen) < len(want):
        out = await call(client, "task_output", task_id=task_id, after_seq=after_seq,
                         skip_bytes=skip_bytes, wait_s=30)
        assert out["stdout"], (seen, out)  # no news within 30 s
        assert not out["finished"], (seen, out)
        seen += out["stdout"]
        after_seq, skip_bytes = out["next_seq"], out["next_skip_bytes"]
    return seen


async def agent_token(hub: Hub, *, tenant: str, role: str = "agent") -> str:
    """A fresh API token of `tenant` (created if new) with `role`."""
    await hub.store.ensure_tenant(tenant, now=time.time())
    return await issue_api_token(hub.store, tenant=tenant, role=role, name=f"{tenant} test",
                                 now=time.time())


def only_node(hub: Hub) -> str:
    """The id of the one node connected to `hub`."""
    (conn,) = hub.registry.all()
    return conn.node_id


async def until_output(client: Client, task_id: str, text: bytes) -> None:
    """Follow the task until its output has contained `text` (so it is running)."""
    seen = b""
    async for event in client.watch(task_id):
        seen += event.output.data
        if text in seen:
            return
    pytest.fail(f"task {task_id} ended before printing {text!r}")


# --- a strict parser of the text exposition format 0.0.4 -----------------------------------

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_VALUE = re.compile(r"[+-]?(?:Inf|NaN|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


@dataclass
class Parsed:
    """One family as read back: its type, help and samples by (name, labels)."""

    kind: str
    help: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def by(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(dict(lbl), v) for (n, lbl), v in self.samples.items() if n == name]


def parse_exposition(text: str) -> dict[str, Parsed]:
    """Families of `text`; AssertionError at the first line breaking the format: HELP and
    TYPE once each and before the samples, samples of a family together, valid names,
    escapes and numbers, no series twice, a final newline."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, Parsed] = {}
    current: str | None = None
    for number, line in enumerate(text[:-1].split("\n"), start=1):
        where = f"line {number}: {line!r}"
        assert line, f"{where}: empty line"
        if line.startswith("#"):
            current = _parse_comment(line, families, where)
            continue
        name, labels, value = _parse_sample(line, where)
        family = _family_of(name, families, where)
        assert family == current, f"{where}: not with the other samples of {family}"
        key = (name, frozenset(labels.items()))
        assert key not in families[family].samples, f"{where}: series given twice"
        families[family].samples[key] = value
    return families


def _parse_comment(line: str, families: dict[str, Parsed], where: str) -> str | None:
    parts = line.split(" ", 3)
    if len(parts) < 3 or parts[1] not in ("HELP", "TYPE"):
        return None  # a plain comment
    _, what, name = parts[:3]
    rest = parts[3] if len(parts) > 3 else ""
    assert _NAME.fullmatch(name), f"{where}: bad metric name"
    if what == "HELP":
        assert name not in families, f"{where}: HELP after TYPE or a second HELP"
        families[name] = Parsed(kind="untyped", help=_unescape(rest, quotes=False, where=where))
        return name
    assert name in families, f"{where}: TYPE without HELP before it"
    assert families[name].kind == "untyped", f"{where}: a second TYPE"
    assert not families[name].samples, f"{where}: TYPE after samples"
    assert rest in _TYPES, f"{where}: unknown type"
    families[name].kind = rest
    return name


def _parse_sample(line: str, where: str) -> tuple[str, dict[str, str], float]:
    m = _NAME.match(line)
    assert m, f"{where}: no metric name"
    name, pos, labels = m.group(), m.end(), {}
    if line[pos:pos + 1] == "{":
        pos += 1
        while line[pos] != "}":
            lm = _LABEL_NAME.match(line, pos)
            assert lm, f"{where}: bad label name at {pos}"
            assert line[lm.end():lm.end() + 2] == '="', f"{where}: no =\" after label {pos}"
            pos = lm.end() + 2
            raw = []
            while line[pos] != '"':
                if line[pos] == "\\":
                    raw.append(line[pos:pos + 2])
                    pos += 2
                else:
                    raw.append(line[pos])
                    pos += 1
            assert lm.group() not in labels, f"{where}: label {lm.group()} twice"
            labels[lm.group()] = _unescape("".join(raw), quotes=True, where=where)
            pos += 1
            if line[pos] == ",":
                pos += 1
        pos += 1
    fields = line[pos:].split(" ")
    assert fields[0] == "", f"{where}: no space after the series"
    assert len(fields) in (2, 3), f"{where}: want ' value [timestamp]'"
    assert _VALUE.fullmatch(fields[1]), f"{where}: bad value {fields[1]!r}"
    return name, labels, float(fields[1].replace("Inf", "inf"))


def _unescape(text: str, *, quotes: bool, where: str) -> str:
    allowed = {"\\\\": "\\", "\\n": "\n"} | ({'\\"': '"'} if quotes else {})
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            assert text[i:i + 2] in allowed, f"{where}: bad escape {text[i:i + 2]!r}"
            out.append(allowed[text[i:i + 2]])
            i += 2
        else:
            assert not (quotes and text[i] in '"\n'), f"{where}: unescaped {text[i]!r}"
            out.append(text[i])
            i += 1
    return "".join(out)


def _family_of(name: str, families: dict[str, Parsed], where: str) -> str:
    if name in families and families[name].kind not in ("histogram",):
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and base in families and suffix in _SUFFIXES.get(families[base].kind,
                                                                         ()):
            return base
    raise AssertionError(f"{where}: sample of no declared family")


def promtool_problems(text: str) -> str | None:
    """What `promtool check metrics` says about `text`, or None when promtool is absent."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return None
    proc = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=30, check=False)
    return "" if proc.returncode == 0 else (proc.stdout + proc.stderr).decode()


# --- health and readiness -----------------------------------------------------------------

@pytest.mark.asyncio
async def test_health_and_readiness_answer_once_the_hub_serves(hub: Hub) -> None:
    """/healthz says ok and /readyz ready as soon as start() returns, on the bound port."""
    assert hub.http_port
    assert hub.http_address == f"127.0.0.1:{hub.http_port}"
    async with httpx2.AsyncClient() as http:
        health = await http.get(url(hub, "/healthz"))
        ready = await http.get(url(hub, "/readyz"))
    assert (health.status_code, health.text) == (200, "ok\n")
    assert (ready.status_code, ready.text) == (200, "ready\n")


@pytest.mark.asyncio
async def test_readiness_turns_503_while_the_hub_drains(hub: Hub, node: Agent,
                                                        client: Client) -> None:
    """Draining: /readyz and /mcp answer 503, /healthz ok; the port closes after."""
    task = await client.submit(argv=[PY, "-c", FOREVER])
    await until_output(client, task.id, b"up")
    watch = client.watch(task.id, after_seq=(await client.get(task.id)).last_seq)
    in_flight = asyncio.create_task(anext(watch))  # holds a stream open on the client port
    async with httpx2.AsyncClient() as http:
        closing = asyncio.create_task(hub.close(grace=30))  # runs before the GETs' I/O
        ready = await http.get(url(hub, "/readyz"))
        health = await http.get(url(hub, "/healthz"))
        mcp = await http.post(url(hub, "/mcp"), json={},
                              headers={"Authorization": f"Bearer {hub.admin_token}"})
        in_flight.cancel()  # the drain can end now
        await asyncio.wait([in_flight])
        await watch.aclose()
        await closing
        with pytest.raises(httpx2.ConnectError):
            await http.get(url(hub, "/healthz"))
    assert (ready.status_code, health.status_code, mcp.status_code) == (503, 200, 503)
    assert "shutting down" in ready.text
    assert "shutting down" in mcp.json()["error_description"]


@pytest.mark.asyncio
async def test_http_can_be_turned_off(tmp_path: Path) -> None:
    """http_port -1 opens no HTTP port; a port outside -1..65535 is refused at startup."""
    async with running_hub(tmp_path / "hub", http_port=HTTP_OFF) as hub:
        assert (hub.http_port, hub.http_address) == (None, None)
    with pytest.raises(InvalidArgument, match="http_port"):
        HubConfig(data_dir=tmp_path / "x", http_port=-2)


@pytest.mark.asyncio
async def test_a_taken_http_port_fails_the_start_and_frees_the_grpc_ports(
        hub: Hub, tmp_path: Path) -> None:
    """A taken HTTP port fails start() naming --http-port and frees the gRPC ports."""
    assert hub.http_port
    second = Hub(HubConfig(data_dir=tmp_path / "second", port=0, node_port=0,
                           http_port=hub.http_port, client_file=tmp_path / "second.json"))
    with pytest.raises(Unavailable, match=f"HTTP on 127.0.0.1:{hub.http_port}.*--http-port"):
        await second.start()
    third = Hub(HubConfig(data_dir=tmp_path / "third", port=second.port,
                          node_port=second.node_port, http_port=0,
                          client_file=tmp_path / "third.json"))
    await third.start()
    await third.close(grace=0)


# --- metrics ------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_metrics_parse_strictly_and_report_tasks_nodes_and_the_process(
        hub: Hub, tmp_path: Path, client: Client) -> None:
    """/metrics parses strictly (and in promtool) with every series, escaped."""
    odd = 'odd "name" \\ here'
    async with running_node(hub, tmp_path / "n1", name=odd, slots=3):
        task = await client.submit(argv=[PY, "-c", FOREVER])
        await until_output(client, task.id, b"up")
        async with httpx2.AsyncClient() as http:
            scrape = await http.get(url(hub, "/metrics"))
        await client.cancel(task.id)
        node_id = only_node(hub)
    assert scrape.status_code == 200
    assert scrape.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    fams = parse_exposition(scrape.text)
    assert promtool_problems(scrape.text) in (None, "")

    assert fams["cortex_hub_info"].value("cortex_hub_info", hub_id="hub-1",
                                         version="0.1.0") == 1
    active = fams["cortex_tasks_active"]
    assert active.kind == "gauge"
    assert {s: active.value("cortex_tasks_active", tenant="default", state=s)
            for s in ("queued", "assigned", "running")} == {
                "queued": 0, "assigned": 0, "running": 1}
    nodes = fams["cortex_nodes_connected"]
    assert nodes.value("cortex_nodes_connected", tenant="default", state="online") == 1
    assert nodes.value("cortex_nodes_connected", tenant="default", state="draining") == 0
    who = {"tenant": "default", "node_id": node_id, "node": odd}
    assert fams["cortex_node_running_tasks"].value("cortex_node_running_tasks", **who) == 1
    assert fams["cortex_node_slots"].value("cortex_node_slots", **who) == 3
    assert fams["cortex_node_send_queue_messages"].value(
        "cortex_node_send_queue_messages", **who) >= 0
    assert fams["cortex_stream_backlog_messages"].value("cortex_stream_backlog_messages") >= 0
    expiry = fams["cortex_node_certificate_expiry_seconds"].value(
        "cortex_node_certificate_expiry_seconds", **who)
    assert 0 < expiry <= hub.config.node_cert_ttl_s
    assert fams["cortex_mcp_http_clients"].kind == "gauge"
    assert fams["process_cpu_seconds_total"].kind == "counter"
    assert fams["process_cpu_seconds_total"].value("process_cpu_seconds_total") > 0
    assert fams["process_resident_memory_bytes"].value("process_resident_memory_bytes") > 0


@pytest.mark.asyncio
async def test_metrics_count_finished_tasks_and_dispatch_latency(
        hub: Hub, node: Agent, client: Client) -> None:
    """Finished tasks are counted by final state, and each assignment lands in the
    dispatch latency histogram (cumulative buckets, +Inf equal to the count)."""
    ok = await client.run(argv=["true"])
    bad = await client.run(argv=["false"])
    assert ok.ok
    assert not bad.ok
    async with httpx2.AsyncClient() as http:
        fams = parse_exposition((await http.get(url(hub, "/metrics"))).text)
    finished = fams["cortex_tasks_finished_total"]
    assert finished.kind == "counter"
    assert finished.value("cortex_tasks_finished_total", tenant="default",
                          state="succeeded") == 1
    assert finished.value("cortex_tasks_finished_total", tenant="default", state="failed") == 1
    latency = fams["cortex_dispatch_latency_seconds"]
    assert latency.kind == "histogram"
    count = latency.value("cortex_dispatch_latency_seconds_count")
    assert count == 2
    buckets = sorted((float(lbl["le"]), v) for lbl, v
                     in latency.by("cortex_dispatch_latency_seconds_bucket"))
    assert buckets[-1] == (float("inf"), count)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)


def test_exposition_escapes_labels_and_help_and_refuses_bad_series() -> None:
    """Escapes round-trip; histograms render; bad or repeated series are refused."""
    gauge = Family("x_gauge", "gauge", 'help with \\ and\nnewline and "quotes"')
    nasty = 'a\\b"c\nd'
    gauge.add(1.5, {"v": nasty})
    gauge.add(math.inf, {"v": "inf"})
    hist = Family("x_seconds", "histogram", "a histogram")
    for le, count in (("0.1", 1), ("+Inf", 3)):
        hist.add(count, {"le": le}, suffix="_bucket")
    hist.add(0.42, suffix="_sum")
    hist.add(3, suffix="_count")
    fams = parse_exposition(render([gauge, hist]))
    assert fams["x_gauge"].help == 'help with \\ and\nnewline and "quotes"'
    assert fams["x_gauge"].value("x_gauge", v=nasty) == 1.5
    assert fams["x_gauge"].value("x_gauge", v="inf") == math.inf
    assert fams["x_seconds"].value("x_seconds_bucket", le="+Inf") == 3
    assert fams["x_seconds"].value("x_seconds_count") == 3
    with pytest.raises(ValueError, match="duplicate series"):
        gauge.add(2, {"v": nasty})
    with pytest.raises(ValueError, match="not a Prometheus name"):
        Family("bad-name", "gauge", "x")
    with pytest.raises(ValueError, match="not a Prometheus name"):
        gauge.add(1, {"bad-label": "x"})
    with pytest.raises(ValueError, match="_total"):
        Family("x_count", "counter", "x")
    with pytest.raises(ValueError, match="given twice"):
        render([gauge, gauge])


def test_the_strict_parser_rejects_what_prometheus_rejects() -> None:
    """The test's own parser is not a rubber stamp: each broken exposition fails it."""
    good = "# HELP a_b x\n# TYPE a_b gauge\na_b 1\n"
    parse_exposition(good)
    for broken in (
        good.rstrip("\n"),                                        # no final newline
        "# TYPE a_b gauge\na_b 1\n",                              # TYPE without HELP
        good + "a_b 2\n",                                         # series twice
        '# HELP a_b x\n# TYPE a_b gauge\na_b{l="x\\q"} 1\n',      # bad escape
        '# HELP a_b x\n# TYPE a_b gauge\na_b{l="x"y"} 1\n',       # unescaped quote
        "# HELP a_b x\n# TYPE a_b gauge\na_b one\n",              # not a number
        good + "# HELP c x\n# TYPE c gauge\nc 1\na_b{l=\"2\"} 1\n",  # family split
        "# HELP a_b x\n# TYPE a_b gauge\nother 1\n",              # undeclared family
    ):
        with pytest.raises(AssertionError):
            parse_exposition(broken)


# --- MCP over streamable HTTP -------------------------------------------------------------

@pytest.mark.asyncio
async def test_mcp_over_http_lists_the_tools_and_the_node(hub: Hub, node: Agent) -> None:
    """tools/list offers every Cortex tool; list_nodes shows the connected node."""
    async with mcp_http(hub) as mcp:
        tools = {t.name for t in (await mcp.list_tools()).tools}
        listed = await call(mcp, "list_nodes")
    assert tools == set(TOOL_NAMES)
    assert [n["id"] for n in listed["nodes"]] == [only_node(hub)]


@pytest.mark.asyncio
async def test_mcp_over_http_runs_a_short_command_inline(hub: Hub, node: Agent) -> None:
    """run_command answers a short command with its exit code and output."""
    async with mcp_http(hub) as mcp:
        res = await call(mcp, "run_command", command="echo out; echo err >&2; exit 3")
    assert (res["state"], res["exit_code"]) == ("failed", 3)
    assert (res["stdout"], res["stderr"]) == ("out\n", "err\n")


@pytest.mark.asyncio
async def test_mcp_over_http_drives_a_long_job_through_start_status_and_cancel(
        hub: Hub, node: Agent) -> None:
    """A long job runs through start_task, task_output, task_status, cancel_task."""
    async with mcp_http(hub) as mcp:
        started = await call(mcp, "start_task", argv=[PY, "-c", FOREVER])
        task_id = started["task_id"]
        assert "task_output" in started["hint"]
        assert await output_until(mcp, task_id, "up\n") == "up\n"
        status = await call(mcp, "task_status", task_id=task_id)
        assert (status["state"], status["finished"]) == ("running", False)
        cancelled = await cancel_task(mcp, task_id, reason="test over")
        assert (cancelled["state"], cancelled["finished"]) == ("cancelled", True)
        status = await call(mcp, "task_status", task_id=task_id)
    assert status["state"] == "cancelled"


@pytest.mark.asyncio
async def test_mcp_over_http_refuses_a_missing_or_unknown_token_saying_what_to_do(
        hub: Hub) -> None:
    """No or unknown bearer token: 401, a challenge, JSON naming the header."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with httpx2.AsyncClient() as http:
        missing = await http.post(url(hub, "/mcp"), json=body)
        unknown = await http.post(url(hub, "/mcp"), json=body,
                                  headers={"Authorization": f"Bearer {UNKNOWN_CREDENTIAL}"})
    for res in (missing, unknown):
        assert res.status_code == 401
        assert res.headers["www-authenticate"].startswith('Bearer realm="cortex"')
        assert "Authorization: Bearer ctk_" in res.json()["error_description"]
    assert missing.json()["error_description"].startswith("no API token")
    assert unknown.json()["error"] == "invalid_token"
    assert "unknown API token" in unknown.json()["error_description"]
    with pytest.RaisesGroup(pytest.RaisesExc(MCPError), flatten_subgroups=True):
        async with mcp_http(hub, UNKNOWN_CREDENTIAL):
            pass


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_mcp_over_http_is_bound_by_each_callers_token(
        hub: Hub, node: Agent, client: Client, mode: str) -> None:
    """Each call is bound by its caller's token: tenant, role, per-token error."""
    task = await client.submit(argv=["true"])
    other = await agent_token(hub, tenant="other")
    viewer = await agent_token(hub, tenant="default", role="viewer")
    async with mcp_http(hub, mode=mode) as admin, mcp_http(hub, other, mode=mode) as stranger, \
            mcp_http(hub, viewer, mode=mode) as reader:
        mine, theirs = await asyncio.gather(call(admin, "list_nodes"),
                                            call(stranger, "list_nodes"))
        assert [n["id"] for n in mine["nodes"]] == [only_node(hub)]
        assert theirs["nodes"] == []
        assert "no node has joined" in theirs["hint"]
        hidden = await call_error(stranger, "task_status", task_id=task.id)
        assert f"no task {task.id!r} is visible to this token" in hidden
        assert (await call(reader, "task_status", task_id=task.id))["task_id"] == task.id
        refused = await call_error(reader, "run_command", command="true")
        assert "role 'viewer' may not call Submit" in refused
        assert "Authorization: Bearer" in refused
        async with httpx2.AsyncClient() as http:
            fams = parse_exposition((await http.get(url(hub, "/metrics"))).text)
        assert fams["cortex_mcp_http_clients"].value("cortex_mcp_http_clients") == 3


@pytest.mark.asyncio
async def test_a_broken_mcp_stack_answers_503_and_leaves_the_other_routes_up() -> None:
    """If MCP fails to load, /mcp answers 503 saying so, while /healthz goes on."""
    def broken() -> McpEndpoint:
        raise RuntimeError("no MCP here")

    route = DeferredMcp()
    app = build_app(ready=lambda: True, metrics=lambda: render([]), mcp=route)
    server = HttpServer(HttpServer.bind("127.0.0.1", 0), app,
                        mcp=McpLoader(route, "json", broken))
    await server.start()
    try:
        async with httpx2.AsyncClient() as http:
            base = f"http://127.0.0.1:{server.port}"
            mcp = await http.post(f"{base}/mcp", json={})
            health = await http.get(f"{base}/healthz")
    finally:
        await server.close(grace=1)
    assert mcp.status_code == 503
    assert "MCP failed to start on this hub (no MCP here)" in mcp.json()["error_description"]
    assert health.status_code == 200


@pytest.mark.asyncio
async def test_hub_clients_per_token_are_bounded_and_idle_ones_closed_first() -> None:
    """Past the bound, idle tokens' clients close first; busy ones stay."""
    clients = _TokenClients(
        lambda token: ClientConfig(address="127.0.0.1:1", token=token), limit=1)
    async with clients.admit("ctk_a.x"):
        async with clients.admit("ctk_b.x"):
            assert len(clients) == 2  # both busy: over the bound until one is done
        async with clients.admit("ctk_c.x"):
            assert len(clients) == 2  # b was idle and went; a is still busy
    async with clients.admit("ctk_d.x"):
        assert len(clients) == 1
    await clients.aclose()
    assert len(clients) == 0


# --- the CLI --------------------------------------------------------------------------------

def test_cortex_hub_prints_and_serves_its_http_port(tmp_path: Path) -> None:
    """`cortex hub` prints ", http HOST:PORT", serves it, exits 0 on SIGTERM."""
    proc = HubProcess(tmp_path / "hub")
    proc.start()
    try:
        assert proc.http_port > 0
        res = httpx2.get(f"http://127.0.0.1:{proc.http_port}/healthz", timeout=10)
        assert (res.status_code, res.text) == (200, "ok\n")
    finally:
        code = proc.stop()
        assert proc.proc is not None
        if proc.proc.stdout is not None:  # its reader thread saw EOF when the hub exited
            proc.proc.stdout.close()
    assert code == 0
