"""The client side of ArtifactService, shared by the SDK and the node agent.

Uploads send 64 KiB messages (the measured best, docs/artifacts.md) pulled by gRPC as
HTTP/2 flow control allows, so memory stays bounded by the window; after a broken
connection they ask QueryWriteStatus how far the hub got and resend from there.
Downloads write to ``<dest>.part`` and resume from its size; the file appears under its
name only after its sha256 matched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from cortex._proto.cortex.v1 import artifacts_pb2 as apb
from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.core.artifacts import CHUNK_BYTES
from cortex.errors import (
    Conflict,
    CortexError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RemoteError,
    Unavailable,
)

if TYPE_CHECKING:
    from cortex._proto.cortex.v1.artifacts_pb2_grpc import ArtifactServiceAsyncStub as Stub

__all__ = ["Progress", "download", "error", "upload", "upload_growing"]

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes in all; -1 while unknown) as a transfer advances."""
Metadata = tuple[tuple[str, str], ...]

_RETRY = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED})
_GROW_POLL_S = 0.05
_BY_CODE: dict[grpc.StatusCode, type[CortexError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
}


def error(exc: grpc.aio.AioRpcError) -> CortexError:
    """The CortexError for a failed artifact call."""
    cls = _BY_CODE.get(exc.code(), Unavailable if exc.code() in _RETRY else RemoteError)
    return cls(exc.details() or exc.code().name)


def _transient(exc: grpc.aio.AioRpcError) -> bool:
    # grpc.aio reports some broken connections as INTERNAL "Internal error from Core"
    # (measured, /work notes); the hub's own INTERNAL answers carry other details.
    return exc.code() in _RETRY or (exc.code() == grpc.StatusCode.INTERNAL
                                    and "from Core" in (exc.details() or ""))


class _Retry:
    """Retry transient failures until `budget_s` passes without progress."""

    def __init__(self, budget_s: float) -> None:
        self._budget = budget_s
        self._since = time.monotonic()
        self._delay = 0.1

    def progressed(self) -> None:
        self._since, self._delay = time.monotonic(), 0.1

    async def wait(self, exc: grpc.aio.AioRpcError) -> None:
        if not _transient(exc) or time.monotonic() - self._since > self._budget:
            raise error(exc) from exc
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, 2.0)


