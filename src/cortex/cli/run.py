"""``cortex run``: submit a task and stream it as if it ran here (or detach)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from cortex.cli._common import (
    EXIT_CODES_HELP,
    client_config,
    exit_code_for,
    note,
    print_json,
    run_async,
    state_name,
    to_dict,
    usage,
)
from cortex.errors import CortexError, InvalidArgument
from cortex.sdk import (
    Attachment,
    Client,
    ClientConfig,
    Task,
    TaskEvent,
    TaskSpec,
    TaskState,
    build_spec,
    parse_duration,
    parse_env,
    parse_labels,
)
from cortex.sdk import OutputStream as Stream

__all__ = ["register"]

_CANCEL_GRACE_S = 5.0
_STDIN_CHUNK = 64 * 1024
_STDIN_IN_FLIGHT = 4  # chunks read ahead of what the hub accepted: bounds local memory

HELP = """Run a command on a node and stream its output here.

[bold]cortex run -- make test[/bold] execs ARGV directly; [bold]-c 'ls | wc -l'[/bold] runs
a shell string. Ctrl-C cancels the task. Without [bold]-i[/bold], local stdin is not read.
"""


def register(app: typer.Typer) -> None:
    app.command(
        "run",
        help=HELP,
        epilog=EXIT_CODES_HELP,
        # Everything after the command's first word belongs to it: `cortex run ls -la`.
        context_settings={"allow_interspersed_args": False},
    )(run)


def run(
    ctx: typer.Context,
    argv: Annotated[list[str] | None, typer.Argument(
        metavar="ARGV", help="The program and its arguments, exec'd directly.",
        show_default=False)] = None,
    shell: Annotated[str | None, typer.Option(
        "--shell", "-c", metavar="STRING", help="Run STRING with /bin/sh -c instead of ARGV.",
        show_default=False)] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", "-l", metavar="K=V", help="Run on a node carrying this label (repeatable).",
        show_default=False)] = None,
    node: Annotated[str | None, typer.Option(
        "--node", metavar="ID", help="Run on this node only.", show_default=False)] = None,
    session: Annotated[str | None, typer.Option(
        "--session", metavar="ID", help="Route to the node holding this session.",
        show_default=False)] = None,
    pool: Annotated[str | None, typer.Option(
        "--pool", "-p", metavar="POOL", help="Run on a node of this pool.",
        show_default=False)] = None,
    cpus: Annotated[float, typer.Option(
        "--cpus", min=0, metavar="N", help="CPU cores the task needs (counted against the "
        "tenant's quota and the node's capacity; enforced on the node).")] = 0.0,
    memory: Annotated[int, typer.Option(
        "--memory", min=0, metavar="MIB", help="Memory (MiB) the task needs; enforced as "
        "its limit on the node.")] = 0,
    gpus: Annotated[int, typer.Option("--gpus", min=0, metavar="N", help="GPUs it needs.")
    ] = 0,
    cancel_on_disconnect: Annotated[bool, typer.Option(
        "--cancel-on-disconnect", help="Cancel the task if this client goes away (crash, "
        "network) and does not come back within the hub's grace.")] = False,
    env: Annotated[list[str] | None, typer.Option(
        "--env", "-e", metavar="K=V", help="Set an environment variable (repeatable).",
        show_default=False)] = None,
    cwd: Annotated[str | None, typer.Option(
        "--cwd", metavar="DIR", help="Working directory on the node.",
        show_default=False)] = None,
    timeout: Annotated[str | None, typer.Option(
        "--timeout", metavar="DURATION", help="Deadline from submission: 90, 90s, 15m, 1h, 2d.",
        show_default=False)] = None,
    retries: Annotated[int, typer.Option(
        "--retries", min=0, metavar="N",
        help="Run again up to N times after a failure or a lost node.")] = 0,
    priority: Annotated[int, typer.Option(
        "--priority", metavar="P", help="Higher runs first.")] = 0,
    idempotency_key: Annotated[str | None, typer.Option(
        "--idempotency-key", metavar="KEY", help="Submitting the same key again returns the "
        "same task.", show_default=False)] = None,
    detach: Annotated[bool, typer.Option(
        "--detach", "-d", help="Print the task id and return at once.")] = False,
    interactive: Annotated[bool, typer.Option(
        "--interactive", "-i", help="Forward local stdin to the task (EOF closes it).")] = False,
    tty: Annotated[bool, typer.Option(
        "--tty", "-t", help="Run under a pseudo-terminal sized like this one (implies -i).")
    ] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the task (and its output) as JSON instead of streaming.")
    ] = False,
    artifact: Annotated[list[str] | None, typer.Option(
        "--artifact", "-a", metavar="GLOB", help="Upload the files matching GLOB (relative "
        "to the task's cwd) as artifacts after the run (repeatable); see cortex artifacts.",
        show_default=False)] = None,
    input_: Annotated[list[str] | None, typer.Option(
        "--input", metavar="FILE[:PATH]", help="Upload FILE and place it at PATH (default: "
        "its name) in the task's cwd before it starts (repeatable).", show_default=False)
    ] = None,
) -> None:
    interactive = interactive or tty
    _check_combinations(argv, shell, detach=detach, interactive=interactive, as_json=as_json,
                        cancel_on_disconnect=cancel_on_disconnect)
    rows, cols = _terminal_size() if tty else (0, 0)
    inputs = run_async(_upload_inputs(client_config(ctx), _input_pairs(input_))) \
        if input_ else None
    try:
        spec = build_spec(
            argv=argv, command=shell, env=usage(parse_env, env, flag="'--env' / '-e'"),
            cwd=cwd, interactive=interactive, pty=tty, rows=rows, cols=cols,
            labels=usage(parse_labels, label, flag="'--label' / '-l'"), node_id=node,
            session_id=session, timeout=usage(_timeout, timeout, flag="'--timeout'"),
            priority=priority, idempotency_key=idempotency_key, max_attempts=retries + 1,
            retry_on_failure=retries > 0, pool=pool, cpus=cpus, memory_mib=memory, gpus=gpus,
            cancel_on_disconnect=cancel_on_disconnect, artifacts=artifact, inputs=inputs,
        )
    except InvalidArgument as e:
        raise typer.BadParameter(str(e)) from None
    config = client_config(ctx)
    if detach:
        task = run_async(_submit(config, spec))
        if as_json:
            print_json(to_dict(task))
        else:
            sys.stdout.write(task.id + "\n")
        return
    raise typer.Exit(run_async(_run_attached(config, spec, tty=tty, as_json=as_json)))


def _check_combinations(argv: list[str] | None, shell: str | None, *, detach: bool,
                        interactive: bool, as_json: bool, cancel_on_disconnect: bool) -> None:
    if detach and cancel_on_disconnect:
        raise typer.BadParameter("a detached task has no client following it, so "
                                 "--cancel-on-disconnect would cancel it at once; drop one",
                                 param_hint="'--cancel-on-disconnect'")
    if argv and shell is not None:
        raise typer.BadParameter("give ARGV after `--` or a shell string with -c, not both",
                                 param_hint="'--shell' / '-c'")
    if not argv and not shell:
        raise typer.BadParameter(
            "nothing to run: give a command after `--` (cortex run -- ls -l) or a shell "
            "string with -c (cortex run -c 'ls | wc -l')", param_hint="ARGV")
    if detach and interactive:
        raise typer.BadParameter("an interactive task needs this terminal; drop -d or -i/-t",
                                 param_hint="'--detach' / '-d'")
    if as_json and interactive:
        raise typer.BadParameter("--json prints one document at the end; it cannot be "
                                 "combined with -i/-t", param_hint="'--json'")


def _input_pairs(specs: list[str]) -> list[tuple[Path, str]]:
    pairs = []
    for item in specs:
        local, _, dest = item.partition(":")
        path = Path(local)
        if not path.is_file():
            raise typer.BadParameter(f"{local}: not a readable local file",
                                     param_hint="'--input'")
        pairs.append((path, dest or path.name))
    return pairs


async def _upload_inputs(config: ClientConfig, pairs: list[tuple[Path, str]]
                         ) -> dict[str, str]:
    """Upload each file; {path in the task's cwd: artifact id}."""
    async with Client(config) as client:
        return {dest: (await client.upload_artifact(path)).artifact_id
                for path, dest in pairs}


def _timeout(value: str | None) -> float | None:
    return None if value is None else parse_duration(value, what="timeout")


def _terminal_size() -> tuple[int, int]:
    size = shutil.get_terminal_size()
    return size.lines, size.columns


async def _submit(config: ClientConfig, spec: TaskSpec) -> Task:
    async with Client(config) as client:
        return await client.submit(spec)


async def _run_attached(config: ClientConfig, spec: TaskSpec, *, tty: bool,
                        as_json: bool) -> int:
    async with Client(config) as client:
        task = await client.submit(spec)
        output = _Output(collect=as_json)
        try:
            if spec.shell.interactive:
                await _interactive(client, task.id, output, tty=tty)
            else:
                await output.consume(client.watch(task.id))
            final = await client.get(task.id)
        except asyncio.CancelledError:
            note(f"cancelling task {task.id}…")
            with contextlib.suppress(CortexError, TimeoutError):
                await asyncio.wait_for(client.cancel(task.id, reason="Ctrl-C in cortex run"),
                                       _CANCEL_GRACE_S)
            raise
    if as_json:
        print_json({"task": to_dict(final), "stdout": output.text(Stream.STDOUT),
                    "stderr": output.text(Stream.STDERR), "exit_status": exit_code_for(final)})
        return exit_code_for(final)
    for f in final.files:
        note(f"artifact {f.name} ({f.size} bytes): cortex artifacts get {final.id} {f.name}")
    if final.state != TaskState.SUCCEEDED and not (
            final.state == TaskState.FAILED and final.has_exit_code):
        note(f"task {final.id} {state_name(final.state)}"
             + (f": {final.reason}" if final.reason else ""))
    return exit_code_for(final)


class _Output:
    """Writes a task's output to local stdout/stderr as raw bytes (or keeps it for --json)."""

    def __init__(self, *, collect: bool) -> None:
        self._collect = collect
        self._kept: dict[int, bytearray] = {Stream.STDOUT: bytearray(), Stream.STDERR: bytearray()}
        self._attempt = 0

    async def consume(self, events: AsyncIterator[TaskEvent]) -> None:
        async for event in events:
            self.handle(event)

    def handle(self, event: TaskEvent) -> None:
        if event.HasField("state"):
            self._on_state(event)
        elif event.HasField("output"):
            stream = Stream.STDOUT if event.output.stream in (Stream.STDOUT, Stream.PTY) \
                else Stream.STDERR
            if self._collect:
                self._kept[stream].extend(event.output.data)
            else:
                out = sys.stdout if stream == Stream.STDOUT else sys.stderr
                out.buffer.write(event.output.data)
                out.buffer.flush()

    def _on_state(self, event: TaskEvent) -> None:
        if event.attempt > self._attempt:
            if self._attempt and not self._collect:
                reason = f": {event.state.reason}" if event.state.reason else ""
                note(f"retrying, attempt {event.attempt}{reason}")
            self._attempt = event.attempt
            for kept in self._kept.values():
                kept.clear()  # --json reports the last attempt, as Client.run does

    def text(self, stream: int) -> str:
        return self._kept[stream].decode("utf-8", errors="replace")


# --- interactive ---------------------------------------------------------------------------

async def _interactive(client: Client, task_id: str, output: _Output, *, tty: bool) -> None:
    fd = sys.stdin.fileno()
    raw = tty and os.isatty(fd)
    async with client.attach(task_id) as attachment:
        pumps = [_pump_stdin(attachment, fd)]
        if tty:
            pumps.append(_pump_resize(attachment))
        with _raw_mode(fd) if raw else contextlib.nullcontext():
            async with _alongside(*pumps):
                await output.consume(attachment.events())


@contextlib.asynccontextmanager
async def _alongside(*coros: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run `coros` while the body runs; cancel and await them when it ends.

    Not a TaskGroup: that would wrap the body's CortexError in an ExceptionGroup, and the
    pumps end on their own errors anyway (the event stream reports what went wrong).
    """
    tasks = [asyncio.create_task(coro) for coro in coros]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome


async def _pump_stdin(attachment: Attachment, fd: int) -> None:
    """Local stdin to the task until EOF. Errors end the pump; the event stream reports them."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue()
    slots = threading.Semaphore(_STDIN_IN_FLIGHT)
    # A thread, not loop.add_reader: stdin may be a regular file, which epoll refuses. It
    # is a daemon because a read() blocked on a terminal cannot be interrupted; it ends
    # with the process.
    threading.Thread(target=_read_stdin, args=(fd, loop, chunks, slots), daemon=True,
                     name="cortex-stdin").start()
    with contextlib.suppress(CortexError):
        while data := await chunks.get():
            await attachment.send_stdin(data)
            slots.release()
        await attachment.close_stdin()


def _read_stdin(fd: int, loop: asyncio.AbstractEventLoop, chunks: asyncio.Queue[bytes],
                slots: threading.Semaphore) -> None:
    while True:
        slots.acquire()
        try:
            data = os.read(fd, _STDIN_CHUNK)
        except OSError:
            data = b""
        try:
            loop.call_soon_threadsafe(chunks.put_nowait, data)
        except RuntimeError:  # the loop is closed: the task is over
            return
        if not data:
            return


async def _pump_resize(attachment: Attachment) -> None:
    """SIGWINCH to resize requests, coalesced: only the latest size matters."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    loop.add_signal_handler(signal.SIGWINCH, changed.set)
    try:
        while True:
            await changed.wait()
            changed.clear()
            rows, cols = _terminal_size()
            with contextlib.suppress(CortexError):
                await attachment.resize(rows, cols)
    finally:
        loop.remove_signal_handler(signal.SIGWINCH)


@contextlib.contextmanager
def _raw_mode(fd: int) -> Iterator[None]:
    """The local terminal in raw mode (keys go to the remote pty, Ctrl-C included)."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
