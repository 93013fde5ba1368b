"""The supervisor and the shell skill with real processes: output, stdin, PTY, exit codes,
spawn failures, timeouts, and cancels that must leave no process of the tree behind."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv
import pytest
import pytest_asyncio

from cortex._proto.cortex.v1 import common_pb2
from cortex.core.states import State
from cortex.errors import Conflict, InvalidArgument
from cortex.node.cgroups import CgroupManager, Kind
from cortex.node.supervisor import Supervisor
from cortex.skills.base import MAX_PENDING_STDIN, TaskRun
from cortex.skills.noop import NoopSkill
from cortex.skills.shell import ShellSkill

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

PY = sys.executable
STDOUT, STDERR, PTY = common_pb2.STDOUT, common_pb2.STDERR, common_pb2.PTY


class Output:
    """A sink that records chunks and lets a test wait for text to show up."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, bytes]] = []
        self._changed = asyncio.Event()

    def __call__(self, stream: int, data: bytes) -> None:
        self.chunks.append((stream, data))
        self._changed.set()

    def data(self, stream: int = STDOUT) -> bytes:
        return b"".join(d for s, d in self.chunks if s == stream)

    async def until(self, needle: bytes, stream: int = STDOUT) -> bytes:
        async with asyncio.timeout(20):
            while needle not in self.data(stream):
                self._changed.clear()
                await self._changed.wait()
        return self.data(stream)


def spec(
    *argv: str,
    command: str = "",
    skill: str = "",
    **shell: Any,
) -> common_pb2.TaskSpec:
    return common_pb2.TaskSpec(
        skill=skill, shell=common_pb2.ShellSpec(argv=argv, command=command, **shell)
    )


