"""Dashboard benchmark: the web paths against their baselines, measured in the same run.

A hub and a node run in-process (SQLite, loopback). Figures:
- a finished task's whole log (N lines) read through the dashboard's SSE stream vs the
  same events through the SDK's gRPC `Watch` (both replay the stored history): seconds,
  and the ratio SSE / gRPC;
- live: lines/s reaching an SSE reader while a task prints them, vs a gRPC watcher of the
  same task at the same time;
- page render p50/p99 of /ui/tasks (50 rows) and /ui/nodes vs /healthz (no template, no
  store): ratios.

Run: `.venv/bin/python bench/bench_dashboard.py [--quick]`; prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import httpx2
from _common import emit, summary_ms

from cortex.hub.server import Hub
from cortex.sdk import Client, ClientConfig, build_spec
from cortex.testing import running_hub, running_node

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def lines_script(n: int) -> str:
    return (f"import sys\nw = sys.stdout.write\nfor i in range({n}):\n"
            "    w(f'line {i} ' + 'x' * 60 + '\\n')\nsys.stdout.flush()\n")


async def login(http: httpx2.AsyncClient, token: str) -> None:
    form = await http.get("/ui/login")
    (secret,) = _CSRF.findall(form.text)
    res = await http.post("/ui/login", data={"token": token, "csrf": secret})
    assert res.status_code == 303, res.text


async def sse_read(http: httpx2.AsyncClient, task_id: str) -> tuple[float, int]:
    """Seconds to read the task's whole stream, and the output messages it held."""
    t0 = time.perf_counter()
    messages = 0
    async with http.stream("GET", f"/ui/tasks/{task_id}/events") as res:
        async for line in res.aiter_lines():
            if line == "event: output":
                messages += 1
    return time.perf_counter() - t0, messages


async def grpc_read(client: Client, task_id: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    messages = 0
    async for ev in client.watch(task_id):
        if ev.HasField("output"):
            messages += 1
    return time.perf_counter() - t0, messages


async def timed_gets(http: httpx2.AsyncClient, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        res = await http.get(path)
        out.append(time.perf_counter() - t0)
        assert res.status_code == 200, (path, res.status_code)
    return out


async def measure(hub: Hub, client: Client, lines: int, gets: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{hub.http_port}"
    async with httpx2.AsyncClient(base_url=base, timeout=120.0) as http:
        await login(http, hub.admin_token)
        done = await client.run(argv=[sys.executable, "-c", lines_script(lines)])
        assert done.ok
        task_id = done.task.id
        grpc_s, grpc_msgs = await grpc_read(client, task_id)
        sse_s, sse_msgs = await sse_read(http, task_id)
        assert sse_msgs == grpc_msgs, (sse_msgs, grpc_msgs)

        live = await client.submit(argv=[sys.executable, "-c", lines_script(lines)])
        (sse_live, _), (grpc_live, _) = await asyncio.gather(
            sse_read(http, live.id), grpc_read(client, live.id))

        await client.submit_many([build_spec(skill="noop") for _ in range(200)])
        health = await timed_gets(http, "/healthz", gets)
        tasks = await timed_gets(http, "/ui/tasks", gets)
        nodes = await timed_gets(http, "/ui/nodes", gets)
    p50 = summary_ms(health)["p50_ms"]
    return {
        "history": {"lines": lines, "output_messages": sse_msgs, "grpc_watch_s":
                    round(grpc_s, 3), "sse_s": round(sse_s, 3),
                    "ratio_sse_over_grpc": round(sse_s / grpc_s, 2)},
        "live": {"lines": lines, "grpc_lines_per_s": round(lines / grpc_live),
                 "sse_lines_per_s": round(lines / sse_live),
                 "ratio_sse_over_grpc_time": round(sse_live / grpc_live, 2)},
        "pages": {"healthz": summary_ms(health), "ui_tasks": summary_ms(tasks),
                  "ui_nodes": summary_ms(nodes),
                  "ratio_tasks_p50_over_healthz": round(summary_ms(tasks)["p50_ms"] / p50, 1),
                  "ratio_nodes_p50_over_healthz": round(summary_ms(nodes)["p50_ms"] / p50, 1)},
    }


async def main(quick: bool) -> None:
    lines, gets = (5_000, 50) if quick else (50_000, 200)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with running_hub(root / "hub") as hub, running_node(hub, root / "n1"):
            assert hub.ca is not None
            config = ClientConfig(address=hub.address, token=hub.admin_token,
                                  ca_pem=hub.ca.cert_pem)
            async with Client(config) as client:
                result = await measure(hub, client, lines, gets)
    emit("dashboard", {"quick": quick, **result})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller run (CI smoke)")
    asyncio.run(main(parser.parse_args().quick))
