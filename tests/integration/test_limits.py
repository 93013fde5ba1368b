"""Task resource limits enforced on the node: the task's declared memory and CPUs become
its cgroup's limits (v1 memory/cpu controllers here), or an address-space rlimit when the
node has no cgroup to use; the node reports which it could use.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cortex.hub.server import Hub
from cortex.node.cgroups import CgroupManager
from cortex.sdk import Client, TaskState
from cortex.testing import running_node

pytestmark = pytest.mark.asyncio

PY = sys.executable
HOG = "b = bytearray(400 * 1024 * 1024)\nb[::4096] = b'x' * len(b[::4096])\nprint('survived')\n"
CPU_QUOTA = ("import re\n"
             "line = [l for l in open('/proc/self/cgroup') if re.search(r':cpu[,:]', l)][0]\n"
             "path = line.strip().split(':', 2)[2]\n"
             "root = [d for d in ('/sys/fs/cgroup/cpu', '/sys/fs/cgroup/cpu,cpuacct')\n"
             "        if __import__('os').path.isdir(d)][0]\n"
             "print(open(f'{root}{path}/cpu.cfs_quota_us').read().strip())\n")


def cgroup_limits_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("cgroup limits need root (cgroupfs is root-owned here)")
    probe = CgroupManager.detect("cortex-limits-probe")
    if probe is None or probe.enforces != {"memory", "cpu"}:
        pytest.skip("no v1 memory and cpu controllers on this machine")
    probe.destroy()


async def test_memory_and_cpu_limits_come_from_the_tasks_resources(
        hub: Hub, client: Client, tmp_path: Path) -> None:
    """--memory 64: a task touching 400 MiB is killed (OOM); --cpus 0.5: its cgroup's CFS
    quota is half the period. The node says it enforces limits with cgroup v1."""
    cgroup_limits_or_skip()
    async with running_node(hub, tmp_path / "n1"):
        (node,) = await client.list_nodes()
        assert node.limit_enforcement == "cgroup1"
        hog = await client.run(argv=[PY, "-c", HOG], memory_mib=64)
        assert hog.state == TaskState.FAILED
        assert b"survived" not in hog.stdout
        quota = await client.run(argv=[PY, "-c", CPU_QUOTA], cpus=0.5)
        assert quota.stdout.strip() == b"50000"
        free = await client.run(argv=[PY, "-c", HOG])
        assert free.stdout == b"survived\n"


async def test_without_cgroups_memory_is_limited_by_an_rlimit(
        hub: Hub, client: Client, tmp_path: Path) -> None:
    """A node without cgroups runs --memory tasks under prlimit --as, and says so."""
    async with running_node(hub, tmp_path / "n1", use_cgroups=False):
        (node,) = await client.list_nodes()
        assert node.limit_enforcement == "rlimit"
        hog = await client.run(argv=[PY, "-c", HOG], memory_mib=64)
        assert hog.state == TaskState.FAILED
        assert b"MemoryError" in hog.stderr
