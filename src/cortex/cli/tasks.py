"""``cortex tasks``: list, inspect, follow and cancel tasks."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from cortex.cli._common import (
    ago,
    client_config,
    command_summary,
    human_duration,
    out_console,
    print_json,
    run_async,
    state_name,
    to_dict,
    usage,
)
from cortex.sdk import Client, ClientConfig, Task, TaskState, parse_labels, parse_task_state
from cortex.sdk import OutputStream as Stream

__all__ = ["app"]

app = typer.Typer(help="List, inspect, follow and cancel tasks.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TaskId = Annotated[str, typer.Argument(metavar="ID", help="The task id (t-...).")]

_STATE_STYLE = {
    TaskState.QUEUED: "cyan", TaskState.ASSIGNED: "cyan", TaskState.RUNNING: "blue",
    TaskState.SUCCEEDED: "green", TaskState.FAILED: "red", TaskState.CANCELLED: "yellow",
    TaskState.TIMED_OUT: "red", TaskState.LOST: "magenta",
}


@app.command("ls")
def list_tasks(
    ctx: typer.Context,
    state: Annotated[list[str] | None, typer.Option(
        "--state", "-s", metavar="STATE", help="queued, assigned, running, succeeded, failed, "
        "cancelled, timed_out or lost (repeatable).", show_default=False)] = None,
    node: Annotated[str | None, typer.Option(
        "--node", metavar="ID", help="Tasks placed on this node.", show_default=False)] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", "-l", metavar="K=V", help="Tasks constrained to this label (repeatable).",
        show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10_000, metavar="N",
                                       help="At most this many tasks.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List tasks, newest first."""
    states = [usage(parse_task_state, s, flag="'--state' / '-s'") for s in state or ()]
    labels = usage(parse_labels, label, flag="'--label' / '-l'")
    config = client_config(ctx)
    tasks = run_async(_list(config, states=states, node=node, labels=labels, limit=limit))
    if as_json:
        print_json([to_dict(t) for t in tasks])
        return
    now = time.time()
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "STATE", "ATTEMPT", "NODE", "EXIT", "CREATED", "DURATION", "COMMAND"):
        table.add_column(column, no_wrap=column != "COMMAND", overflow="fold")
    for t in tasks:
        table.add_row(t.id, _state(t), str(t.attempt or "-"), t.node_id or "-", _exit(t),
                      ago(t.created_at, now=now), _duration(t, now), command_summary(t.spec))
    out_console.print(table)


@app.command("get")
def get_task(ctx: typer.Context, task_id: TaskId, as_json: JsonOption = False) -> None:
    """Show one task: spec, state, reason and every attempt."""
    config = client_config(ctx)
    task = run_async(_get(config, task_id))
    if as_json:
        print_json(to_dict(task))
        return
    now = time.time()
    spec = task.spec
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("id", task.id), ("state", _state(task)), ("reason", task.reason or "-"),
        ("command", command_summary(spec, width=400)), ("skill", spec.skill or "shell"),
        ("node", task.node_id or "-"), ("attempt", f"{task.attempt} of "
                                        f"{max(spec.retry.max_attempts, 1)}"),
        ("exit code", _exit(task)), ("labels", _pairs(spec.labels)),
        ("created", ago(task.created_at, now=now)), ("started", ago(task.started_at, now=now)),
        ("finished", ago(task.finished_at, now=now)), ("duration", _duration(task, now)),
        ("timeout", human_duration(spec.timeout_s) if spec.timeout_s else "hub default"),
        ("priority", str(spec.priority)), ("session", spec.session_id or "-"),
        ("idempotency key", spec.idempotency_key or "-"),
        ("output", f"{task.output_bytes} bytes" + (" (truncated)" if task.output_truncated
                                                   else "")),
        ("last seq", str(task.last_seq)), ("tenant", task.tenant),
    ]
    for key, value in rows:
        grid.add_row(key, value)
    out_console.print(grid)
    if task.attempts:
        attempts = Table(title="attempts", title_justify="left", box=None, pad_edge=False)
        for column in ("#", "NODE", "STATE", "EXIT", "STARTED", "DURATION", "REASON"):
            attempts.add_column(column)
        for a in task.attempts:
            took = human_duration(a.finished_at - a.started_at) \
                if a.started_at and a.finished_at else "-"
            attempts.add_row(str(a.attempt), a.node_id or "-", state_name(a.state),
                             str(a.exit_code) if a.has_exit_code else "-",
                             ago(a.started_at, now=now), took, a.reason or "-")
        out_console.print()
        out_console.print(attempts)


@app.command("logs")
def logs(
    ctx: typer.Context,
    task_id: TaskId,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep streaming until the task finishes.")] = False,
    after: Annotated[int, typer.Option(
        "--after", min=0, metavar="SEQ", help="Only events after this sequence number.")] = 0,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print every event as one JSON line (output data in base64).")] = False,
) -> None:
    """Print a task's output (stdout to stdout, stderr to stderr, raw bytes)."""
    config = client_config(ctx)
    run_async(_logs(config, task_id, follow=follow, after=after, as_json=as_json))


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    task_id: TaskId,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Recorded with the task.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Cancel a task (the node stops its whole process tree)."""
    config = client_config(ctx)
    task = run_async(_cancel(config, task_id, reason))
    if as_json:
        print_json(to_dict(task))
    else:
        out_console.print(f"task {task.id}: cancel requested (state {state_name(task.state)})")


async def _list(config: ClientConfig, *, states: list[TaskState.ValueType], node: str | None,
                labels: dict[str, str], limit: int) -> list[Task]:
    async with Client(config) as client:
        return await client.list_tasks(states=states, node_id=node, labels=labels, limit=limit)


async def _get(config: ClientConfig, task_id: str) -> Task:
    async with Client(config) as client:
        return await client.get(task_id)


async def _cancel(config: ClientConfig, task_id: str, reason: str) -> Task:
    async with Client(config) as client:
        return await client.cancel(task_id, reason=reason)


async def _logs(config: ClientConfig, task_id: str, *, follow: bool, after: int,
                as_json: bool) -> None:
    async with Client(config) as client:
        async for event in client.watch(task_id, after_seq=after, follow=follow):
            if as_json:
                sys.stdout.write(json.dumps(to_dict(event)) + "\n")
                sys.stdout.flush()
            elif event.HasField("output"):
                to_stdout = event.output.stream in (Stream.STDOUT, Stream.PTY)
                out = sys.stdout if to_stdout else sys.stderr
                out.buffer.write(event.output.data)
                out.buffer.flush()


def _state(task: Task) -> Text:
    return Text(state_name(task.state), style=_STATE_STYLE.get(task.state, ""))


def _exit(task: Task) -> str:
    return str(task.exit_code) if task.has_exit_code else "-"


def _duration(task: Task, now: float) -> str:
    if not task.started_at:
        return "-"
    return human_duration((task.finished_at or now) - task.started_at)


def _pairs(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"
