"""Artifact rules without I/O: names, upload ids, sizes, quota and retention decisions."""

from __future__ import annotations

import re

from cortex.errors import Conflict, InvalidArgument

__all__ = [
    "CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "check_artifact_globs",
    "check_chunk",
    "check_inputs",
    "check_name",
    "check_quota",
    "check_upload_id",
    "expiry",
]

CHUNK_BYTES = 64 * 1024
"""Message payload both sides send (measured best: docs/artifacts.md)."""
MAX_CHUNK_BYTES = 1024 * 1024
"""Largest payload the hub accepts in one WriteRequest."""
MAX_TTL_S = 10 * 365 * 86400.0

_UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def check_upload_id(upload_id: str) -> str:
    if not _UPLOAD_ID.match(upload_id):
        raise InvalidArgument("upload_id: give 8-64 characters of [A-Za-z0-9_-] "
                              "(a fresh UUID hex per upload)")
    return upload_id


def check_name(name: str) -> str:
    """A relative POSIX path with no empty, '.' or '..' parts (it becomes a local path)."""
    if not name or len(name) > 1024 or "\0" in name or "\\" in name:
        raise InvalidArgument("artifact name: give a relative path of 1-1024 characters "
                              "without NUL or backslashes, such as out/app.tar.gz")
    if name.startswith("/") or any(p in ("", ".", "..") for p in name.split("/")):
        raise InvalidArgument(f"artifact name {name!r}: must be relative, without '..', "
                              "'.' or empty parts")
    return name


def check_chunk(*, offset: int, committed: int, length: int, declared: int) -> None:
    """One WriteRequest against the upload's state; the error names both numbers."""
    if length > MAX_CHUNK_BYTES:
        raise InvalidArgument(f"data is {length} bytes, limit {MAX_CHUNK_BYTES}: send "
                              f"chunks of {CHUNK_BYTES} bytes")
    if offset != committed:
        where = "beyond" if offset > committed else "before"
        raise InvalidArgument(
            f"write_offset {offset} is {where} the {committed} bytes the hub holds for "
            f"this upload: resume from write_offset {committed} (QueryWriteStatus)")
    if declared >= 0 and committed + length > declared:
        raise InvalidArgument(f"the upload passes the {declared} bytes its header "
                              f"declared (at {committed + length}): fix the size")


def check_quota(*, used: int, adding: int, quota: int) -> None:
    if quota and used + adding > quota:
        raise Conflict(f"artifact quota exceeded: the tenant stores {used} bytes, this "
                       f"upload needs {adding} more, the quota is {quota}; delete "
                       "artifacts (cortex artifacts rm) or ask for a larger quota")


def expiry(*, now: float, ttl_s: float, default_ttl_s: float) -> float:
    """When an artifact expires (0 = never)."""
    if ttl_s < 0 or ttl_s > MAX_TTL_S:
        raise InvalidArgument("ttl_s: between 0 (the hub's default) and 10 years")
    ttl = ttl_s or default_ttl_s
    return now + ttl if ttl > 0 else 0.0


MAX_GLOBS = 64


def check_artifact_globs(globs: list[str] | tuple[str, ...]) -> list[str]:
    """Problems with a spec's output globs (relative to the task's cwd, no '..')."""
    if len(globs) > MAX_GLOBS:
        return [f"artifacts: at most {MAX_GLOBS} globs, got {len(globs)}"]
    problems = []
    for g in globs:
        if not g or len(g) > 1024 or "\0" in g:
            problems.append("artifacts: each glob is 1-1024 characters without NUL")
        elif g.startswith("/") or ".." in g.split("/"):
            problems.append(f"artifacts: {g!r} must be relative to the task's cwd, "
                            "without '..'")
    return problems


def check_inputs(inputs: list[tuple[str, str]]) -> list[str]:
    """Problems with a spec's (artifact id, relative path) inputs."""
    if len(inputs) > MAX_GLOBS:
        return [f"inputs: at most {MAX_GLOBS} files, got {len(inputs)}"]
    problems = []
    for artifact_id, path in inputs:
        if not artifact_id or len(artifact_id) > 128 or not artifact_id.isascii():
            problems.append(f"inputs: {artifact_id!r} is not an artifact id")
        try:
            check_name(path)
        except InvalidArgument as exc:
            problems.append(f"inputs: {exc}")
    return problems
