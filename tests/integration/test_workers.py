"""Stateful skills in worker processes: the pyeval skill with real workers, through the
supervisor: sessions, live output, failures, cancels, timeouts, crashes, protocol faults,
idle closing and shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv
import pytest
import pytest_asyncio

from cortex import __version__
from cortex._proto.cortex.v1 import common_pb2, worker_pb2
from cortex.core.states import State
from cortex.errors import Conflict, InvalidArgument, Unavailable
from cortex.node.agent import Agent
from cortex.node.supervisor import Supervisor
from cortex.sdk import Client
from cortex.skills import _framing
from cortex.skills.base import Outcome, TaskRun
from cortex.skills.worker import WorkerPool, WorkerSkill

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

STDOUT, STDERR = common_pb2.STDOUT, common_pb2.STDERR
GRACE_S = 30.0  # cooperative code stops at once; a loaded machine must not look deaf
DEAF_GRACE_S = 1.0  # for code that ignores the interrupt: it is killed after this


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

    async def until(self, needle: bytes, stream: int = STDOUT) -> None:
        async with asyncio.timeout(20):
            while needle not in self.data(stream):
                self._changed.clear()
                await self._changed.wait()


@pytest_asyncio.fixture
async def pool(request: pytest.FixtureRequest) -> AsyncIterator[WorkerPool]:
    """A pool closed after the test, with a cancel grace of GRACE_S (or the test's
    `deaf` parametrisation: DEAF_GRACE_S)."""
    workers = WorkerPool(cancel_grace_s=getattr(request, "param", GRACE_S))
    yield workers
    await workers.aclose()


@pytest.fixture
def sup(pool: WorkerPool) -> Supervisor:
    return Supervisor({"pyeval": WorkerSkill("pyeval", pool)})


def pyeval(code: str, session: str = "s1") -> common_pb2.TaskSpec:
    spec = common_pb2.TaskSpec(skill="pyeval", session_id=session)
    spec.args.update({"code": code})
    return spec


async def start(sup: Supervisor, code: str, *, session: str = "s1",
                timeout_s: float | None = None) -> tuple[TaskRun, Output]:
    out = Output()
    run = await sup.start(f"t-{uuid.uuid4().hex[:8]}", 1, pyeval(code, session), timeout_s, out)
    return run, out


async def call(sup: Supervisor, code: str, *, session: str = "s1",
               timeout_s: float | None = None) -> tuple[Outcome, Output]:
    run, out = await start(sup, code, session=session, timeout_s=timeout_s)
    return await run.wait(), out


async def worker_pid(sup: Supervisor, session: str = "s1") -> int:
    outcome, out = await call(sup, "import os\nos.getpid()", session=session)
    assert outcome.state is State.SUCCEEDED, outcome
    return int(out.data())


async def exited(pid: int) -> None:
    """Return once `pid` has exited (a pidfd turns readable), within 20 s."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(fd, readable)
    try:
        async with asyncio.timeout(20):
            await gone
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def reset_note(out: Output) -> str:
    return out.data(STDERR).decode().splitlines()[0]


# --- sessions and output ---------------------------------------------------------------


async def test_state_persists_within_a_session_and_not_across_sessions(sup: Supervisor) -> None:
    """A name set by one call is there for the next call of its session, not another's."""
    first, _ = await call(sup, "x = 41")
    second, out = await call(sup, "x + 1")
    other, other_out = await call(sup, "x", session="s2")
    assert first == Outcome(State.SUCCEEDED, None, "")
    assert second == Outcome(State.SUCCEEDED, None, "")
    assert out.data() == b"42\n"
    assert other.state is State.FAILED
    assert other.reason == "NameError: name 'x' is not defined"
    assert b"NameError" in other_out.data(STDERR)


