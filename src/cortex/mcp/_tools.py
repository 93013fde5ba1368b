"""The tools a model calls, each over the SDK `Client` of its caller (see `Binding`): the
token's tenant and role bound them.

Each public coroutine of `CortexTools` is one MCP tool: its docstring is the description
the model reads, its annotated parameters the input schema, and the model named beside
`CallToolResult` the output schema. No call blocks for more than `MAX_WAIT_S`: MCP
clients give up on a tool call after about 60 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated

import anyio
from mcp.types import CallToolResult
from pydantic import Field

from cortex.errors import Conflict, CortexError
from cortex.mcp._binding import Resolve
from cortex.mcp._browser_tools import BROWSER_TOOLS, BrowserTools
from cortex.mcp._errors import ToolError, tool_errors
from cortex.mcp._file_tools import FileTools
from cortex.mcp._models import (
    Cancelled,
    NodeList,
    StdinWritten,
    TaskList,
    TaskOutput,
    TaskRun,
    TaskStatus,
    exit_code,
    finished,
    node_row,
    result,
    state_name,
    task_row,
    task_status,
)
from cortex.mcp._output import Clip, Page, decode
from cortex.sdk import (
    TERMINAL_STATES,
    Client,
    OutputStream,
    Task,
    TaskOptions,
    TaskState,
    parse_task_state,
)

__all__ = ["MAX_WAIT_S", "OUTPUT_LIMIT", "TOOL_NAMES", "CortexTools"]

MAX_WAIT_S = 50.0
"""The longest any tool waits; MCP clients time out a call at about 60 s."""
OUTPUT_LIMIT = 8 * 1024
"""Bytes of stdout, and of stderr, that run_command returns (head and tail)."""
CANCEL_WAIT_S = 5.0
"""How long cancel_task waits for the node to confirm."""
_TO_STDOUT = frozenset({OutputStream.STDOUT, OutputStream.PTY})
_ACTIVE = (TaskState.QUEUED, TaskState.ASSIGNED, TaskState.RUNNING)

TOOL_NAMES = (
    "list_nodes", "run_command", "start_task", "task_status", "task_output", "cancel_task",
    "write_stdin", "list_tasks", "list_artifacts", "fetch_artifact", "list_files",
    "read_file", "write_file", *BROWSER_TOOLS,
)

# Parameter types, shared by the tools that take them; descriptions are what models read.
TaskId = Annotated[str, Field(description="The task id, e.g. t-01jc7q5x2bhw3k9m4n6p (from "
                                          "run_command, start_task or list_tasks).")]
Command = Annotated[str | None, Field(description=(
    "A shell command line, run with /bin/sh -c (pipes, redirects, && allowed). "
    "Give this or argv, not both."))]
Argv = Annotated[list[str] | None, Field(description=(
    'A program and its arguments, exec\'d directly without a shell, e.g. ["ls", "-la", '
    '"/tmp"]. Give this or command, not both.'))]
Labels = Annotated[list[str] | None, Field(description=(
    'Run on a node carrying every one of these labels, each "key=value", e.g. '
    '["os=linux", "gpu=a100"] (list_nodes shows the labels).'))]
NodeId = Annotated[str | None, Field(description="Run on this node only (an id from list_nodes).")]
Cwd = Annotated[str | None, Field(description="Working directory on the node.")]
Env = Annotated[dict[str, str] | None, Field(description="Extra environment variables.")]
Stdin = Annotated[str | None, Field(description=(
    "Text written to the command's stdin, which is then closed (unless interactive)."))]
TimeoutS = Annotated[float | None, Field(gt=0, description=(
    "Kill the command if it has not finished this many seconds after it was submitted "
    "(default: the hub's limit)."))]
Interactive = Annotated[bool, Field(description=(
    "Keep stdin open so that write_stdin can send input later (for programs that read "
    "input as they run: REPLs, prompts, cat)."))]


class CortexTools(FileTools, BrowserTools):
    """The MCP tools; `resolve` names the client (and stdin pipes) serving each call."""

    def __init__(self, resolve: Resolve) -> None:
        self._resolve = resolve

    async def list_nodes(
        self,
        labels: Annotated[list[str] | None, Field(description=(
            'Only nodes carrying every one of these labels, each "key=value", e.g. '
            '["os=linux"].'))] = None,
        skill: Annotated[str | None, Field(
            description='Only nodes offering this skill, e.g. "shell".')] = None,
    ) -> Annotated[CallToolResult, NodeList]:
        """List the machines (nodes) that run commands: id, name, state (online, offline,
        draining, revoked), labels, skills, running tasks, slots (tasks it runs at once)
        and load. Use a node's labels or id to choose where run_command or start_task runs.
        """
        b = self._resolve()
        with tool_errors(credentials=b.credentials):
            nodes = await b.client.list_nodes(labels=labels, skill=skill)
        hint = None
        if not nodes:
            hint = ("no node matches these filters; call list_nodes without filters"
                    if labels or skill else
                    "no node has joined this hub yet: ask the user to start one "
                    "(`cortex token join`, then `cortex node --token ...` on the machine)")
        return result(NodeList(nodes=[node_row(n) for n in nodes], hint=hint))

    async def run_command(
        self,
        command: Command = None,
        argv: Argv = None,
        labels: Labels = None,
        node_id: NodeId = None,
        cwd: Cwd = None,
        env: Env = None,
        stdin: Stdin = None,
        timeout_s: TimeoutS = None,
        interactive: Interactive = False,
        wait_s: Annotated[float, Field(ge=0, le=MAX_WAIT_S, description=(
            "Seconds to wait for the command to finish before returning its task id "
            "instead (0-50)."))] = 20.0,
    ) -> Annotated[CallToolResult, TaskRun]:
        """Run a shell command on a node and return its exit code, state, stdout and stderr.

        Each stream is cut to 8 KiB (its start and its end, with a marker saying how to read
        the middle). If it has not finished after wait_s seconds (default 20), returns its
        task_id, its state (e.g. "running"), the output so far and next_seq: follow it
        with task_output, check it with task_status, stop it with cancel_task. For work
        you expect to take longer, use start_task. Choose the machine with labels or
        node_id (see list_nodes); otherwise any node with the shell skill runs it.
        Cancelling this call cancels the command too.
        """
        options = _options(command, argv, labels, node_id, cwd, env, stdin, timeout_s,
                           interactive)
        b = self._resolve()
        with tool_errors(credentials=b.credentials):
            task = await b.client.submit(**options)
        try:
            with tool_errors(task.id, credentials=b.credentials):
                return result(await _wait_for(b.client, task, wait_s))
        except asyncio.CancelledError:
            await _cancel_abandoned(b.client, task.id)
            raise

    async def start_task(
        self,
        command: Command = None,
        argv: Argv = None,
        labels: Labels = None,
        node_id: NodeId = None,
        cwd: Cwd = None,
        env: Env = None,
        stdin: Stdin = None,
        timeout_s: TimeoutS = None,
        interactive: Interactive = False,
    ) -> Annotated[CallToolResult, TaskRun]:
        """Start a shell command on a node and return its task_id at once, without waiting.

        For long jobs (builds, test suites, servers) and interactive programs
        (interactive=true, then write_stdin). Then read its output with task_output, its
        state and exit code with task_status, and stop it with cancel_task. Arguments as
        run_command.
        """
        options = _options(command, argv, labels, node_id, cwd, env, stdin, timeout_s,
                           interactive)
        b = self._resolve()
        with tool_errors(credentials=b.credentials):
            task = await b.client.submit(**options)
        hint = (f"started: read its output with task_output(task_id={task.id!r}, "
                "after_seq=0, wait_s=30)")
        if interactive:
            hint += "; send input with write_stdin"
        return result(TaskRun(task_id=task.id, state=state_name(task.state),
                              reason=task.reason or None, node_id=task.node_id or None,
                              hint=hint))

    async def task_status(self, task_id: TaskId) -> Annotated[CallToolResult, TaskStatus]:
        """A task's state (queued, assigned, running, succeeded, failed, cancelled,
        timed_out, lost), whether it has finished, its exit code, the reason for its state
        (why it waits, why it failed), node, attempt, timings, and its output size
        (last_seq: the sequence number of its newest event).
        """
        b = self._resolve()
        with tool_errors(task_id, credentials=b.credentials):
            task = await b.client.get(task_id)
        return result(task_status(task, now=time.time()))

    async def task_output(
        self,
        task_id: TaskId,
        after_seq: Annotated[int, Field(ge=0, description=(
            "Return output after this sequence number: 0 from the start, then next_seq "
            "from the previous answer."))] = 0,
        skip_bytes: Annotated[int, Field(ge=0, description=(
            "Bytes of the first event after after_seq already read: next_skip_bytes from "
            "the previous answer (0 from the start)."))] = 0,
        max_bytes: Annotated[int, Field(ge=256, le=256 * 1024, description=(
            "Most bytes of output (stdout and stderr together) to return."))] = 8192,
        wait_s: Annotated[float, Field(ge=0, le=MAX_WAIT_S, description=(
            "If no new output is there yet, wait up to this many seconds (0-50) for some, "
            "or for the task to end."))] = 0.0,
    ) -> Annotated[CallToolResult, TaskOutput]:
        """Read a task's stdout and stderr from a place in its output, up to max_bytes.

        Start with after_seq=0; go on with after_seq=next_seq, skip_bytes=next_skip_bytes
        from the previous answer. more=true: more output is already waiting, call again
        now. finished=true: the task has ended and you have read all of its output. To
        follow a running task without polling, set wait_s (e.g. 30): the call returns as
        soon as new output arrives or the task ends.
        """
        b = self._resolve()
        with tool_errors(task_id, credentials=b.credentials):
            task, page = await _page(b.client, task_id, after_seq, skip_bytes, max_bytes)
            done = finished(task) and not page.full
            if wait_s > 0 and not page.taken and not done:
                await _await_news(b.client, task_id, page.next_seq, wait_s)
                task, page = await _page(b.client, task_id, after_seq, skip_bytes, max_bytes)
                done = finished(task) and not page.full
        return result(TaskOutput(
            task_id=task_id, state=state_name(task.state), finished=done, more=page.full,
            next_seq=page.next_seq, next_skip_bytes=page.next_skip_bytes,
            exit_code=exit_code(task) if done else None,
            hint=_output_hint(task_id, page, done),
            stdout=decode(bytes(page.stdout)), stderr=decode(bytes(page.stderr)),
        ))

    async def cancel_task(
        self,
        task_id: TaskId,
        reason: Annotated[str | None, Field(
            max_length=1024, description="Why, kept with the task.")] = None,
    ) -> Annotated[CallToolResult, Cancelled]:
        """Cancel a task: the node kills its whole process tree. Waits a few seconds for the
        node to confirm and returns the resulting state. A task that has already finished
        is left as it is.
        """
        b = self._resolve()
        with tool_errors(task_id, credentials=b.credentials):
            try:
                task = await b.client.cancel(task_id, reason=reason or "cancelled via MCP")
            except Conflict:
                task = await b.client.get(task_id)
                if not finished(task):
                    raise
                return result(_cancelled(task, f"it had already ended ({state_name(task.state)})"
                                               " before the cancel"))
            if not finished(task):
                task = await _wait_finished(b.client, task, CANCEL_WAIT_S)
        hint = None if finished(task) else (
            f"the node has not confirmed yet; task_status(task_id={task_id!r}) shows when it has")
        return result(_cancelled(task, hint))

    async def write_stdin(
        self,
        task_id: TaskId,
        data: Annotated[str, Field(description=(
            'Text for the program\'s stdin (UTF-8); end a line with "\\n".'))],
        eof: Annotated[bool, Field(description=(
            "Close stdin after the data (end of input); many programs only finish then."
        ))] = False,
    ) -> Annotated[CallToolResult, StdinWritten]:
        """Send input to a running task started with interactive=true (see start_task).

        Read what the program answers with task_output. eof=true closes its stdin after the
        data, like Ctrl-D in a terminal.
        """
        raw = data.encode("utf-8")
        if not raw and not eof:
            raise ToolError("nothing to write: give data, or eof=true to close stdin")
        b = self._resolve()
        with tool_errors(task_id, credentials=b.credentials):
            task = await b.client.get(task_id)
            if not task.spec.shell.interactive:
                raise ToolError(
                    f"task {task_id} was not started with interactive=true, so its stdin is "
                    "closed; start the program again with start_task(..., interactive=true) "
                    "and write to that task")
            if finished(task):
                raise ToolError(f"task {task_id} has already ended ({state_name(task.state)}); "
                                "it reads no more input")
            await b.pipes.write(task_id, raw, eof=eof, after_seq=task.last_seq)
        return result(StdinWritten(task_id=task_id, bytes_written=len(raw), eof=eof,
                                   state=state_name(task.state)))

    async def list_tasks(
        self,
        state: Annotated[str | None, Field(description=(
            "Only tasks in this state: queued, assigned, running, succeeded, failed, "
            "cancelled, timed_out, lost, or active (queued, assigned or running)."))] = None,
        node_id: Annotated[str | None, Field(description="Only tasks of this node.")] = None,
        limit: Annotated[int, Field(ge=1, le=100, description="Most tasks to list.")] = 20,
    ) -> Annotated[CallToolResult, TaskList]:
        """List recent tasks, newest first: id, state, command, node, exit code, creation
        time and the reason for their state.
        """
        b = self._resolve()
        with tool_errors(credentials=b.credentials):
            states = _ACTIVE if state == "active" else (
                () if state is None else (parse_task_state(state),))
            tasks = await b.client.list_tasks(states=states, node_id=node_id,
                                              limit=limit + 1)
        more = len(tasks) > limit
        hint = "more tasks match: raise limit or filter by state/node_id" if more else None
        return result(TaskList(tasks=[task_row(t) for t in tasks[:limit]], more=more,
                               hint=hint))


# --- plumbing ------------------------------------------------------------------------------


async def _wait_for(client: Client, task: Task, wait_s: float) -> TaskRun:
    """Follow the task for up to `wait_s` s: its result, or where it is and what next."""
    out, err = Clip(OUTPUT_LIMIT), Clip(OUTPUT_LIMIT)
    last_seq = await _collect(client, task.id, 0, out, err, wait_s=wait_s)
    task = await client.get(task.id)
    if finished(task):  # it may have ended just as the wait did: read what is left
        last_seq = await _collect(client, task.id, last_seq, out, err, wait_s=None)
    run = TaskRun(task_id=task.id, state=state_name(task.state),
                  exit_code=exit_code(task), reason=task.reason or None,
                  node_id=task.node_id or None, stdout=out.text(task.id),
                  stderr=err.text(task.id))
    if finished(task):
        if task.started_at and task.finished_at:
            run.duration_s = round(task.finished_at - task.started_at, 2)
        return run
    run.next_seq = last_seq
    run.hint = (f"still {run.state} after {wait_s:g} s: follow it with task_output("
                f"task_id={task.id!r}, after_seq={last_seq}, wait_s=30); task_status "
                "shows its state, cancel_task stops it")
    return run


async def _collect(client: Client, task_id: str, after_seq: int, out: Clip, err: Clip, *,
                   wait_s: float | None) -> int:
    """Output events after `after_seq` into the clips: live for up to `wait_s` seconds,
    or (None) those already stored. Returns the last sequence number seen."""
    last_seq = after_seq
    events = client.watch(task_id, after_seq=after_seq, follow=wait_s is not None)
    async with contextlib.aclosing(events):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                async for event in events:
                    last_seq = event.seq
                    if event.HasField("output"):
                        clip = out if event.output.stream in _TO_STDOUT else err
                        clip.add(event.seq, event.output.data)
    return last_seq


async def _page(client: Client, task_id: str, after_seq: int, skip_bytes: int, max_bytes: int
                ) -> tuple[Task, Page]:
    """The task, then its output from ``(after_seq, skip_bytes)`` up to `max_bytes`.

    The task is read first: if it had ended, every event is stored, so a page that
    is not full reaches its end. A state change newer than the read is reread.
    """
    task = await client.get(task_id)
    page = Page(after_seq=after_seq, skip_bytes=skip_bytes, max_bytes=max_bytes)
    newer_state = False
    events = client.watch(task_id, after_seq=after_seq, follow=False)
    async with contextlib.aclosing(events):
        async for event in events:
            if event.HasField("output"):
                if not page.add_output(event.seq, event.output.data,
                                       to_stdout=event.output.stream in _TO_STDOUT):
                    break
            else:
                page.add_other(event.seq)
                newer_state = newer_state or event.seq > task.last_seq
    if newer_state:
        task = await client.get(task_id)
    return task, page


async def _await_news(client: Client, task_id: str, after_seq: int, wait_s: float) -> None:
    """Return when the task has output after `after_seq`, or ends, or `wait_s` passed."""
    events = client.watch(task_id, after_seq=after_seq)
    async with contextlib.aclosing(events):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                async for event in events:
                    if event.HasField("output") or event.state.state in TERMINAL_STATES:
                        return


async def _wait_finished(client: Client, task: Task, wait_s: float) -> Task:
    """The task once it has ended, or as it is after `wait_s` seconds."""
    events = client.watch(task.id, after_seq=task.last_seq)
    async with contextlib.aclosing(events):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                async for _ in events:
                    pass
    return await client.get(task.id)


async def _cancel_abandoned(client: Client, task_id: str) -> None:
    # The MCP client gave up on run_command (the user stopped it): stop the command too,
    # as Ctrl-C would. The request's cancel scope is cancelled, hence the shield.
    with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_WAIT_S), \
            contextlib.suppress(CortexError):
        await client.cancel(task_id, reason="the MCP client cancelled run_command")


def _options(command: str | None, argv: list[str] | None, labels: list[str] | None,
             node_id: str | None, cwd: str | None, env: dict[str, str] | None,
             stdin: str | None, timeout_s: float | None, interactive: bool) -> TaskOptions:
    if not command and not argv:
        raise ToolError('nothing to run: give command (a shell string, e.g. "ls -la | head") '
                        'or argv (e.g. ["ls", "-la"])')
    if command and argv:
        raise ToolError("give command or argv, not both")
    return TaskOptions(
        command=command, argv=argv, labels=labels, node_id=node_id, cwd=cwd, env=env,
        stdin=stdin.encode("utf-8") if stdin else None, timeout=timeout_s,
        interactive=interactive,
    )


def _output_hint(task_id: str, page: Page, done: bool) -> str | None:
    where = f"task_id={task_id!r}, after_seq={page.next_seq}"
    if page.next_skip_bytes:
        where += f", skip_bytes={page.next_skip_bytes}"
    if page.full:
        return f"more output is waiting: task_output({where})"
    if not done and not page.taken:
        return f"no new output yet: task_output({where}, wait_s=30) waits for some"
    return None


def _cancelled(task: Task, hint: str | None) -> Cancelled:
    return Cancelled(task_id=task.id, state=state_name(task.state), finished=finished(task),
                     exit_code=exit_code(task), reason=task.reason or None, hint=hint)
