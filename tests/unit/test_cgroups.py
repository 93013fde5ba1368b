"""cgroup backends on this machine: create, add, list, kill, remove, limits, stale sweep.

These drive the real cgroupfs, so they need root and a mounted cgroup hierarchy; each
backend is skipped (with the reason) where it cannot work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv
import pytest

from cortex.errors import Conflict, InvalidArgument
from cortex.node.cgroups import Cgroup, CgroupManager, Kind, Limits

SRC = Path(__file__).resolve().parents[2] / "src"

# Reads one line (the go-ahead, sent once the test placed it), then starts two grandchildren
# that leave the process group with setsid, prints their pids and sleeps.
TREE = """
import subprocess, sys, time
sys.stdin.readline()
kids = [subprocess.Popen(["setsid", "sleep", "1000"]) for _ in range(2)]
print(*[k.pid for k in kids], flush=True)
time.sleep(1000)
"""


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll `condition` until it holds; the kernel gives no event for "group empty" on v1."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def detect_or_skip(kind: Kind) -> CgroupManager:
    if os.geteuid() != 0:
        pytest.skip("cgroup tests need root (cgroupfs is root-owned here)")
    manager = CgroupManager.detect(f"cortex-test-{uuid.uuid4().hex[:8]}", kinds=(kind,))
    if manager is None:
        pytest.skip(f"no usable cgroup {kind} hierarchy on this machine")
    return manager


@pytest.fixture(params=["v2", "v1"])
def manager(request: pytest.FixtureRequest) -> Iterator[CgroupManager]:
    mgr = detect_or_skip(request.param)
    yield mgr
    mgr.destroy()


@pytest.fixture
def spawn_tree() -> Iterator[Callable[[Cgroup], list[int]]]:
    """Start TREE inside a group; returns every pid of the tree (leader first)."""
    procs: list[subprocess.Popen[str]] = []

    def spawn(group: Cgroup) -> list[int]:
        proc = subprocess.Popen(
            [sys.executable, "-c", TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        group.add(proc.pid)
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        return [proc.pid, *map(int, proc.stdout.readline().split())]

    yield spawn
    for proc in procs:
        proc.kill()
        proc.wait()
        proc.stdin.close()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]


def assert_gone(pids: list[int]) -> None:
    for pid in pids:
        try:
            status = psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            continue
        # An orphan's zombie is dead; it waits only for init's periodic reaping.
        assert status == psutil.STATUS_ZOMBIE, f"pid {pid} still {status}"


def test_detect_prefers_v2_when_a_cgroup2_mount_exists() -> None:
    """With a cgroup2 mount (pure or hybrid `unified`), detect() picks the v2 backend."""
    if os.geteuid() != 0:
        pytest.skip("cgroup tests need root")
    if "cgroup2" not in Path("/proc/self/mounts").read_text():
        pytest.skip("no cgroup2 mount on this machine")
    manager = CgroupManager.detect(f"cortex-test-{uuid.uuid4().hex[:8]}")
    assert manager is not None
    try:
        assert manager.kind == "v2"
    finally:
        manager.destroy()


def test_detect_returns_none_quietly_when_not_permitted() -> None:
    """An unprivileged process gets None from detect(), not an exception."""
    if os.geteuid() != 0 or not Path("/usr/bin/python3").exists():
        pytest.skip("needs root to switch to uid nobody, and /usr/bin/python3 readable by it")
    # The checkout may sit in a directory uid nobody cannot enter (e.g. a 0700 mktemp -d):
    # give it a world-readable copy of the package.
    readable = Path(tempfile.mkdtemp(prefix="cortex-nobody-"))
    readable.chmod(0o755)
    shutil.copytree(SRC / "cortex", readable / "cortex",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for path in readable.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    code = (
        f"import sys; sys.path.insert(0, {str(readable)!r}); "
        "from cortex.node.cgroups import CgroupManager; print(CgroupManager.detect('x'))"
    )
    try:
        result = _run_as_nobody(code)
    finally:
        shutil.rmtree(readable, ignore_errors=True)
    assert result.stdout.strip() == "None", result.stderr


def _run_as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/usr/bin/python3", "-c", code],
        user=65534,
        group=65534,
        extra_groups=[],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )


def test_group_holds_and_kills_setsid_grandchildren(
    manager: CgroupManager, spawn_tree: Callable[[Cgroup], list[int]]
) -> None:
    """A group lists every process of a tree (setsid grandchildren too); kill() ends them."""
    group = manager.create("tree")
    assert group.kind == manager.kind
    pids = spawn_tree(group)
    assert sorted(pids) == group.pids()
    group.kill()
    wait_until(group.is_empty)
    assert_gone(pids)
    group.remove()
    assert not group.path.exists()


def test_children_forked_between_begin_and_end_spawn_are_born_inside(
    manager: CgroupManager,
) -> None:
    """A daemon that double-forks at once is inside the group: no window before placement."""
    group = manager.create("born")
    script = "(setsid sh -c 'echo $$; exec sleep 1000' &)"
    group.begin_spawn()
    try:
        proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)
    finally:
        group.end_spawn()
    assert proc.stdout is not None
    with proc.stdout:  # the daemon holds it open: read its line, not to EOF
        daemon = int(proc.stdout.readline())
        proc.wait()
        try:
            assert daemon in group.pids()
            assert os.getpid() not in group.pids()
        finally:
            group.kill()
            wait_until(group.is_empty)
    assert_gone([daemon])


def test_kill_refuses_while_the_agent_is_inside(manager: CgroupManager) -> None:
    """kill() between begin_spawn and end_spawn raises instead of killing the agent itself."""
    group = manager.create("self")
    group.begin_spawn()
    try:
        with pytest.raises(Conflict, match="agent itself"):
            group.kill()
    finally:
        group.end_spawn()
    assert group.is_empty()


def test_v2_freeze_kill_works_without_cgroup_kill(
    spawn_tree: Callable[[Cgroup], list[int]],
) -> None:
    """On v2 kernels older than 5.14 (no cgroup.kill), freeze + SIGKILL + thaw empties the group."""
    manager = detect_or_skip("v2")
    try:
        made = manager.create("legacy")
        group = Cgroup(kind="v2", path=made.path, kill_file=False)
        pids = spawn_tree(group)
        group.kill()
        wait_until(group.is_empty)
        assert_gone(pids)
        assert (group.path / "cgroup.freeze").read_text().strip() == "0"
        group.remove()
    finally:
        manager.destroy()


def test_remove_refuses_a_populated_group(
    manager: CgroupManager, spawn_tree: Callable[[Cgroup], list[int]]
) -> None:
    """remove() on a group with processes raises Conflict and leaves the group in place."""
    group = manager.create("busy")
    spawn_tree(group)
    with pytest.raises(Conflict, match="still has processes"):
        group.remove()
    assert group.path.is_dir()


def test_create_refuses_a_populated_leftover(
    manager: CgroupManager, spawn_tree: Callable[[Cgroup], list[int]]
) -> None:
    """create() of a name whose leftover group still has processes raises Conflict."""
    spawn_tree(manager.create("again"))
    with pytest.raises(Conflict, match="kill_stale"):
        manager.create("again")


def test_create_reuses_an_empty_leftover(manager: CgroupManager) -> None:
    """create() of a name whose leftover group is empty just reuses it."""
    first = manager.create("empty")
    second = manager.create("empty")
    assert first.path == second.path
    assert second.is_empty()


def test_kill_stale_sweeps_everything_not_kept(
    manager: CgroupManager, spawn_tree: Callable[[Cgroup], list[int]]
) -> None:
    """kill_stale() kills and removes groups not in `keep` and leaves the kept ones alone."""
    stale_pids = spawn_tree(manager.create("stale"))
    kept = manager.create("kept")
    kept_pids = spawn_tree(kept)
    assert manager.kill_stale({"kept"}) == ["stale"]
    assert_gone(stale_pids)
    assert not (manager.root / "stale").exists()
    assert kept.pids() == sorted(kept_pids)


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "x" * 256])
def test_bad_group_names_are_refused(manager: CgroupManager, name: str) -> None:
    """Names that could escape the root or hide from the sweep raise InvalidArgument."""
    with pytest.raises(InvalidArgument):
        manager.create(name)


# --- limits -------------------------------------------------------------------------------


def limited(manager: CgroupManager, controller: str, name: str, limits: Limits) -> Cgroup:
    if controller not in manager.supported_limits:
        pytest.skip(f"no v1 {controller} hierarchy on this machine")
    return manager.create(name, limits)


def test_pids_limit_stops_forks(manager: CgroupManager) -> None:
    """With Limits(pids=8), a process in the group cannot have more than 8 alive at once."""
    group = limited(manager, "pids", "pids", Limits(pids=8))
    forker = (
        "import os, sys\n"
        "sys.stdin.readline()\n"
        "n = 0\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except BlockingIOError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        os.read(0, 1)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        "print(n, flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", forker], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    group.add(proc.pid)
    out, _ = proc.communicate("go\n")  # closing stdin lets the children exit
    assert int(out) == 7  # 8 processes: the forker and 7 children
    wait_until(group.is_empty)


def test_memory_limit_ends_in_an_oom_kill(manager: CgroupManager) -> None:
    """With Limits(memory_bytes=64 MiB), allocating 400 MiB gets the process SIGKILLed."""
    group = limited(manager, "memory", "mem", Limits(memory_bytes=64 << 20))
    hog = "import sys; sys.stdin.readline(); b = bytearray(400 << 20); print('survived')"
    proc = subprocess.Popen(
        [sys.executable, "-c", hog], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    group.add(proc.pid)
    out, _ = proc.communicate("go\n")
    assert proc.returncode == -9
    assert "survived" not in out


def test_cpu_limit_sets_the_cfs_quota(manager: CgroupManager) -> None:
    """Limits(cpus=0.25) becomes a 25 ms quota per 100 ms period."""
    group = limited(manager, "cpu", "cpu", Limits(cpus=0.25))
    cpu_dir = next(d for d in group.dirs if (d / "cpu.cfs_quota_us").exists())
    assert (cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "25000"
    assert (cpu_dir / "cpu.cfs_period_us").read_text().strip() == "100000"


def test_limits_without_a_controller_are_refused(tmp_path: Path) -> None:
    """A limit the node cannot enforce raises InvalidArgument instead of being dropped."""
    manager = CgroupManager(kind="v2", root=tmp_path, limit_roots={}, kill_file=True)
    with pytest.raises(InvalidArgument, match="cannot enforce memory"):
        manager.create("x", Limits(memory_bytes=1 << 30))


@pytest.mark.parametrize(
    "limits", [{"memory_bytes": 0}, {"pids": -1}, {"cpus": 0.0}, {"cpus": float("nan")}]
)
def test_nonsense_limits_are_refused(limits: dict[str, float]) -> None:
    """Zero, negative and NaN limits raise InvalidArgument when the value is built."""
    with pytest.raises(InvalidArgument):
        Limits(**limits)  # type: ignore[arg-type]