async def test_output_streams_live_and_in_order(sup: Supervisor, tmp_path: Path) -> None:
    """stdout and stderr arrive interleaved as written, while the code still runs."""
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    code = (f"import sys\nprint('out1')\nprint('err1', file=sys.stderr)\nprint('out2')\n"
            f"open({str(fifo)!r}).read()\nprint('after')")
    run, out = await start(sup, code)
    await out.until(b"out2")
    assert out.chunks == [(STDOUT, b"out1\n"), (STDERR, b"err1\n"), (STDOUT, b"out2\n")]
    await asyncio.to_thread(fifo.write_text, "go")  # the code is blocked reading the fifo
    assert await run.wait() == Outcome(State.SUCCEEDED, None, "")
    assert out.data() == b"out1\nout2\nafter\n"


async def test_large_output_arrives_whole_in_bounded_frames(sup: Supervisor) -> None:
    """A 1 MiB print arrives complete in chunks of at most 64 KiB; a huge repr is cut."""
    outcome, out = await call(sup, "print('x' * (1 << 20))\n'y' * 100_000")
    assert outcome.state is State.SUCCEEDED
    printed, _, result = out.data().partition(b"\n")
    assert printed == b"x" * (1 << 20)
    assert max(len(d) for _, d in out.chunks) <= 64 << 10
    assert result.startswith(b"'" + b"y" * 1000)
    cut = 100_002 - (64 << 10)  # the repr's quotes count
    assert result.endswith(f"... [{cut} more characters cut]\n".encode())


async def test_an_exception_fails_the_call_and_keeps_the_session(sup: Supervisor) -> None:
    """An exception ends the call FAILED with its traceback; the session's names survive."""
    await call(sup, "x = 7")
    failed, out = await call(sup, "y = 1\n1 / 0")
    after, after_out = await call(sup, "x, y")
    assert failed == Outcome(State.FAILED, None, "ZeroDivisionError: division by zero")
    traceback = out.data(STDERR).decode()
    assert traceback.startswith("Traceback (most recent call last):\n")
    assert "1 / 0" in traceback  # the cell's source line, as in a REPL
    assert after.state is State.SUCCEEDED
    assert after_out.data() == b"(7, 1)\n"


async def test_a_syntax_error_fails_the_call(sup: Supervisor) -> None:
    """Code that does not compile fails with the SyntaxError as reason and nothing run."""
    outcome, out = await call(sup, "x = 1\ndef f(:")
    check, _ = await call(sup, "x")
    assert outcome.state is State.FAILED
    assert outcome.reason.startswith("SyntaxError: ")
    assert b"def f(:" in out.data(STDERR)
    assert check.state is State.FAILED  # the first line did not run either


async def test_the_worker_imports_nothing_heavy(sup: Supervisor) -> None:
    """A worker loads no grpc, asyncio, node, hub or SDK code: fast start, clean namespace."""
    code = ("import sys\nsorted(m for m in sys.modules if m.split('.')[0] in "
            "('grpc', 'asyncio') or m.startswith(('cortex.node', 'cortex.hub', 'cortex.sdk')))")
    outcome, out = await call(sup, code)
    assert outcome.state is State.SUCCEEDED
    assert out.data() == b"[]\n"


# --- cancel, timeout, queueing ---------------------------------------------------------


async def test_cancel_interrupts_a_busy_loop_and_the_session_survives(sup: Supervisor) -> None:
    """cancel() raises KeyboardInterrupt in a `while True: pass`; the session's names stay."""
    pid = await worker_pid(sup)
    await call(sup, "x = 5")
    run, out = await start(sup, "print('spinning', flush=True)\nwhile True: pass")
    await out.until(b"spinning")
    run.cancel(State.CANCELLED, "stop it")
    assert await run.wait() == Outcome(State.CANCELLED, None, "stop it")
    assert b"KeyboardInterrupt" in out.data(STDERR)
    assert await worker_pid(sup) == pid
    _, after = await call(sup, "x")
    assert after.data() == b"5\n"


