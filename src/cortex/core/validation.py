"""Limits and checks for what clients submit. Pure: a spec in, a list of problems out.

Each problem names the field, what is wrong and the bound, so the error a user sees says
what to change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["LIMITS", "Limits", "check_labels", "check_resources", "check_shell", "check_task"]

# \Z, not $: `$` also matches before a trailing newline, which would let "os\n" through.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]*\Z")
_SKILL = re.compile(r"[a-z][a-z0-9_\-]{0,31}\Z")


@dataclass(frozen=True, slots=True)
class Limits:
    command_bytes: int = 64 * 1024          # argv or shell string, all of it
    env_bytes: int = 256 * 1024
    stdin_bytes: int = 4 * 1024 * 1024
    label_key: int = 63
    label_value: int = 255
    labels: int = 64
    id_chars: int = 128                     # idempotency keys, session ids, node ids
    max_timeout_s: float = 7 * 24 * 3600.0
    max_output_bytes: int = 1024 * 1024 * 1024
    max_attempts: int = 10
    priority: int = 1000


LIMITS = Limits()


def check_labels(labels: Mapping[str, str], *, field: str = "labels",
                 limits: Limits = LIMITS) -> list[str]:
    problems = []
    if len(labels) > limits.labels:
        problems.append(f"{field}: at most {limits.labels} labels, got {len(labels)}")
    for key, value in labels.items():
        if not key or len(key) > limits.label_key or not _NAME.match(key):
            problems.append(
                f"{field}: key {key!r} must be 1-{limits.label_key} characters of letters, "
                "digits, '_', '-', '.', '/'"
            )
        if len(value) > limits.label_value or "\x00" in value or "\n" in value:
            problems.append(
                f"{field}: value of {key!r} must be at most {limits.label_value} characters "
                "without NUL or newline"
            )
    return problems


def check_shell(argv: Iterable[str], command: str, env: Mapping[str, str], stdin: bytes,
                *, limits: Limits = LIMITS) -> list[str]:
    argv = list(argv)
    problems = []
    if bool(argv) == bool(command):
        problems.append("shell: give exactly one of argv (exec'd directly) or command (sh -c)")
    if argv and not argv[0]:
        problems.append("shell.argv: the program name (argv[0]) is empty")
    size = sum(len(a.encode()) + 1 for a in argv) + len(command.encode())
    if size > limits.command_bytes:
        problems.append(f"shell: command is {size} bytes; the limit is {limits.command_bytes}")
    if any("\x00" in a for a in argv) or "\x00" in command:
        problems.append("shell: command contains a NUL byte")
    env_size = 0
    for key, value in env.items():
        env_size += len(key.encode()) + len(value.encode()) + 2
        if not key or "=" in key or "\x00" in key or "\x00" in value:
            problems.append(f"shell.env: {key!r} is not a valid variable (no '=', no NUL)")
    if env_size > limits.env_bytes:
        problems.append(f"shell.env: {env_size} bytes; the limit is {limits.env_bytes}")
    if len(stdin) > limits.stdin_bytes:
        problems.append(
            f"shell.stdin: {len(stdin)} bytes; the limit is {limits.stdin_bytes} "
            "(stream bigger input with attach)"
        )
    return problems


def check_task(
    *, skill: str, labels: Mapping[str, str], timeout_s: float, max_output_bytes: int,
    priority: int, idempotency_key: str, session_id: str, node_id: str, max_attempts: int,
    limits: Limits = LIMITS,
) -> list[str]:
    problems = []
    if not _SKILL.match(skill):
        problems.append(f"skill: {skill!r} is not a skill name (lowercase, up to 32 chars)")
    problems += check_labels(labels, limits=limits)
    if not 0 <= timeout_s <= limits.max_timeout_s:
        problems.append(f"timeout: must be between 0 and {limits.max_timeout_s:.0f} s")
    if max_output_bytes > limits.max_output_bytes:
        problems.append(f"max_output_bytes: the limit is {limits.max_output_bytes}")
    if abs(priority) > limits.priority:
        problems.append(f"priority: must be between -{limits.priority} and {limits.priority}")
    for name, value in (("idempotency_key", idempotency_key), ("session_id", session_id),
                        ("node_id", node_id)):
        if len(value) > limits.id_chars or "\x00" in value:
            problems.append(f"{name}: at most {limits.id_chars} characters, no NUL")
    if max_attempts > limits.max_attempts:
        problems.append(f"retry.max_attempts: at most {limits.max_attempts}")
    return problems


def check_resources(*, cpus: float, memory_mib: int, gpus: int, browser_sessions: int
                    ) -> list[str]:
    """What a task may declare it needs: sane, finite amounts."""
    problems = []
    if not 0 <= cpus <= 1024 or cpus != cpus:
        problems.append("resources.cpus: between 0 and 1024 cores")
    if memory_mib > 16 * 1024 * 1024:
        problems.append("resources.memory_mib: at most 16 TiB")
    if gpus > 64:
        problems.append("resources.gpus: at most 64")
    if browser_sessions > 64:
        problems.append("resources.browser_sessions: at most 64")
    return problems
