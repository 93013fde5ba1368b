"""Browser benchmark (issue 6): hub and node as real processes, a real Chromium.

Figures, each with its baseline from the same run:
- per-action latency through Cortex (SDK -> hub -> node -> worker -> Chromium) for click,
  snapshot, screenshot and eval vs the same action through Playwright directly, attached
  over CDP to the same Chromium and the same page: p50/p99, the p50 ratio (must <= 2x,
  aim <= 1.3x) and the overhead in ms (cortex p50 - playwright p50), next to the round
  trip of a `noop` task (the floor every task pays: submit, store, dispatch, report), and
  the CPU per action of each process on the path (client, hub, node, worker with
  Playwright's driver);
- the transport floor: the same hops bare (bench/_floor.py: an mTLS gRPC call, an mTLS
  stream message, a pipe frame, each between two Python processes, echoed with no work),
  and per action `floor_ratio_p50`, the ratio a hub and node doing nothing at all would
  reach on them - what no optimisation of Cortex's own work can beat;
- memory per session: RSS of the session's Chromium process tree and of its worker
  (RSS double counts shared pages, so this is an upper bound);
- video: frames per second achieved and CPU (percent of one core, Chromium + worker) while
  recording an animated page at 1280x720 / 15 fps, vs the same page not recorded.

Run: `.venv/bin/python bench/bench_browser.py [--quick]`; prints JSON, writes
bench/results/browser.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "browser"))

from _common import emit, summary_ms, timed
from _floor import measure_floor
from browser_site import serve_site
from playwright.async_api import async_playwright

from cortex.sdk import BrowserSession, Client, ClientConfig
from cortex.testing import HubProcess, NodeProcess


async def wait_online(client: Client, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not [n for n in await client.list_nodes(skill="browser") if n.state == 1]:
        if time.monotonic() > deadline:
            raise RuntimeError("no node with the browser skill came online")
        await asyncio.sleep(0.05)  # no node-online notification exists to await


def tree(pid: int) -> list[psutil.Process]:
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        for p in tree(pid):
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


async def bench(n: int, video_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_s, serve_site() as site:
        tmp = Path(tmp_s)
        hub = HubProcess(tmp / "hub")
        hub.start()
        node = NodeProcess(tmp / "node", hub.address)
        try:
            cfg = ClientConfig(address=hub.address, token=hub.token,
                               ca_pem=(tmp / "hub" / "ca" / "ca.pem").read_bytes())
            async with Client(cfg) as client:
                node.token = (await client.create_join_token()).token
                node.start()
                await wait_online(client)
                return await measure(client, tmp, site, n, video_s,
                                     pids={"hub": hub.proc.pid if hub.proc else 0,
                                           "node": node.proc.pid if node.proc else 0})
        finally:
            node.kill()
            hub.kill()


async def measure(client: Client, tmp: Path, site: str, n: int, video_s: float, *,
                  pids: dict[str, int]) -> dict[str, Any]:
    browser = await BrowserSession.open(client, "bench", url=f"{site}/login")
    await browser.type(None, "ann", selector="input[name=user]")
    await browser.type(None, "secret", selector="input[name=password]", submit=True)
    await browser.wait(url="**/app")
    [info] = (tmp / "node" / "browser").glob("*/chromium.json")
    chromium_pid = json.loads(info.read_text())["pid"]
    port = json.loads(info.read_text())["port"]
    worker = next(p for p in psutil.Process().children(recursive=True)
                  if "cortex.workers" in " ".join(p.cmdline()) and "browser" in p.cmdline())
    result: dict[str, Any] = {"actions": {}}
    # Where an action's CPU goes: each process of the path, ms of CPU per action.
    procs = {"client": psutil.Process(), "worker": worker,
             **{name: psutil.Process(pid) for name, pid in pids.items()}}
    async with async_playwright() as pw:
        direct = await pw.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
        page = next(p for p in direct.contexts[0].pages if p.url.endswith("/app"))
        cases: dict[str, tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]]]] = {
            "click": (lambda: browser.click(selector="#keys"),
                      lambda: page.locator("#keys").first.click()),
            "snapshot": (lambda: browser.snapshot(),
                         lambda: page.aria_snapshot(mode="ai")),
            "screenshot": (lambda: browser.screenshot(),
                           lambda: page.screenshot()),
            "eval": (lambda: browser.eval("document.title"),
                     lambda: page.evaluate("document.title")),
        }
        for name, (through_cortex, playwright) in cases.items():
            before = {k: tree_cpu([p.pid]) if k == "worker" else _cpu(p)
                      for k, p in procs.items()}
            c = summary_ms(await timed(n, through_cortex))
            cpu = {k: round(((tree_cpu([p.pid]) if k == "worker" else _cpu(p)) - before[k])
                            / (n + 1) * 1000, 2) for k, p in procs.items()}
            p = summary_ms(await timed(n, playwright))
            ratio = round(c["p50_ms"] / p["p50_ms"], 2)
            result["actions"][name] = {
                "cortex": c, "playwright": p, "ratio_p50": ratio, "within_2x": ratio <= 2.0,
                "overhead_ms": round(c["p50_ms"] - p["p50_ms"], 2),
                "cortex_cpu_ms_per_action": cpu}
        result["noop_task"] = summary_ms(await timed(n, lambda: client.run(skill="noop")))
        await direct.close()  # detaches only
    result["transport_floor"] = await transport_floor(max(n, 200), tmp / "floor")
    floor_ms = result["transport_floor"]["floor_p50_ms"]
    for figures in result["actions"].values():
        pw_ms = figures["playwright"]["p50_ms"]
        # The best ratio any hub and node could reach on these hops, doing no work at all.
        figures["floor_ratio_p50"] = round((pw_ms + floor_ms) / pw_ms, 2)

    rss = sum(p.memory_info().rss for p in tree(chromium_pid)) / 2**20
    result["memory_mib"] = {"chromium_tree_rss": round(rss, 1),
                            "worker_rss": round(worker.memory_info().rss / 2**20, 1),
                            "worker_tree_rss": round(sum(
                                p.memory_info().rss for p in tree(worker.pid)) / 2**20, 1)}
    await browser.navigate(f"{site}/animate")
    pids = [chromium_pid, worker.pid]
    cpu0, t0 = tree_cpu(pids), time.monotonic()
    await browser.wait(predicate=f"new Promise(r => setTimeout(() => r(true), {video_s * 1000}))",
                       timeout_s=video_s + 10)
    idle_cpu = (tree_cpu(pids) - cpu0) / (time.monotonic() - t0) * 100
    await browser.record_start(fps=15, width=1280, height=720)
    cpu0, t0 = tree_cpu(pids), time.monotonic()
    await browser.wait(predicate=f"new Promise(r => setTimeout(() => r(true), {video_s * 1000}))",
                       timeout_s=video_s + 10)
    rec_cpu = (tree_cpu(pids) - cpu0) / (time.monotonic() - t0) * 100
    video = await browser.record_stop()
    result["video_720p_15fps"] = {
        "frames": video["frames"], "seconds": video["seconds"],
        "fps": round(video["frames"] / max(video["seconds"], 1e-9), 1),
        "dropped": video["dropped"], "bytes": video["segments"][0]["bytes"],
        "cpu_percent_recording": round(rec_cpu, 1), "cpu_percent_not_recording": round(
            idle_cpu, 1), "cpu_ratio": round(rec_cpu / max(idle_cpu, 1e-9), 2)}
    await browser.close()
    return result


async def transport_floor(n: int, directory: Path) -> dict[str, Any]:
    """The bare hops of an action's path (bench/_floor.py) and their sum: the overhead
    that remains with no store write, validation, audit or scheduling anywhere."""
    hops = {name: summary_ms(values)
            for name, values in (await measure_floor(n, directory)).items()}
    return {**hops, "floor_p50_ms": round(sum(h["p50_ms"] for h in hops.values()), 3),
            "path": "client -> hub (gRPC call) -> node (stream message) -> worker (pipe "
                    "frame), each hop between two Python processes, mTLS on both gRPC hops"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    opts = parser.parse_args()
    n, video_s = (10, 3.0) if opts.quick else (40, 8.0)
    emit("browser", asyncio.run(bench(n, video_s)))


if __name__ == "__main__":
    main()