async def test_cancel_interrupts_a_blocking_sleep(sup: Supervisor) -> None:
    """The interrupt reaches the main thread even inside a blocking system call."""
    run, out = await start(sup, "import time\nprint('sleeping', flush=True)\ntime.sleep(300)")
    await out.until(b"sleeping")
    run.cancel()
    assert (await run.wait()).state is State.CANCELLED


async def test_a_timeout_interrupts_the_call_as_timed_out(sup: Supervisor) -> None:
    """timeout_s interrupts the call (TIMED_OUT) and keeps the session."""
    await call(sup, "x = 3")
    outcome, _ = await call(sup, "while True: pass", timeout_s=0.5)
    after, out = await call(sup, "x")
    assert outcome == Outcome(State.TIMED_OUT, None, "timed out after 0.5 s")
    assert out.data() == b"3\n"
    assert after.state is State.SUCCEEDED


@pytest.mark.parametrize("pool", [DEAF_GRACE_S], indirect=True, ids=["deaf"])
async def test_a_worker_ignoring_the_interrupt_is_killed_after_the_grace(sup: Supervisor
                                                                          ) -> None:
    """Code that ignores SIGINT is killed after the grace; the session is reset, and says so."""
    pid = await worker_pid(sup)
    run, out = await start(sup, "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                "print('deaf', flush=True)\nwhile True: pass")
    await out.until(b"deaf")
    run.cancel()
    outcome = await run.wait()
    assert outcome.state is State.CANCELLED
    assert outcome.reason == (
        f"cancelled; the pyeval worker for session s1 did not stop within {DEAF_GRACE_S:g} s of "
        "the cancel and was killed; the session's state is gone")
    await exited(pid)
    _, next_out = await call(sup, "1")
    assert reset_note(next_out) == (
        f"[pyeval session s1 was reset: its worker did not stop within {DEAF_GRACE_S:g} s of the "
        "cancel and was killed; earlier state is gone]")


async def test_calls_of_one_session_run_one_at_a_time_in_order(sup: Supervisor,
                                                               tmp_path: Path) -> None:
    """A second call waits for the first; a call cancelled while it waits never runs."""
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    first, first_out = await start(sup, f"print('first', flush=True)\nopen({str(fifo)!r}).read()")
    await first_out.until(b"first")
    skipped, _ = await start(sup, "skipped = True")
    second, second_out = await start(sup, "print('second')")
    skipped.cancel()
    assert await skipped.wait() == Outcome(State.CANCELLED, None, "cancelled")
    assert second_out.chunks == []  # still waiting for its turn
    await asyncio.to_thread(fifo.write_text, "go")
    assert (await first.wait()).state is State.SUCCEEDED
    assert (await second.wait()).state is State.SUCCEEDED
    assert second_out.data() == b"second\n"
    check, _ = await call(sup, "skipped")
    assert check.reason == "NameError: name 'skipped' is not defined"


# --- crashes and faults ----------------------------------------------------------------


async def test_kill_9_mid_call_fails_it_and_the_next_call_starts_fresh(sup: Supervisor) -> None:
    """A worker killed mid-call fails that call; the next call gets a new worker, told so."""
    await call(sup, "x = 1")
    pid = await worker_pid(sup)
    run, out = await start(sup, "print('spinning', flush=True)\nwhile True: pass")
    await out.until(b"spinning")
    os.kill(pid, signal.SIGKILL)
    outcome = await run.wait()
    assert outcome == Outcome(State.FAILED, None, (
        "the pyeval worker for session s1 crashed (killed by SIGKILL); "
        "the session's state is gone"))
    after, after_out = await call(sup, "import os\nos.getpid()")
    assert after.state is State.SUCCEEDED
    assert reset_note(after_out) == ("[pyeval session s1 was reset: its worker crashed "
                                     "(killed by SIGKILL); earlier state is gone]")
    assert int(after_out.data()) != pid
    check, _ = await call(sup, "x")
    assert check.reason == "NameError: name 'x' is not defined"


async def test_a_worker_exiting_by_itself_is_a_crash_with_its_exit_code(sup: Supervisor
                                                                         ) -> None:
    """os._exit(3) in the code ends the session; the call says so, with the exit code."""
    outcome, _ = await call(sup, "import os\nos._exit(3)")
    assert outcome.reason == ("the pyeval worker for session s1 crashed (exit code 3); "
                              "the session's state is gone")


FAKE_WORKER = """#!{python}
import os, sys
from cortex._proto.cortex.v1 import worker_pb2
from cortex.skills._framing import PROTOCOL, encode_frame
hello = worker_pb2.WorkerHello(skill=sys.argv[-1], pid=os.getpid(), version={version!r},
                               protocol=PROTOCOL)
os.write(1, encode_frame(worker_pb2.WorkerReply(hello=hello)))
sys.stdin.buffer.read(4)  # the node's first call has begun
os.write(1, {payload!r})
sys.stdin.buffer.read()
"""

@pytest.mark.slow
async def test_a_worker_whose_node_is_gone_exits_even_if_its_code_does_not_stop() -> None:
    """End of input (the node died) ends a worker within its grace, deaf code or not."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cortex.workers", "pyeval", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, start_new_session=True)
    assert proc.stdin is not None
    assert proc.stdout is not None
    hello = await _framing.read_frame(proc.stdout, worker_pb2.WorkerReply)
    assert hello is not None
    assert hello.hello.skill == "pyeval"
    request = worker_pb2.WorkerRequest(call_id=1)
    request.args.update({"code": "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)"
                                 "\nprint('deaf', flush=True)\nwhile True: pass"})
    await _framing.write_frame(proc.stdin, request)
    output = await _framing.read_frame(proc.stdout, worker_pb2.WorkerReply)
    assert output is not None
    assert output.output.data == b"deaf\n"
    proc.stdin.close()
    async with asyncio.timeout(20):
        assert await proc.stdout.read() == b""
        assert await proc.wait() == 1  # forced, after the worker's own grace


NOT_RUNNING = _framing.encode_frame(worker_pb2.WorkerReply(
    call_id=999, result=worker_pb2.WorkerResult(state=common_pb2.SUCCEEDED)))


@pytest.mark.parametrize(("payload", "breach"), [
    (b"\xff\xff\xff\xff", "the peer announced a frame of 4294967295 bytes, over the 16 MiB "
                          "bound (a corrupt stream or something other than the worker "
                          "protocol)"),
    (b"\x00\x00\x00\x03\xff\xff\xff", "a 3-byte frame is not a valid WorkerReply"),
    (NOT_RUNNING, "sent a result for call 999, which is not running"),
], ids=["oversized", "garbage", "unknown-call"])
async def test_a_worker_breaking_the_protocol_fails_the_call(tmp_path: Path, payload: bytes,
                                                             breach: str) -> None:
    """A bad frame from a worker kills it and fails the call in flight, naming the fault."""
    script = tmp_path / "fake-worker"
    script.write_text(FAKE_WORKER.format(python=sys.executable, version=__version__,
                                         payload=payload))
    script.chmod(0o755)
    workers = WorkerPool(python=str(script))
    sup = Supervisor({"pyeval": WorkerSkill("pyeval", workers)})
    try:
        outcome, _ = await call(sup, "1")
    finally:
        await workers.aclose()
    assert outcome == Outcome(State.FAILED, None, (
        f"the pyeval worker for session s1 broke the protocol ({breach}) and was killed; "
        "the session's state is gone"))
    assert workers.statistics().crashed == 1


async def test_the_frame_reader_rejects_what_is_not_a_frame() -> None:
    """Oversized, cut-short and unparseable frames raise FrameError; a clean end is None."""

    async def read(data: bytes) -> worker_pb2.WorkerReply | None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await _framing.read_frame(reader, worker_pb2.WorkerReply)

    reply = worker_pb2.WorkerReply(call_id=7)
    assert await read(_framing.encode_frame(reply)) == reply
    assert await read(b"") is None
    with pytest.raises(_framing.FrameError, match="over the 16 MiB bound"):
        await read((16 << 20 | 1).to_bytes(4, "big"))
    with pytest.raises(_framing.FrameError, match=r"ended inside a frame \(2 of 4 bytes\)"):
        await read(b"\x00\x00")
    with pytest.raises(_framing.FrameError, match=r"ended inside a frame \(1 of 9 bytes\)"):
        await read(b"\x00\x00\x00\x09x")
    with pytest.raises(_framing.FrameError, match="not a valid WorkerReply"):
        await read(b"\x00\x00\x00\x02\xff\xff")
    big = worker_pb2.WorkerRequest()
    big.args.update({"code": "x" * (16 << 20)})
    with pytest.raises(InvalidArgument, match="over the 16 MiB frame bound"):
        _framing.encode_frame(big)


async def test_a_worker_that_cannot_start_fails_the_call_with_its_error(pool: WorkerPool
                                                                         ) -> None:
    """A worker that exits before its hello fails the call with its exit code and error."""
    sup = Supervisor({"nosuch": WorkerSkill("nosuch", pool)})
    spec = pyeval("1")
    spec.skill = "nosuch"
    run = await sup.start("t-nosuch", 1, spec, None, Output())
    outcome = await run.wait()
    assert outcome.state is State.FAILED
    assert outcome.reason == (
        "the nosuch worker for session s1 did not start (exit code 2): usage: python -m "
        "cortex.workers SKILL; SKILL is one of: browser, pyeval (got ['nosuch'])")


async def test_a_missing_session_id_or_args_is_invalid(sup: Supervisor) -> None:
    """pyeval refuses a task without a session id or without args, before any process runs."""
    no_session = pyeval("1", session="")
    with pytest.raises(InvalidArgument, match=r"needs a session id \(cortex run --session"):
        await sup.start("t-1", 1, no_session, None, Output())
    with pytest.raises(InvalidArgument, match="needs args"):
        await sup.start("t-2", 1, common_pb2.TaskSpec(skill="pyeval", session_id="s1"), None,
                        Output())
    run, _ = await start(sup, "1")
    with pytest.raises(Conflict, match="take no stdin"):
        run.write_stdin(b"x")
    await run.wait()
    bad = common_pb2.TaskSpec(skill="pyeval", session_id="s1")
    bad.args.update({"source": "1"})
    no_code = await (await sup.start("t-3", 1, bad, None, Output())).wait()  # the worker's check
    assert no_code == Outcome(State.FAILED, None,
                              'the pyeval skill needs args {"code": "<python source>"}')


# --- idle, capacity, shutdown ----------------------------------------------------------


async def test_an_idle_worker_is_closed_and_its_session_reset() -> None:
    """A worker idle past idle_timeout_s exits; the session's next call says it was reset."""
    workers = WorkerPool(idle_timeout_s=0.3)
    sup = Supervisor({"pyeval": WorkerSkill("pyeval", workers)})
    try:
        pid = await worker_pid(sup)
        await exited(pid)
        assert workers.statistics().workers == 0
        _, out = await call(sup, "1")
    finally:
        await workers.aclose()
    assert reset_note(out) == ("[pyeval session s1 was reset: its worker was idle for 0.3 s "
                               "and was closed; earlier state is gone]")


async def test_a_full_pool_closes_the_least_recently_used_idle_worker() -> None:
    """At max_workers, a new session takes the slot of the longest idle one; busy ones stay."""
    workers = WorkerPool(max_workers=2)
    sup = Supervisor({"pyeval": WorkerSkill("pyeval", workers)})
    try:
        await call(sup, "a = 1", session="a")
        await call(sup, "b = 1", session="b")
        await call(sup, "c = 1", session="c")
        assert workers.statistics().workers == 2
        _, again = await call(sup, "a", session="a")  # a came back: b is now the oldest
        kept, _ = await call(sup, "c", session="c")
        busy, busy_out = await start(sup, "print('busy', flush=True)\nwhile True: pass",
                                     session="c")
        await busy_out.until(b"busy")
        full, _ = await call(sup, "1", session="d")  # a idle, c busy: a goes
        busy.cancel()
        await busy.wait()
    finally:
        await workers.aclose()
    assert reset_note(again) == ("[pyeval session a was reset: its worker was closed to make "
                                 "room for another session (max_workers=2); earlier state "
                                 "is gone]")
    assert kept.state is State.SUCCEEDED
    assert full.state is State.SUCCEEDED


async def test_a_pool_whose_workers_are_all_busy_refuses_a_new_session() -> None:
    """With every slot running a call, a new session fails at once, saying why."""
    workers = WorkerPool(max_workers=1)
    sup = Supervisor({"pyeval": WorkerSkill("pyeval", workers)})
    try:
        busy, out = await start(sup, "print('busy', flush=True)\nwhile True: pass")
        await out.until(b"busy")
        refused, _ = await call(sup, "1", session="s2")
        busy.cancel()
        await busy.wait()
    finally:
        await workers.aclose()
    assert refused.state is State.FAILED
    assert refused.reason.startswith("all 1 worker slots of this node are busy")


# A child the session spawned holds the worker's pipes open: the grace ends the wait.
@pytest.mark.parametrize("pool", [DEAF_GRACE_S], indirect=True, ids=["deaf"])
async def test_aclose_leaves_no_processes(sup: Supervisor, pool: WorkerPool) -> None:
    """aclose() ends every worker, a busy one and what sessions spawned; then refuses work."""
    pids = [await worker_pid(sup, f"s{i}") for i in range(3)]
    _, out = await call(sup, "import subprocess\np = subprocess.Popen(['sleep', '300'])\np.pid")
    child = int(out.data())
    busy, busy_out = await start(sup, "print('busy', flush=True)\nwhile True: pass",
                                 session="s1")
    await busy_out.until(b"busy")
    await pool.aclose()
    outcome = await busy.wait()
    assert outcome.state is State.CANCELLED
    assert all(not psutil.pid_exists(pid) for pid in pids)
    await exited(child)  # killed with its session's process group (init reaps it)
    assert pool.statistics().workers == 0
    with pytest.raises(Unavailable, match="the worker pool is closed"):
        await start(sup, "1")


@pytest.mark.parametrize("pool", [DEAF_GRACE_S], indirect=True, ids=["deaf"])
async def test_aclose_kills_a_worker_that_does_not_exit(sup: Supervisor, pool: WorkerPool
                                                        ) -> None:
    """A worker deaf to the end of its input is killed once the grace period is over."""
    pid = await worker_pid(sup)
    run, out = await start(sup, "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                "print('deaf', flush=True)\nwhile True: pass")
    await out.until(b"deaf")
    await pool.aclose()
    outcome = await run.wait()
    assert not psutil.pid_exists(pid)
    assert outcome == Outcome(State.FAILED, None, (
        "the pyeval worker for session s1 was closed: the node is shutting down; "
        "the session's state is gone"))


# --- end to end ------------------------------------------------------------------------


async def test_pyeval_through_hub_and_node(client: Client, node: Agent) -> None:
    """Through a real hub and node, a pyeval session keeps a name from one task to the next."""
    (entry,) = await client.list_nodes()
    assert "pyeval" in entry.skills, (
        "the node does not offer pyeval: register WorkerSkill('pyeval', pool) in "
        "cortex.node.main.build_agent")
    first = await client.run(skill="pyeval", session_id="s1", args={"code": "x = 41"},
                             timeout=60)
    second = await client.run(skill="pyeval", session_id="s1", args={"code": "x + 1"},
                              timeout=60)
    assert first.ok, first.task.reason
    assert second.ok, second.task.reason
    assert second.stdout == b"42\n"