def _size_and_digest(path: Path) -> tuple[int, str]:
    return path.stat().st_size, sha256_file(path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


async def upload(stub: Stub, path: Path, *,
                 metadata: Metadata = (), task_id: str = "", name: str = "",
                 media_type: str = "", ttl_s: float = 0.0, progress: Progress | None = None,
                 retry_s: float = 60.0) -> pb.File:
    """Upload a finished file (its digest first, so the hub can dedupe); resumes after
    broken connections for up to `retry_s` without progress."""
    size, digest = await asyncio.to_thread(_size_and_digest, path)
    header = apb.WriteHeader(task_id=task_id, name=name or path.name, size=size,
                             sha256=digest, ttl_s=ttl_s,
                             media_type=media_type or _media_type(name or path.name))
    return await _upload(stub, path, header, metadata, progress, retry_s, None,
                         _upload_id(header))


async def upload_growing(stub: Stub, path: Path,
                         finished: asyncio.Event, *, metadata: Metadata = (),
                         task_id: str = "", name: str = "", media_type: str = "",
                         ttl_s: float = 0.0, progress: Progress | None = None,
                         retry_s: float = 60.0) -> pb.File:
    """Stream a file while something still appends to it (a video being recorded); once
    `finished` is set and the end is reached, the upload completes with its digest."""
    header = apb.WriteHeader(task_id=task_id, name=name or path.name, size=-1, ttl_s=ttl_s,
                             media_type=media_type or _media_type(name or path.name))
    return await _upload(stub, path, header, metadata, progress, retry_s, finished,
                         uuid.uuid4().hex)


def _upload_id(header: apb.WriteHeader) -> str:
    """Derived from what is uploaded, so a process that died mid-upload and runs again
    (a restarted node, a re-run CLI) resumes where the hub got to instead of restarting."""
    key = "\0".join((header.task_id, header.name, str(header.size), header.sha256,
                     header.media_type, repr(header.ttl_s)))
    return hashlib.sha256(key.encode()).hexdigest()[:40]


async def _upload(stub: Stub, path: Path,
                  header: apb.WriteHeader, metadata: Metadata, progress: Progress | None,
                  retry_s: float, finished: asyncio.Event | None, upload_id: str
                  ) -> pb.File:
    retry = _Retry(retry_s)
    status = await _query(stub, upload_id, metadata, retry)  # a previous run's bytes
    if status.complete:
        return status.file
    offset = status.committed_size
    while True:
        # Only a growing file's digest is computed while sending (the hub needs it at the
        # end); after a cut it is rebuilt from the bytes the hub already holds.
        hasher = None
        if not header.sha256:
            hasher = await asyncio.to_thread(_hash_prefix, path, offset)
        try:
            resp = await stub.Write(
                _requests(path, upload_id, header, offset, hasher, progress, finished),
                metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            await retry.wait(exc)
            status = await _query(stub, upload_id, metadata, retry)
            if status.complete:
                return status.file
            if status.committed_size > offset:
                retry.progressed()
            offset = status.committed_size
            continue
        if resp.complete:
            if progress is not None:
                progress(resp.file.size, resp.file.size)
            return resp.file
        offset = resp.committed_size   # the hub stopped early: carry on from what it has


async def _query(stub: Stub, upload_id: str,
                 metadata: Metadata, retry: _Retry) -> apb.WriteResponse:
    while True:
        try:
            return await stub.QueryWriteStatus(
                apb.QueryWriteStatusRequest(upload_id=upload_id), metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return apb.WriteResponse(committed_size=0)
            await retry.wait(exc)


def _hash_prefix(path: Path, size: int) -> hashlib._Hash:
    h = hashlib.sha256()
    with path.open("rb") as f:
        remaining = size
        while remaining:
            block = f.read(min(remaining, 1 << 20))
            if not block:
                raise InvalidArgument(f"{path} shrank below {size} bytes during the upload")
            h.update(block)
            remaining -= len(block)
    return h


async def _requests(path: Path, upload_id: str, header: apb.WriteHeader, offset: int,
                    hasher: hashlib._Hash | None, progress: Progress | None,
                    finished: asyncio.Event | None) -> AsyncIterator[apb.WriteRequest]:
    total = header.size
    with path.open("rb") as f:
        f.seek(offset)
        yield apb.WriteRequest(upload_id=upload_id, header=header, write_offset=offset)
        while True:
            block = f.read(CHUNK_BYTES)
            if block:
                if hasher is not None:
                    hasher.update(block)
                yield apb.WriteRequest(upload_id=upload_id, write_offset=offset, data=block)
                offset += len(block)
                if progress is not None:
                    progress(offset, total)
                continue
            if finished is not None and not finished.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_GROW_POLL_S):
                        await finished.wait()
                continue
            if finished is not None and os.fstat(f.fileno()).st_size > offset:
                continue   # it grew between our last read and `finished`: read to the end
            break
        if total >= 0 and offset != total:
            raise InvalidArgument(f"{path} changed size during the upload ({total} -> "
                                  f"{offset} bytes): upload it once it is complete")
        yield apb.WriteRequest(upload_id=upload_id, write_offset=offset, finish_write=True,
                               sha256=hasher.hexdigest() if hasher is not None else "")


async def download(stub: Stub, file: pb.File, dest: Path,
                   *, metadata: Metadata = (), progress: Progress | None = None,
                   resume: bool = True, retry_s: float = 60.0) -> Path:
    """Fetch an artifact to `dest` (via ``dest.part``, resumed if present), verified."""
    part = dest.with_name(dest.name + ".part")
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        offset = os.lseek(fd, 0, os.SEEK_END) if resume else 0
        if offset > file.size:
            offset = 0
        os.ftruncate(fd, offset)
        hasher = await asyncio.to_thread(_hash_prefix, part, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        retry = _Retry(retry_s)
        while offset < file.size or file.size == 0:
            try:
                call = stub.Read(apb.ReadRequest(artifact_id=file.artifact_id,
                                                 read_offset=offset), metadata=metadata)
                async for chunk in call:
                    _write_all(fd, chunk.data)
                    hasher.update(chunk.data)
                    offset += len(chunk.data)
                    retry.progressed()
                    if progress is not None:
                        progress(offset, file.size)
                break
            except grpc.aio.AioRpcError as exc:
                await retry.wait(exc)
        os.fsync(fd)
    finally:
        os.close(fd)
    if offset != file.size or hasher.hexdigest() != file.sha256:
        part.unlink(missing_ok=True)
        raise RemoteError(f"{file.name}: received {offset} bytes with sha256 "
                          f"{hasher.hexdigest()}, expected {file.size} with {file.sha256}; "
                          "the partial file was removed, download again")
    os.replace(part, dest)
    return dest


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _media_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