def assert_gone(pids: list[int]) -> None:
    """Every pid is gone, or a zombie of init (dead; init reaps orphans periodically here)."""
    me = os.getpid()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            status, ppid = proc.status(), proc.ppid()
        except psutil.NoSuchProcess:
            continue
        assert status == psutil.STATUS_ZOMBIE, f"pid {pid} is still {status}"
        assert ppid != me, f"pid {pid} is a zombie of ours: we never reaped it"
    zombies = [c.pid for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []


def detect(kind: Kind | None = None) -> CgroupManager | None:
    kinds: tuple[Kind, ...] = ("v2", "v1") if kind is None else (kind,)
    return CgroupManager.detect(f"cortex-test-{uuid.uuid4().hex[:8]}", kinds=kinds)


def close(manager: CgroupManager | None) -> None:
    """Remove the test's cgroup root, after checking every run removed its own group."""
    if manager is None:
        return
    leftovers = [p.name for p in manager.root.iterdir() if p.is_dir()]
    manager.destroy()
    assert leftovers == [], "runs must remove their cgroups when they end"


@pytest.fixture(scope="module")
def cgroups() -> Iterator[CgroupManager | None]:
    """The backend the node would pick here (None without root or cgroupfs)."""
    manager = detect()
    yield manager
    close(manager)


@pytest.fixture
def supervisor(cgroups: CgroupManager | None) -> Supervisor:
    shell = ShellSkill(cgroups=cgroups, kill_grace_s=0.5)
    return Supervisor({"shell": shell, "noop": NoopSkill()})


@pytest_asyncio.fixture(params=["v2", "v1", None], ids=["cgroup-v2", "cgroup-v1", "proc-walk"])
async def isolation(request: pytest.FixtureRequest) -> AsyncIterator[Supervisor]:
    """A supervisor killing trees through a v2 or v1 cgroup, or with only the /proc walk."""
    manager = None
    if request.param is not None:
        manager = detect(request.param)
        if manager is None:
            pytest.skip(f"no usable cgroup {request.param} here (needs root and cgroupfs)")
    sup = Supervisor({"shell": ShellSkill(cgroups=manager, kill_grace_s=0.5)})
    yield sup
    sup.cancel_all("test over")
    await sup.wait_all()
    close(manager)


@pytest_asyncio.fixture(params=["v2", "v1"], ids=["cgroup-v2", "cgroup-v1"])
async def contained(request: pytest.FixtureRequest) -> AsyncIterator[Supervisor]:
    """A supervisor with a cgroup backend of each kind."""
    manager = detect(request.param)
    if manager is None:
        pytest.skip(f"no usable cgroup {request.param} here (needs root and cgroupfs)")
    sup = Supervisor({"shell": ShellSkill(cgroups=manager, kill_grace_s=0.5)})
    yield sup
    sup.cancel_all("test over")
    await sup.wait_all()
    close(manager)


async def run_to_end(
    sup: Supervisor, task: common_pb2.TaskSpec, timeout_s: float | None = None
) -> tuple[TaskRun, Output]:
    """Start `task` under a fresh id with a recording sink (the name: most tests then wait)."""
    out = Output()
    run = await sup.start(f"t-{uuid.uuid4().hex[:8]}", 1, task, timeout_s, out)
    return run, out


# --- output ------------------------------------------------------------------------------


async def test_output_arrives_live_in_order_without_waiting_for_newlines(
    supervisor: Supervisor,
) -> None:
    """Lines 1..5 and an unterminated fragment reach the sink while the process still runs."""
    code = (
        "import sys\n"
        "for i in range(1, 6):\n"
        "    print(i, flush=True)\n"
        "sys.stdout.write('partial'); sys.stdout.flush()\n"
        "sys.stdin.readline()\n"
    )
    run, out = await run_to_end(supervisor, spec(PY, "-c", code, interactive=True))
    assert await out.until(b"partial") == b"1\n2\n3\n4\n5\npartial"
    run.close_stdin()  # only now may the process exit
    outcome = await run.wait()
    assert (outcome.state, outcome.exit_code, outcome.reason) == (State.SUCCEEDED, 0, "")


async def test_command_runs_through_sh(supervisor: Supervisor) -> None:
    """`command` is interpreted by /bin/sh -c (pipes, expansion)."""
    run, out = await run_to_end(supervisor, spec(command="echo $((1+2)) | tr 3 x"))
    assert (await run.wait()).state is State.SUCCEEDED
    assert out.data() == b"x\n"


@pytest.mark.parametrize(
    ("code", "state", "reason"),
    [
        (0, State.SUCCEEDED, ""),
        (2, State.FAILED, "exit code 2"),
        (255, State.FAILED, "exit code 255"),
    ],
)
async def test_exit_codes_pass_through(
    supervisor: Supervisor, code: int, state: State, reason: str
) -> None:
    """The exit code is reported as is; zero succeeds, anything else fails with it as reason."""
    run, _ = await run_to_end(supervisor, spec(command=f"exit {code}"))
    outcome = await run.wait()
    assert (outcome.state, outcome.exit_code, outcome.reason) == (state, code, reason)


async def test_death_by_signal_is_a_negative_exit_code(supervisor: Supervisor) -> None:
    """A process killed by signal N fails with exit_code -N and says so."""
    run, _ = await run_to_end(supervisor, spec(command="kill -9 $$"))
    outcome = await run.wait()
    assert (outcome.state, outcome.exit_code, outcome.reason) == (
        State.FAILED,
        -9,
        "killed by signal 9",
    )


async def test_stderr_is_its_own_stream(supervisor: Supervisor) -> None:
    """stdout and stderr arrive separately, each with its own stream value."""
    run, out = await run_to_end(supervisor, spec(command="echo out; echo err >&2; echo out2"))
    await run.wait()
    assert (out.data(STDOUT), out.data(STDERR)) == (b"out\nout2\n", b"err\n")


async def test_fifty_megabytes_of_output_arrive_intact(supervisor: Supervisor) -> None:
    """50 MiB of binary output reach the sink complete, in order and in bounded chunks."""
    code = (
        "import hashlib, random, sys\n"
        "rng, digest = random.Random(7), hashlib.sha256()\n"
        "for _ in range(50):\n"
        "    block = rng.randbytes(1 << 20)\n"
        "    digest.update(block)\n"
        "    sys.stdout.buffer.write(block)\n"
        "sys.stdout.flush()\n"
        "sys.stderr.write(digest.hexdigest())\n"
    )
    digest, size, biggest = hashlib.sha256(), 0, 0

    def sink(stream: int, data: bytes) -> None:
        nonlocal size, biggest
        if stream == STDOUT:
            digest.update(data)
            size += len(data)
            biggest = max(biggest, len(data))
        else:
            errors.append(data)

    errors: list[bytes] = []
    run = await supervisor.start("big", 1, spec(PY, "-c", code), None, sink)
    assert (await run.wait()).state is State.SUCCEEDED
    assert size == 50 << 20
    assert digest.hexdigest() == b"".join(errors).decode()
    assert biggest <= 65536


# --- stdin -------------------------------------------------------------------------------


async def test_stdin_bytes_are_written_then_closed(supervisor: Supervisor) -> None:
    """spec.stdin goes to the process, then EOF, so `cat` echoes it and exits."""
    payload = bytes(range(256)) * 1000  # larger than a pipe buffer, with NULs
    run, out = await run_to_end(supervisor, spec("cat", stdin=payload))
    assert (await run.wait()).state is State.SUCCEEDED
    assert out.data() == payload


async def test_no_stdin_means_dev_null(supervisor: Supervisor) -> None:
    """Without stdin bytes and not interactive, the process reads /dev/null."""
    run, out = await run_to_end(supervisor, spec("readlink", "/proc/self/fd/0"))
    await run.wait()
    assert out.data() == b"/dev/null\n"


async def test_interactive_stdin_is_written_live_and_closed(supervisor: Supervisor) -> None:
    """write_stdin reaches a running process; close_stdin gives it EOF."""
    run, out = await run_to_end(supervisor, spec("cat", interactive=True))
    run.write_stdin(b"ping\n")
    await out.until(b"ping\n")
    run.write_stdin(b"pong\n")
    run.close_stdin()
    assert (await run.wait()).state is State.SUCCEEDED
    assert out.data() == b"ping\npong\n"
    with pytest.raises(Conflict):
        run.write_stdin(b"late")


async def test_stdin_backlog_is_bounded(supervisor: Supervisor) -> None:
    """A write that would put more than 1 MiB in the backlog raises InvalidArgument."""
    run, _ = await run_to_end(supervisor, spec("sleep", "1000", interactive=True))
    run.write_stdin(b"x" * MAX_PENDING_STDIN)  # the pipe takes 64 KiB, the rest waits
    with pytest.raises(InvalidArgument, match="backlog"):
        run.write_stdin(b"x" * (MAX_PENDING_STDIN // 2))
    run.cancel()
    assert (await run.wait()).state is State.CANCELLED


async def test_stdin_of_a_non_interactive_task_is_closed(supervisor: Supervisor) -> None:
    """write_stdin on a task started without interactive raises Conflict."""
    run, _ = await run_to_end(supervisor, spec("sleep", "1000"))
    with pytest.raises(Conflict, match="interactive"):
        run.write_stdin(b"x")
    run.cancel()
    await run.wait()


# --- PTY ---------------------------------------------------------------------------------


async def test_pty_is_a_terminal_and_follows_resize(supervisor: Supervisor) -> None:
    """Under pty the task has a /dev/pts tty of the asked size, and resize() changes it."""
    script = "tty; stty size; read line; stty size"
    run, out = await run_to_end(
        supervisor, spec(command=script, pty=True, interactive=True, rows=30, cols=100)
    )
    assert b"30 100\r\n" in await out.until(b"30 100", PTY)
    assert out.data(PTY).startswith(b"/dev/pts/")
    run.resize(40, 120)
    run.write_stdin(b"\n")
    await out.until(b"40 120", PTY)
    assert (await run.wait()).state is State.SUCCEEDED
    assert out.data(STDOUT) == out.data(STDERR) == b""


async def test_pty_without_interactive_gets_stdin_then_eof(supervisor: Supervisor) -> None:
    """A non-interactive pty task reads spec.stdin, then end of input, so `cat` ends."""
    run, out = await run_to_end(supervisor, spec("cat", pty=True, stdin=b"hello"))
    assert (await run.wait()).state is State.SUCCEEDED
    assert b"hello" in out.data(PTY)


async def test_pty_has_its_tty_as_controlling_terminal(supervisor: Supervisor) -> None:
    """The pty is the task's controlling terminal: /dev/tty opens and ^C sends SIGINT."""
    script = "echo ok > /dev/tty; exec sleep 1000"
    run, out = await run_to_end(supervisor, spec(command=script, pty=True, interactive=True))
    await out.until(b"ok\r\n", PTY)
    run.write_stdin(b"\x03")
    outcome = await run.wait()
    assert (outcome.state, outcome.exit_code) == (State.FAILED, -2)


FORK_HOOK = """
import asyncio, os
from cortex._proto.cortex.v1 import common_pb2
from cortex.skills.shell import ShellSkill
os.register_at_fork(after_in_child=lambda: os._exit(99))  # what gRPC's handlers amount to
async def main():
    spec = common_pb2.TaskSpec(shell=common_pb2.ShellSpec(argv=["true"], pty=True))
    run = await ShellSkill(cgroups=None).start(
        task_id="t", attempt=1, spec=spec, timeout_s=None, sink=lambda s, d: None)
    print((await run.wait()).exit_code)
asyncio.run(main())
"""


async def test_no_fork_handler_runs_in_a_spawned_child() -> None:
    """PTY tasks spawn without fork() (no preexec_fn), so at-fork handlers never hit them."""
    proc = await asyncio.create_subprocess_exec(PY, "-c", FORK_HOOK, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert out.strip() == b"0"


# --- environment -------------------------------------------------------------------------


async def test_env_overlays_the_nodes_and_cwd_is_used(
    supervisor: Supervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task sees the node's environment plus spec.env on top, in spec.cwd."""
    monkeypatch.setenv("CORTEX_TEST_NODE", "node")
    monkeypatch.setenv("CORTEX_TEST_BOTH", "node")
    task = spec(
        command="echo $CORTEX_TEST_NODE $CORTEX_TEST_BOTH $CORTEX_TEST_SPEC; pwd",
        env={"CORTEX_TEST_BOTH": "spec", "CORTEX_TEST_SPEC": "spec"},
        cwd=str(tmp_path),
    )
    run, out = await run_to_end(supervisor, task)
    await run.wait()
    assert out.data() == f"node spec spec\n{tmp_path}\n".encode()


async def test_argv_is_looked_up_in_the_task_path(supervisor: Supervisor, tmp_path: Path) -> None:
    """A bare argv[0] is found through the PATH the task will have (spec.env included)."""
    tool = tmp_path / "cortex-test-tool"
    tool.write_text("#!/bin/sh\necho found\n")
    tool.chmod(0o755)
    run, out = await run_to_end(
        supervisor, spec("cortex-test-tool", env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    )
    assert (await run.wait()).state is State.SUCCEEDED
    assert out.data() == b"found\n"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing-exe", "executable not found: cortex-no-such-program"),
        ("not-executable", "permission denied: {tmp}/plain.txt"),
        ("missing-cwd", "working directory not found: {tmp}/nowhere"),
        ("cwd-is-file", "working directory is not a directory: {tmp}/plain.txt"),
        ("pty-missing-exe", "executable not found: cortex-no-such-program"),
        ("pty-not-executable", "permission denied: {tmp}/plain.txt"),
        ("pty-missing-cwd", "working directory not found: {tmp}/nowhere"),
    ],
)
async def test_spawn_failures_fail_with_a_precise_reason(
    supervisor: Supervisor, tmp_path: Path, case: str, reason: str
) -> None:
    """A task that cannot start ends FAILED, without exit code, saying what was wrong."""
    plain = tmp_path / "plain.txt"
    plain.write_text("not a program")
    task = {
        "missing-exe": spec("cortex-no-such-program"),
        "not-executable": spec(str(plain)),
        "missing-cwd": spec("true", cwd=str(tmp_path / "nowhere")),
        "cwd-is-file": spec("true", cwd=str(plain)),
        "pty-missing-exe": spec("cortex-no-such-program", pty=True),
        "pty-not-executable": spec(str(plain), pty=True),
        "pty-missing-cwd": spec("true", cwd=str(tmp_path / "nowhere"), pty=True),
    }[case]
    run, _ = await run_to_end(supervisor, task)
    outcome = await run.wait()
    assert run.pid is None
    assert (outcome.state, outcome.exit_code) == (State.FAILED, None)
    assert outcome.reason == reason.format(tmp=tmp_path)


@pytest.mark.parametrize(
    "task",
    [
        spec("true", command="true"),
        spec(),
        spec("tr\0ue"),
        spec("true", env={"A=B": "x"}),
        spec("true", rows=70000),
    ],
    ids=["argv-and-command", "neither", "nul", "bad-env-name", "huge-tty"],
)
async def test_malformed_specs_raise_invalid_argument(
    supervisor: Supervisor, task: common_pb2.TaskSpec
) -> None:
    """A spec that cannot mean anything is refused by start() itself."""
    with pytest.raises(InvalidArgument):
        await supervisor.start("bad", 1, task, None, Output())
    assert supervisor.running() == []


# --- timeout and cancel ------------------------------------------------------------------


async def test_timeout_kills_and_reports_timed_out(supervisor: Supervisor) -> None:
    """When timeout_s elapses the tree is killed and the outcome is TIMED_OUT."""
    run, _ = await run_to_end(supervisor, spec("sleep", "1000"), timeout_s=0.2)
    pid = run.pid
    assert pid is not None
    outcome = await run.wait()
    assert (outcome.state, outcome.reason) == (State.TIMED_OUT, "timed out after 0.2 s")
    assert outcome.exit_code == -15
    assert_gone([pid])


TREE = "setsid sleep 1000 & echo $!; sleep 1000 & echo $!; echo ready; wait"


async def tree_pids(run: TaskRun, out: Output) -> list[int]:
    """The leader, its printed children, and every descendant psutil sees right now."""
    text = await out.until(b"ready")
    assert run.pid is not None
    pids = {run.pid, *(int(w) for w in text.split() if w.isdigit())}
    pids.update(c.pid for c in psutil.Process(run.pid).children(recursive=True))
    return sorted(pids)


async def test_cancel_kills_setsid_grandchildren(isolation: Supervisor) -> None:
    """cancel() ends the whole tree, grandchildren that called setsid included; no zombies."""
    run, out = await run_to_end(isolation, spec(command=TREE))
    pids = await tree_pids(run, out)
    assert len(pids) >= 3
    run.cancel(reason="asked by test")
    outcome = await run.wait()
    assert (outcome.state, outcome.reason) == (State.CANCELLED, "asked by test")
    assert_gone(pids)


async def test_cancel_escalates_to_sigkill_after_the_grace(isolation: Supervisor) -> None:
    """A tree that ignores SIGTERM is SIGKILLed once kill_grace_s has passed."""
    script = f"trap '' TERM; {TREE}"
    run, out = await run_to_end(isolation, spec(command=script))
    pids = await tree_pids(run, out)
    run.cancel()
    outcome = await run.wait()
    assert (outcome.state, outcome.exit_code, outcome.reason) == (State.CANCELLED, -9, "cancelled")
    assert_gone(pids)


async def test_natural_exit_kills_background_leftovers(isolation: Supervisor) -> None:
    """When the main process exits, background jobs it left in its group die with it."""
    run, out = await run_to_end(isolation, spec(command="sleep 1000 & echo $!"))
    outcome = await run.wait()
    assert outcome.state is State.SUCCEEDED
    assert_gone([int(out.data())])


async def test_pty_run_end_kills_jobs_in_other_process_groups(isolation: Supervisor) -> None:
    """A job-control shell's background job (own process group, same session) dies at exit."""
    run, out = await run_to_end(isolation, spec(command="set -m; sleep 1000 & echo $!", pty=True))
    outcome = await run.wait()
    assert outcome.state is State.SUCCEEDED
    job = int(out.data(PTY).split()[-1])
    assert_gone([job])


async def test_wait_returns_even_if_an_escaped_process_holds_the_output(tmp_path: Path) -> None:
    """Without a cgroup, a setsid'd leftover keeps stdout open: wait() still ends, and says so."""
    fifo = tmp_path / "ready"
    # The leader exits only once the daemon is in its own session (it writes to the fifo).
    daemon = f"setsid sh -c 'echo $$; echo > {fifo}; exec sleep 1000'"
    script = f"mkfifo {fifo}; {daemon} & read _ < {fifo}"
    sup = Supervisor({"shell": ShellSkill(cgroups=None)})
    run, out = await run_to_end(sup, spec(command=script))
    outcome = await run.wait()
    escaped = int(out.data())
    try:
        assert outcome.state is State.SUCCEEDED
        assert "output cut" in outcome.reason
    finally:
        os.kill(escaped, signal.SIGKILL)  # the documented limit of running without a cgroup


@pytest.mark.parametrize("repeat", range(5))
async def test_cgroup_catches_a_double_forked_daemon(contained: Supervisor, repeat: int) -> None:
    """A daemon that double-forks at once (parent: init) is born in the group and dies with it."""
    # Without a cgroup such a daemon is invisible to the /proc walk. Repeated: placing the pid
    # after spawn lost this race in 9 of 10 runs.
    script = "(setsid sh -c 'echo $$; exec sleep 1000' &); sleep 1000"
    run, out = await run_to_end(contained, spec(command=script))
    daemon = int(await out.until(b"\n"))
    assert psutil.Process(daemon).ppid() != run.pid
    run.cancel()
    assert (await run.wait()).state is State.CANCELLED
    assert_gone([daemon])


async def test_cancel_is_idempotent_and_ignored_after_exit(supervisor: Supervisor) -> None:
    """A second cancel changes nothing; a cancel after the process exited keeps its outcome."""
    run, _ = await run_to_end(supervisor, spec("true"))
    first = await run.wait()
    run.cancel()
    assert await run.wait() == first
    assert first.state is State.SUCCEEDED

    run, _ = await run_to_end(supervisor, spec("sleep", "1000"))
    run.cancel(State.TIMED_OUT, "deadline")
    run.cancel(State.CANCELLED, "second")
    assert (await run.wait()).reason == "deadline"


async def test_a_cancelled_waiter_does_not_stop_the_run(supervisor: Supervisor) -> None:
    """Cancelling a task awaiting wait() leaves the process running (wait is shielded)."""
    run, out = await run_to_end(supervisor, spec(command="echo up; sleep 1000"))
    await out.until(b"up")
    inside = asyncio.Event()

    async def waiting() -> None:
        inside.set()  # the next line suspends in wait() within the same step
        await run.wait()

    waiter = asyncio.ensure_future(waiting())
    await inside.wait()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert run.pid is not None
    assert psutil.Process(run.pid).status() != psutil.STATUS_ZOMBIE
    run.cancel()
    assert (await run.wait()).state is State.CANCELLED


async def test_a_failing_sink_fails_the_task(supervisor: Supervisor) -> None:
    """If the sink raises, the task is killed and FAILED with the sink's error as reason."""

    def sink(stream: int, data: bytes) -> None:
        raise OSError("journal disk full")

    run = await supervisor.start("sink", 1, spec(command="echo hi; sleep 1000"), None, sink)
    outcome = await run.wait()
    assert outcome.state is State.FAILED
    assert "journal disk full" in outcome.reason


# --- supervisor --------------------------------------------------------------------------


async def test_noop_skill_succeeds_without_a_process(supervisor: Supervisor) -> None:
    """The noop skill ends SUCCEEDED at once, with no pid and no exit code."""
    run, out = await run_to_end(supervisor, spec(skill="noop"))
    outcome = await run.wait()
    assert (run.pid, outcome.state, outcome.exit_code, out.chunks) == (
        None,
        State.SUCCEEDED,
        None,
        [],
    )


async def test_unknown_skill_is_invalid(supervisor: Supervisor) -> None:
    """start() with a skill this node does not have raises InvalidArgument naming the skills."""
    with pytest.raises(InvalidArgument, match="noop, shell"):
        await supervisor.start("x", 1, spec(skill="browser"), None, Output())


async def test_supervisor_tracks_runs_and_refuses_duplicates(supervisor: Supervisor) -> None:
    """A running attempt is listed and found, a second start of it is a Conflict, it leaves."""
    run = await supervisor.start("dup", 1, spec("sleep", "1000"), None, Output())
    assert supervisor.running() == [("dup", 1)]
    assert supervisor.get("dup", 1) is run
    assert supervisor.get("dup", 2) is None
    with pytest.raises(Conflict, match="already running"):
        await supervisor.start("dup", 1, spec("true"), None, Output())
    other = await supervisor.start("dup", 2, spec("true"), None, Output())
    await other.wait()
    run.cancel()
    await supervisor.wait_all()
    assert supervisor.running() == []


async def test_cancel_all_then_wait_all_ends_everything(supervisor: Supervisor) -> None:
    """Two-phase shutdown: cancel_all() then wait_all() leaves no run and no process."""
    runs = [
        await supervisor.start(f"many-{i}", 1, spec(command=TREE), None, out)
        for i, out in enumerate([Output(), Output(), Output()])
    ]
    pids = [pid for r in runs if r.pid for pid in (r.pid,)]
    supervisor.cancel_all("node stopping")
    await supervisor.wait_all()
    assert supervisor.running() == []
    for run in runs:
        outcome = await run.wait()
        assert (outcome.state, outcome.reason) == (State.CANCELLED, "node stopping")
    assert_gone(pids)
