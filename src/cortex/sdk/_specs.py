"""Building and checking what a client sends: task specs, labels, durations, states.

Checks run locally, before anything reaches the network, with the same rules the hub
applies (`cortex.core.validation`), so a typo fails fast with the same message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict, Unpack

from cortex._proto.cortex.v1 import common_pb2
from cortex.core import validation
from cortex.core.artifacts import check_artifact_globs, check_inputs
from cortex.errors import InvalidArgument

__all__ = [
    "TaskOptions",
    "build_spec",
    "parse_duration",
    "parse_env",
    "parse_labels",
    "parse_node_state",
    "parse_task_state",
]

Pairs = Mapping[str, str] | Iterable[str]
TaskState = common_pb2.TaskState
NodeState = common_pb2.NodeState


class TaskOptions(TypedDict, total=False):
    """Keyword options of `Client.submit` / `Client.run`; each maps onto one TaskSpec field."""

    argv: Sequence[str] | None          # exec'd directly; exactly one of argv / command
    command: str | None                 # run through /bin/sh -c
    env: Pairs | None                   # {"K": "V"} or ["K=V", ...]
    cwd: str | None
    stdin: bytes | None                 # written to the process, then closed (unless interactive)
    interactive: bool                   # keep stdin open for `attach`
    pty: bool                           # run under a pseudo-terminal
    rows: int                           # terminal size with pty
    cols: int
    labels: Pairs | None                # the node must carry each label
    node_id: str | None                 # pin to one node
    session_id: str | None              # sticky routing to the node holding the session
    timeout: float | str | None         # seconds (or "15m") from submission; None: hub default
    priority: int                       # higher runs first
    idempotency_key: str | None         # same key -> same task
    max_attempts: int                   # attempts in all; a retry follows LOST (or FAILED, below)
    retry_on_failure: bool
    skill: str                          # "shell" (default), "noop", ...
    max_output_bytes: int               # 0: hub default
    args: Mapping[str, Any] | None      # arguments of non-shell skills
    pool: str | None                    # run only on nodes of this pool
    cpus: float                         # what the task needs (quotas and placement count it)
    memory_mib: int
    gpus: int
    browser_sessions: int
    cancel_on_disconnect: bool          # cancel it when the submitting client goes away
    artifacts: Sequence[str] | None     # output globs (relative to cwd) uploaded after the run
    inputs: Mapping[str, str] | None    # {path relative to cwd: artifact id} fetched before


_SHELL_ONLY = ("argv", "command", "env", "cwd", "stdin", "interactive", "pty")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def build_spec(**options: Unpack[TaskOptions]) -> common_pb2.TaskSpec:
    """A validated TaskSpec, or InvalidArgument listing every problem at once."""
    skill = options.get("skill") or "shell"
    problems: list[str] = []
    spec = common_pb2.TaskSpec(skill=skill)
    if skill == "shell":
        problems += _fill_shell(spec.shell, options)
    else:
        given = [k for k in _SHELL_ONLY if options.get(k)]
        if given:
            problems.append(f"{', '.join(given)}: only for the shell skill, not {skill!r}")
        if options.get("args"):
            spec.args.update(dict(options["args"] or {}))
    problems += _fill_task(spec, options)
    if problems:
        raise InvalidArgument("; ".join(problems))
    return spec


def _fill_shell(shell: common_pb2.ShellSpec, options: TaskOptions) -> list[str]:
    argv = options.get("argv") or ()
    if isinstance(argv, str | bytes):
        return ["argv must be a list of strings; pass a shell string as command="]
    if not all(isinstance(a, str) for a in argv):
        return ["argv must be a list of strings"]
    shell.argv.extend(argv)
    shell.env.update(parse_env(options.get("env")))
    problems: list[str] = []
    for name, value in (
        ("command", options.get("command") or ""),
        ("cwd", options.get("cwd") or ""),
        ("stdin", options.get("stdin") or b""),
        ("interactive", bool(options.get("interactive"))),
        ("pty", bool(options.get("pty"))),
    ):
        _set(problems, shell, name, value)
    problems += validation.check_shell(shell.argv, shell.command, shell.env, shell.stdin)
    rows, cols = options.get("rows", 0), options.get("cols", 0)
    if not (0 <= rows < 65536 and 0 <= cols < 65536):
        problems.append(f"rows/cols must be between 0 and 65535, got {rows}x{cols}")
    else:
        shell.rows, shell.cols = rows, cols
    return problems


def _fill_task(spec: common_pb2.TaskSpec, options: TaskOptions) -> list[str]:
    problems: list[str] = []
    spec.labels.update(parse_labels(options.get("labels")))
    timeout = options.get("timeout")
    max_attempts = options.get("max_attempts", 1)
    if max_attempts < 1:
        problems.append(f"max_attempts must be at least 1, got {max_attempts}")
    max_output = options.get("max_output_bytes", 0)
    if max_output < 0:
        problems.append(f"max_output_bytes must be >= 0, got {max_output}")
    for target, name, value in (
        (spec, "node_id", options.get("node_id") or ""),
        (spec, "session_id", options.get("session_id") or ""),
        (spec, "timeout_s", 0.0 if timeout is None else parse_duration(timeout, what="timeout")),
        (spec, "priority", options.get("priority", 0)),
        (spec, "idempotency_key", options.get("idempotency_key") or ""),
        (spec.retry, "max_attempts", max(max_attempts, 1)),
        (spec.retry, "retry_on_failure", bool(options.get("retry_on_failure"))),
        (spec, "max_output_bytes", max(max_output, 0)),
        (spec, "pool", options.get("pool") or ""),
        (spec, "cancel_on_disconnect", bool(options.get("cancel_on_disconnect"))),
        (spec.resources, "cpus", float(options.get("cpus", 0.0))),
        (spec.resources, "memory_mib", options.get("memory_mib", 0)),
        (spec.resources, "gpus", options.get("gpus", 0)),
        (spec.resources, "browser_sessions", options.get("browser_sessions", 0)),
    ):
        _set(problems, target, name, value)
    r = spec.resources
    problems += validation.check_resources(cpus=r.cpus, memory_mib=r.memory_mib, gpus=r.gpus,
                                           browser_sessions=r.browser_sessions)
    globs = options.get("artifacts") or ()
    if isinstance(globs, str | bytes):
        problems.append("artifacts must be a list of globs, e.g. ['out/*.tar.gz']")
    else:
        spec.artifacts.extend(globs)
        problems += check_artifact_globs(list(globs))
    inputs = dict(options.get("inputs") or {})
    for path, artifact_id in inputs.items():
        spec.inputs.add(path=path, artifact_id=artifact_id)
    problems += check_inputs([(a, p) for p, a in inputs.items()])
    return problems + validation.check_task(
        skill=spec.skill, labels=spec.labels, timeout_s=spec.timeout_s,
        max_output_bytes=spec.max_output_bytes, priority=spec.priority,
        idempotency_key=spec.idempotency_key, session_id=spec.session_id,
        node_id=spec.node_id, max_attempts=max_attempts,
    )


def _set(problems: list[str], message: Any, name: str, value: object) -> None:
    """Assign a protobuf field; a wrong type or an out-of-range number becomes a problem."""
    try:
        setattr(message, name, value)
    except (TypeError, ValueError) as e:
        problems.append(f"{name}: {value!r} does not fit ({e})")


def parse_labels(labels: Pairs | None) -> dict[str, str]:
    """``{"k": "v"}`` or ``["k=v", ...]`` as a dict of valid labels."""
    parsed = _pairs(labels, what="label", example="os=linux", allow_empty=False)
    problems = validation.check_labels(parsed)
    if problems:
        raise InvalidArgument("; ".join(problems))
    return parsed


def parse_env(env: Pairs | None) -> dict[str, str]:
    """``{"K": "V"}`` or ``["K=V", ...]``; an empty value is allowed (``K=``)."""
    return _pairs(env, what="environment variable", example="DEBUG=1", allow_empty=True)


def _pairs(items: Pairs | None, *, what: str, example: str, allow_empty: bool) -> dict[str, str]:
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return {str(k): str(v) for k, v in items.items()}
    if isinstance(items, str):
        items = [items]
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or (not value and not allow_empty):
            raise InvalidArgument(f"{what} {item!r} is not KEY=VALUE (e.g. {example})")
        result[key] = value
    return result


def parse_duration(value: str | float, *, what: str = "duration") -> float:
    """Seconds from ``90``, ``90s``, ``1.5m``, ``15m``, ``1h``, ``2d`` (or ``500ms``)."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what} must be a number of seconds, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if match is None:
            raise InvalidArgument(
                f"{what} {value!r} is not a duration: use seconds or N followed by "
                "s, m, h or d (e.g. 90, 90s, 15m, 1h, 2d)"
            )
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgument(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def parse_task_state(value: int | str) -> common_pb2.TaskState.ValueType:
    """A TaskState from its number or name (``timed_out``, ``TIMED-OUT`` ...)."""
    return common_pb2.TaskState.ValueType(_enum(common_pb2.TaskState, value, what="task state"))


def parse_node_state(value: int | str) -> common_pb2.NodeState.ValueType:
    """A NodeState from its number or name (``online``, ``draining`` ...)."""
    return common_pb2.NodeState.ValueType(_enum(common_pb2.NodeState, value, what="node state"))


def _enum(enum: Any, value: int | str, *, what: str) -> int:
    members: dict[str, int] = {
        name: number for name, number in enum.items() if not name.endswith("_UNSPECIFIED")
    }
    if isinstance(value, str):
        key = value.strip().upper().replace("-", "_")
        if key in members:
            return members[key]
    elif not isinstance(value, bool) and value in members.values():
        return value
    choices = ", ".join(name.lower() for name in members)
    raise InvalidArgument(f"{what} {value!r} is not one of: {choices}")
