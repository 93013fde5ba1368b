"""What `/metrics` reports: read from the hub's memory at scrape time, never the store.

Everything here is a gauge of the present (tasks the task manager holds, connected nodes
and their queues and heartbeat load, certificate expiry) or a process figure; nothing is
accumulated between scrapes, so two hubs in one process never share a series. The one
figure from the store, artifact bytes, is read (cached) by `_store_metrics.ArtifactBytes`
before the scrape renders.
"""

from __future__ import annotations

import os
import resource
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.core.states import State
from cortex.hub._entry import LATENCY_BUCKETS_S, TaskStats
from cortex.hub.http._exposition import Family
from cortex.hub.http._store_metrics import (
    CertExpiry,
    artifact_family,
    certificate_family,
)
from cortex.hub.registry import NodeConn

__all__ = ["HubSource", "collect"]

_ACTIVE = (State.QUEUED, State.ASSIGNED, State.RUNNING)
_ACTIVE_VALUES = frozenset(int(s) for s in _ACTIVE)
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class HubSource:
    """Where the figures come from (callables: read at each scrape)."""

    hub_id: str
    version: str
    nodes: Callable[[], Iterable[NodeConn]]
    active_tasks: Callable[[], Iterable[pb.Task]]
    clock: Callable[[], float]
    mcp_clients: Callable[[], int] | None = None
    stats: Callable[[], TaskStats] | None = None
    dashboard_sessions: Callable[[], int] | None = None
    artifact_bytes: Callable[[], Mapping[str, int]] | None = None   # tenant -> bytes
    certificates: Callable[[], list[CertExpiry]] | None = None      # the hub's own


def collect(src: HubSource) -> list[Family]:
    """Every family, in a fixed order."""
    conns = list(src.nodes())
    families = [_info(src), *_tasks(src.active_tasks(), conns), *_nodes(conns, src.clock())]
    if src.stats is not None:
        families += _counters(src.stats())
    if src.mcp_clients is not None:
        mcp = Family("cortex_mcp_http_clients", "gauge",
                     "API tokens with an open hub client for MCP over HTTP.")
        mcp.add(src.mcp_clients())
        families.append(mcp)
    if src.dashboard_sessions is not None:
        ui = Family("cortex_dashboard_sessions", "gauge",
                    "Logged-in web dashboard sessions on this hub (all tenants).")
        ui.add(src.dashboard_sessions())
        families.append(ui)
    if src.artifact_bytes is not None:
        families.append(artifact_family(src.artifact_bytes()))
    if src.certificates is not None:
        families.append(certificate_family(src.certificates(), src.clock()))
    return families + _process()


def _info(src: HubSource) -> Family:
    info = Family("cortex_hub_info", "gauge", "This hub: its id and Cortex version (always 1).")
    info.add(1, {"hub_id": src.hub_id, "version": src.version})
    return info


def _tasks(tasks: Iterable[pb.Task], conns: list[NodeConn]) -> list[Family]:
    counts = Counter((t.tenant, State(t.state)) for t in tasks if t.state in _ACTIVE_VALUES)
    # Every active state of every tenant seen, zeros included: a series that vanishes at 0
    # breaks rate() and alerts on absence.
    tenants = {tenant for tenant, _ in counts} | {c.tenant for c in conns}
    active = Family("cortex_tasks_active", "gauge",
                    "Unfinished tasks this hub holds, by tenant and state.")
    for tenant in sorted(tenants):
        for state in _ACTIVE:
            active.add(counts[(tenant, state)], {"tenant": tenant, "state": state.label})
    return [active]


def _counters(stats: TaskStats) -> list[Family]:
    finished = Family("cortex_tasks_finished_total", "counter",
                      "Tasks that reached a final state on this hub since it started.")
    for (tenant, state), n in sorted(stats.finished.items()):
        finished.add(n, {"tenant": tenant, "state": state})
    latency = Family("cortex_dispatch_latency_seconds", "histogram",
                     "Time from entering the queue to being assigned to a node.")
    for bound, n in zip(LATENCY_BUCKETS_S, stats.latency_buckets, strict=True):
        latency.add(n, {"le": f"{bound:g}"}, suffix="_bucket")
    latency.add(stats.latency_count, {"le": "+Inf"}, suffix="_bucket")
    latency.add(round(stats.latency_sum_s, 6), suffix="_sum")
    latency.add(stats.latency_count, suffix="_count")
    return [finished, latency]


