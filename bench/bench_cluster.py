"""Scale-out benchmark (issue #7): the dispatch figures of one SQLite hub, one Postgres
hub and three Postgres hubs behind HAProxy, in one run, as ratios to SQLite.

- `true` round trip through the SDK (submit -> result): p50/p99;
- durable no-op tasks/s (SubmitMany, then WaitTasks);
- CPU seconds per 1,000 tasks per hub (the hubs' CPU over the throughput run divided by
  the hub count: the per-task cost is what scales out; this machine has few cores).

Every hub has one node (`--slots 64`); with three hubs the client and the nodes go
through HAProxy (TCP passthrough). Hubs, nodes and HAProxy are real processes; the
cluster comes from the cluster tests' harness (tests/cluster/cluster_harness.py).

Run: `.venv/bin/python bench/bench_cluster.py [--quick]`; prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "cluster"))

from _common import cpu_seconds, emit, summary_ms
from bench_dispatch import round_trips, throughput
from cluster_harness import Cluster

from cortex.testing import postgres_schema_url


async def measure(root: Path, *, hubs: int, store: str, n_rt: int, n_tp: int
                  ) -> dict[str, Any]:
    """Figures of `hubs` hubs on `store` ("" = SQLite: one hub only), a node each."""
    cluster = Cluster(root, store)
    try:
        if store:
            started = await cluster.start_hubs(hubs)
        else:
            started = await _sqlite_hub(cluster)
        if hubs > 1:
            lb = cluster.start_balancer()
            address, dial = lb.address, lb.node_address
        else:
            address, dial = started[0].address, f"127.0.0.1:{started[0].node_port}"
        client = cluster.client(address, call_timeout=120.0)
        for i in range(hubs):
            await cluster.start_node(client, address, dial, f"n{i + 1}", slots=64)
        await round_trips(client, 20)   # warm up channels and caches
        await asyncio.sleep(1.0)
        rt = summary_ms(await round_trips(client, n_rt))
        pids = [h.proc.pid for h in started if h.proc is not None]
        cpu0 = sum(cpu_seconds(p) for p in pids)
        tp = await throughput(client, n_tp)
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        return {"hubs": hubs, "round_trip_true": rt, "throughput": tp,
                "hub_cpu_s_per_1000_tasks_per_hub": round(cpu / n_tp * 1000 / hubs, 3),
                "hub_cpu_s_per_1000_tasks_all_hubs": round(cpu / n_tp * 1000, 3)}
    finally:
        await cluster.close()


async def _sqlite_hub(cluster: Cluster) -> list[Any]:
    from cortex.testing import HubProcess

    (cluster.root / "hub1").mkdir(parents=True, exist_ok=True)
    hub = HubProcess(cluster.root / "hub1", http_port=-1)
    cluster.hubs.append(hub)
    await asyncio.to_thread(hub.start, 60.0)
    return [hub]


def _ratios(fig: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    return {
        **fig,
        "p50_ratio_to_sqlite": round(fig["round_trip_true"]["p50_ms"]
                                     / base["round_trip_true"]["p50_ms"], 2),
        "p99_ratio_to_sqlite": round(fig["round_trip_true"]["p99_ms"]
                                     / base["round_trip_true"]["p99_ms"], 2),
        "throughput_ratio_to_sqlite": round(fig["throughput"]["tasks_per_s"]
                                            / base["throughput"]["tasks_per_s"], 2),
    }


async def main(quick: bool, postgres: str) -> None:
    n_rt, n_tp = (100, 1000) if quick else (300, 2000)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        lite = await measure(tmp / "sqlite", hubs=1, store="", n_rt=n_rt, n_tp=n_tp)
        with postgres_schema_url(postgres) as url:
            one = await measure(tmp / "pg1", hubs=1, store=url, n_rt=n_rt, n_tp=n_tp)
        with postgres_schema_url(postgres) as url:
            three = await measure(tmp / "pg3", hubs=3, store=url, n_rt=n_rt, n_tp=n_tp)
    emit("cluster", {
        "sqlite_single_hub": lite,
        "postgres_single_hub": {**_ratios(one, lite), "must_throughput_ratio_ge": 0.5},
        "postgres_three_hubs": _ratios(three, lite),
        "cpus": os.cpu_count(),
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--postgres", default=os.environ.get(
        "CORTEX_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.postgres))
