"""Starting a node agent: identity (enroll once), skills, journal, signals."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import multiprocessing
import os
import signal

from cortex.errors import InvalidArgument
from cortex.node.agent import Agent
from cortex.node.artifacts import NodeArtifacts
from cortex.node.cgroups import CgroupManager
from cortex.node.config import NodeConfig
from cortex.node.fs import FsSkill
from cortex.node.identity import Identity, load_identity, save_identity
from cortex.node.journal import Journal
from cortex.node.supervisor import Supervisor
from cortex.skills.base import Skill
from cortex.skills.browser import (
    BrowserPolicy,
    BrowserSettings,
    BrowserSkill,
    find_chromium,
    probe_chromium,
    session_limit,
)
from cortex.skills.noop import NoopSkill
from cortex.skills.shell import ShellSkill
from cortex.skills.worker import WorkerPool, WorkerSkill

__all__ = ["build_agent", "ensure_identity", "run_node"]

log = logging.getLogger("cortex.node")


def ensure_identity(config: NodeConfig) -> Identity:
    """The node's identity from its data dir, enrolling with the join token the first time."""
    ident = load_identity(config.data_dir)
    if ident is not None:
        return _dial_override(config, ident)
    if not config.hub or not config.token:
        raise InvalidArgument(
            f"this node is not enrolled yet ({config.data_dir} has no identity): pass "
            "--hub HOST:PORT and --token TOKEN (from `cortex token join` on the hub)")
    from cortex.node.enroll import enroll  # the X.509 toolkit loads only to enroll

    ident = enroll(hub=config.hub, token=config.token, data_dir=config.data_dir,
                   name=config.name)
    log.info("enrolled as node %s in tenant %s", ident.node_id, ident.tenant)
    return _dial_override(config, ident)


def _dial_override(config: NodeConfig, ident: Identity) -> Identity:
    """`--node-address` replaces (and saves) where the identity says to dial."""
    if not config.node_address or config.node_address == ident.node_address:
        return ident
    ident = dataclasses.replace(ident, node_address=config.node_address)
    save_identity(config.data_dir, ident)
    log.info("dialing the hub at %s from now on", ident.node_address)
    return ident


def build_agent(config: NodeConfig, ident: Identity) -> tuple[Agent, Journal]:
    # One subtree per node identity: agents sharing a cgroup never touch each other's tasks.
    cgroups = CgroupManager.detect(f"cortex-{ident.node_id}") if config.use_cgroups else None
    if cgroups is not None:
        cgroups.kill_stale(set())  # nothing survives an agent restart: the journal reports it
    log.info("process isolation: %s", cgroups.kind if cgroups else "process groups only")
    workers = WorkerPool()  # long-lived worker processes of the stateful skills
    shell = ShellSkill(cgroups=cgroups, kill_grace_s=config.kill_grace_s)
    log.info("task limits (cpus, memory) enforced by: %s", shell.limit_enforcement)
    skills: dict[str, Skill] = {
        "shell": shell,
        "noop": NoopSkill(),
        "pyeval": WorkerSkill("pyeval", workers),
        "fs": FsSkill(NodeArtifacts(ident), config.fs_roots),
    }
    if (browser := _browser_skill(config, workers, NodeArtifacts(ident))) is not None:
        skills["browser"] = browser
    journal = Journal(config.data_dir / "journal.db")
    agent = Agent(config, ident, Supervisor(skills), sorted(skills), journal, cgroups=cgroups,
                  workers=workers, limit_enforcement=shell.limit_enforcement)
    return agent, journal


@functools.cache
def _chromium_problem(path: str | None) -> str:
    return probe_chromium(path)  # once per process: tests build many agents


def _browser_skill(config: NodeConfig, workers: WorkerPool, artifacts: NodeArtifacts
                   ) -> BrowserSkill | None:
    """The browser skill, when Chromium works here (else the node does not offer it)."""
    settings = BrowserSettings.from_env(dict(os.environ))
    chromium = find_chromium(settings.chromium)
    problem = _chromium_problem(chromium)
    if chromium is None or problem:
        log.info("browser skill off: %s", problem)
        return None
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    limit = settings.max_sessions or session_limit(mem)
    return BrowserSkill(workers, data_dir=config.data_dir, chromium=chromium,
                        max_sessions=limit, idle_timeout_s=settings.idle_timeout_s,
                        policy=BrowserPolicy(allow_file_urls=settings.allow_file_urls),
                        artifacts=artifacts)


async def enroll_in_child(config: NodeConfig) -> Identity:
    """`ensure_identity` in a short-lived child process, so the long-running agent never
    maps the X.509 toolkit (~10 MiB resident) just to enroll once."""
    if (ident := load_identity(config.data_dir)) is not None:
        return _dial_override(config, ident)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        ident = await asyncio.get_running_loop().run_in_executor(pool, ensure_identity, config)
    log.info("enrolled as node %s in tenant %s", ident.node_id, ident.tenant)
    return ident


async def run_node(config: NodeConfig) -> None:
    """Run until SIGINT/SIGTERM (drain), or a second signal (stop now)."""
    ident = await enroll_in_child(config)
    agent, journal = build_agent(config, ident)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, agent.request_stop)
    try:
        await agent.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        journal.close()
