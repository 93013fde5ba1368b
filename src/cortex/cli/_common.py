"""What every command shares: global options, the client config, errors, output helpers."""

from __future__ import annotations

import asyncio
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer
import typer.core
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape

from cortex.errors import CortexError, InvalidArgument
from cortex.sdk import ClientConfig, Task, TaskSpec, TaskState

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_ERROR",
    "EXIT_FAILED_NO_CODE",
    "EXIT_LOST",
    "EXIT_TIMED_OUT",
    "EXIT_USAGE",
    "CortexGroup",
    "Globals",
    "ago",
    "client_config",
    "command_summary",
    "err_console",
    "exit_code_for",
    "human_duration",
    "note",
    "out_console",
    "print_error",
    "print_json",
    "run_async",
    "state_name",
    "to_dict",
    "usage",
]

EXIT_ERROR = 1            # a Cortex error: hub unreachable, bad token, unknown task ...
EXIT_USAGE = 2            # the command line itself is wrong
EXIT_TIMED_OUT = 124      # as timeout(1)
EXIT_LOST = 125           # the node running it was lost (and no retry was left)
EXIT_FAILED_NO_CODE = 126  # failed without an exit code: spawn error, no node could take it
EXIT_CANCELLED = 130      # cancelled, or Ctrl-C (which cancels a task `cortex run` waits on)

EXIT_CODES_HELP = (
    "Exit status: the task's own exit code (128+N when killed by signal N); "
    f"{EXIT_TIMED_OUT} timed out, {EXIT_LOST} node lost, {EXIT_FAILED_NO_CODE} failed "
    "without an exit code (could not start, or no node could take it), "
    f"{EXIT_CANCELLED} cancelled or interrupted; {EXIT_ERROR} a Cortex error "
    f"(hub unreachable, bad token ...), {EXIT_USAGE} a usage error."
)

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Globals:
    """The root options, kept in the typer context for the commands."""

    hub: str | None = None
    token: str | None = None
    ca: Path | None = None
    home: Path | None = None


class CortexGroup(typer.core.TyperGroup):
    """Turns a CortexError from any command into one red line and exit status 1."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click.Context
        try:
            return super().invoke(ctx)
        except CortexError as e:
            print_error(str(e))
            raise typer.Exit(EXIT_ERROR) from None


def client_config(ctx: typer.Context) -> ClientConfig:
    """The ClientConfig from the root options > environment > client.json."""
    opts = ctx.find_object(Globals) or Globals()
    return ClientConfig.from_env(opts.home, address=opts.hub, token=opts.token, ca_file=opts.ca)


def run_async(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run `coro`; Ctrl-C (after the coroutine's own cleanup) exits with 130."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_CANCELLED) from None


def usage(parse: Callable[[Any], _T], value: Any, *, flag: str) -> _T:
    """`parse(value)`, with InvalidArgument shown as a usage error of `flag` (exit 2)."""
    try:
        return parse(value)
    except InvalidArgument as e:
        raise typer.BadParameter(str(e), param_hint=flag) from None


def print_error(message: str) -> None:
    err_console.print(f"[red]error: {escape(message)}[/red]")


def note(message: str) -> None:
    """A line about the command (not the task's output) on stderr."""
    err_console.print(f"[dim]cortex: {escape(message)}[/dim]")


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


def state_name(state: int) -> str:
    return TaskState.Name(TaskState.ValueType(state)).lower() if state else "-"


def exit_code_for(task: Task) -> int:
    """What `cortex run` exits with for a finished task (see EXIT_CODES_HELP)."""
    if task.state == TaskState.SUCCEEDED:
        return 0
    if task.state == TaskState.FAILED:
        if task.has_exit_code and task.exit_code != 0:
            return _shell_status(task.exit_code)
        return EXIT_FAILED_NO_CODE
    return {
        TaskState.TIMED_OUT: EXIT_TIMED_OUT,
        TaskState.CANCELLED: EXIT_CANCELLED,
        TaskState.LOST: EXIT_LOST,
    }.get(task.state, EXIT_ERROR)


def _shell_status(code: int) -> int:
    if 0 < code < 256:
        return code
    if -128 < code < 0:  # killed by signal -code, as Python reports it
        return 128 - code
    return EXIT_ERROR


def command_summary(spec: TaskSpec, *, width: int = 60) -> str:
    if spec.skill not in ("", "shell"):
        text = spec.skill
    elif spec.shell.command:
        text = spec.shell.command
    else:
        text = shlex.join(spec.shell.argv)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def ago(timestamp: float, *, now: float | None = None) -> str:
    """``3s ago``, ``5m ago``, ``2h ago``, ``4d ago``; ``-`` for an unset time."""
    if not timestamp:
        return "-"
    seconds = max(0.0, (time.time() if now is None else now) - timestamp)
    return f"{_compact(seconds)} ago"


def human_duration(seconds: float) -> str:
    """``0.4s``, ``12s``, ``3m04s``, ``2h03m``, ``1d02h``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    return _compact(seconds, two_units=True)


def _compact(seconds: float, *, two_units: bool = False) -> str:
    s = math.floor(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                      ("m", 60, "s", 1)):
        if s >= size:
            head = f"{s // size}{unit}"
            return f"{head}{(s % size) // sub_size:02d}{sub}" if two_units else head
    return f"{s}s"