def _nodes(conns: list[NodeConn], now: float) -> list[Family]:
    connected = Family("cortex_nodes_connected", "gauge",
                       "Nodes with an open stream to this hub, by tenant and state.")
    running = Family("cortex_node_running_tasks", "gauge",
                     "Task attempts each connected node runs.")
    slots = Family("cortex_node_slots", "gauge", "Tasks each connected node runs at once.")
    outbox = Family("cortex_node_send_queue_messages", "gauge",
                    "Messages queued for each connected node, not yet sent on its stream.")
    backlog = Family("cortex_stream_backlog_messages", "gauge",
                     "Messages queued for all connected nodes (sum of their send queues).")
    expiry = Family("cortex_node_certificate_expiry_seconds", "gauge",
                    "Seconds until each connected node's certificate expires "
                    "(negative: expired).")
    load = _LoadFamilies()
    states = Counter((c.tenant, "draining" if c.draining else "online") for c in conns)
    for tenant in sorted({c.tenant for c in conns}):
        for state in ("online", "draining"):
            connected.add(states[(tenant, state)], {"tenant": tenant, "state": state})
    for conn in conns:
        who = {"tenant": conn.tenant, "node_id": conn.node_id, "node": conn.node.name}
        running.add(len(conn.running), who)
        slots.add(conn.slots, who)
        outbox.add(conn.outbox.qsize(), who)
        if conn.node.cert_not_after:
            expiry.add(round(conn.node.cert_not_after - now, 3), who)
        load.add(conn.node, who)
    backlog.add(sum(c.outbox.qsize() for c in conns))
    return [connected, running, slots, outbox, backlog, expiry, *load.families()]


class _LoadFamilies:
    """What each connected node reports in its heartbeats, and its capacity."""

    def __init__(self) -> None:
        self.load1 = Family("cortex_node_load1", "gauge",
                            "Each connected node's 1-minute load average (its last heartbeat).")
        self.cpu = Family("cortex_node_cpu_percent", "gauge",
                          "Each connected node's CPU use in percent (its last heartbeat).")
        self.memory = Family("cortex_node_memory_used_bytes", "gauge",
                             "Memory in use on each connected node (its last heartbeat).")
        self.capacity = Family("cortex_node_memory_capacity_bytes", "gauge",
                               "Memory each connected node offers to tasks.")
        self.cpus = Family("cortex_node_cpus", "gauge",
                           "CPU cores each connected node offers to tasks.")

    def add(self, node: pb.Node, who: dict[str, str]) -> None:
        self.load1.add(round(node.load.load1, 3), who)
        self.cpu.add(round(node.load.cpu_percent, 2), who)
        self.memory.add(node.load.memory_used_mib * _MIB, who)
        self.capacity.add(node.capacity.memory_mib * _MIB, who)
        self.cpus.add(node.capacity.cpus, who)

    def families(self) -> list[Family]:
        return [self.load1, self.cpu, self.memory, self.capacity, self.cpus]


def _process() -> list[Family]:
    """The standard process_* metrics (Linux /proc; CPU from getrusage anywhere)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = Family("process_cpu_seconds_total", "counter",
                 "User and system CPU time spent by the hub process, in seconds.")
    cpu.add(round(usage.ru_utime + usage.ru_stime, 6))
    out = [cpu]
    try:
        pages = Path("/proc/self/statm").read_text().split()
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: the rest is /proc-only
        return out
    page = os.sysconf("SC_PAGE_SIZE")
    for name, value, text in (
        ("process_resident_memory_bytes", int(pages[1]) * page, "Resident memory in bytes."),
        ("process_virtual_memory_bytes", int(pages[0]) * page, "Virtual memory in bytes."),
        ("process_open_fds", fds, "Open file descriptors."),
    ):
        fam = Family(name, "gauge", text)
        fam.add(value)
        out.append(fam)
    return out
