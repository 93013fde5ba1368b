"""The hub's artifact manager: uploads (resumable, verified), reads, listing, quota, GC.

An upload is keyed by its tenant and the client's upload id, so one tenant can never see
or extend another's. Bytes the hub has written to the part file are `committed`; a Write
stream that breaks leaves them there and the client resumes from QueryWriteStatus.
Content is verified against the declared sha256 before the part becomes a blob.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import mimetypes
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from cortex._proto.cortex.v1 import artifacts_pb2 as apb
from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.core.artifacts import (
    CHUNK_BYTES,
    check_chunk,
    check_name,
    check_quota,
    check_upload_id,
    expiry,
)
from cortex.errors import InvalidArgument, NotFound, RemoteError, Unavailable
from cortex.hub.blobs import BlobStore, PartFile
from cortex.hub.ids import new_id
from cortex.store.base import Store

__all__ = ["ArtifactLimits", "ArtifactManager", "GcReport"]

log = logging.getLogger("cortex.hub")
_LOCK_WAIT_S = 30.0
_QUOTA_RECHECK = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ArtifactLimits:
    quota_bytes: int = 100 * 1024**3        # per tenant; 0 = unlimited
    default_ttl_s: float = 30 * 86400.0     # retention when an upload names none; 0 = keep
    upload_ttl_s: float = 86400.0           # an unfinished upload is dropped after this
    gc_grace_s: float = 3600.0              # unreferenced blobs younger than this are kept


@dataclass(frozen=True, slots=True)
class GcReport:
    expired: int
    blobs_deleted: int
    bytes_freed: int
    uploads_swept: int


@dataclass(eq=False)
class _Upload:
    key: str
    header: apb.WriteHeader
    hasher: hashlib._Hash | None = None     # over the first `hashed` bytes of the part
    hashed: int = 0
    file: pb.File | None = None              # set once complete
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ArtifactManager:
    def __init__(self, store: Store, blobs: BlobStore, limits: ArtifactLimits,
                 clock: Callable[[], float]) -> None:
        self._store = store
        self._blobs = blobs
        self._limits = limits
        self._clock = clock
        self._uploads: dict[str, _Upload] = {}
        self._gc_lock = asyncio.Lock()    # commits and GC sweeps never interleave

    # -- uploads in progress (the dashboard's live view) -----------------------------------
    def growing(self, tenant: str) -> list[tuple[str, apb.WriteHeader]]:
        """The tenant's unfinished uploads of unknown size on this hub (recordings being
        streamed): (key, header) each."""
        prefix = _key(tenant, "")
        return [(key, up.header) for key, up in self._uploads.items()
                if key.startswith(prefix) and up.file is None and up.header.size < 0]

    def open_growing(self, key: str) -> BinaryIO | None:
        """The bytes received so far of an upload `growing` listed (None once gone)."""
        return self._blobs.read_part(key)

    # -- writing ---------------------------------------------------------------------------
    async def write(self, tenant: str, requests: AsyncIterator[apb.WriteRequest]
                    ) -> apb.WriteResponse:
        it = aiter(requests)
        try:
            first = await anext(it)
        except StopAsyncIteration:
            raise InvalidArgument("Write: the stream was empty; the first message names "
                                  "the upload (upload_id and header)") from None
        up = await self._upload(tenant, first)
        try:
            async with asyncio.timeout(_LOCK_WAIT_S):
                await up.lock.acquire()
        except TimeoutError:
            raise Unavailable("another stream is still writing this upload: retry in a "
                              "moment") from None
        try:
            if up.file is not None:
                if await self._store.get_artifact(tenant, up.file.artifact_id) is not None:
                    return _done(up.file)   # the same upload again: idempotent
                up = self._restart(up)      # its artifact was deleted since: store anew
            deduped = await self._dedupe(tenant, up)
            if deduped is not None:
                return deduped
            return await self._receive(tenant, up, first, it)
        finally:
            up.lock.release()

    async def query(self, tenant: str, upload_id: str) -> apb.WriteResponse:
        key = _key(tenant, check_upload_id(upload_id))
        up = self._uploads.get(key) or self._load(key)
        if up is None:
            raise NotFound(f"no upload {upload_id} on this hub (finished over a day ago, "
                           "never started, or of another tenant): start a new upload")
        if up.file is not None and \
                await self._store.get_artifact(tenant, up.file.artifact_id) is not None:
            return _done(up.file)
        if up.file is not None:
            return apb.WriteResponse(committed_size=0)
        part = self._blobs.open_part(key)
        try:
            return apb.WriteResponse(committed_size=part.size)
        finally:
            part.close()

    async def _upload(self, tenant: str, first: apb.WriteRequest) -> _Upload:
        key = _key(tenant, check_upload_id(first.upload_id))
        up = self._uploads.get(key) or self._load(key)
        if up is not None:
            if first.HasField("header") and _normalized(first.header) != up.header:
                raise InvalidArgument(f"upload {first.upload_id} was started with another "
                                      "header: resume with the same one or pick a new id")
            return up
        if not first.HasField("header"):
            raise NotFound(f"no upload {first.upload_id}: its first message needs a header")
        header = await self._check_header(tenant, first.header)
        up = _Upload(key, header)
        self._blobs.save_meta(key, _meta(header, None))
        self._uploads[key] = up
        return up

    async def _check_header(self, tenant: str, h: apb.WriteHeader) -> apb.WriteHeader:
        checked = _normalized(h)
        check_name(h.name)
        if len(checked.media_type) > 255:
            raise InvalidArgument("media_type: at most 255 characters")
        if h.size < -1:
            raise InvalidArgument("size: the byte count, or -1 when not known yet")
        if h.sha256:
            _check_digest(h.sha256)
        expiry(now=0.0, ttl_s=h.ttl_s, default_ttl_s=0.0)
        if h.task_id and await self._store.get_task(tenant, h.task_id) is None:
            raise NotFound(f"no task {h.task_id}: artifacts attach to a task of your tenant")
        if h.size > 0:
            check_quota(used=await self._store.artifact_bytes(tenant), adding=h.size,
                        quota=self._limits.quota_bytes)
        return checked

    def _load(self, key: str) -> _Upload | None:
        body = self._blobs.load_meta(key)
        if body is None:
            return None
        meta = json.loads(body)
        header = apb.WriteHeader.FromString(bytes.fromhex(meta["header"]))
        up = _Upload(key, header)
        if meta.get("file"):
            up.file = pb.File.FromString(bytes.fromhex(meta["file"]))
        else:
            self._uploads[key] = up   # in progress: one _Upload (and lock) per upload
        return up

    async def _dedupe(self, tenant: str, up: _Upload) -> apb.WriteResponse | None:
        h = up.header
        if not h.sha256 or h.size < 0 or self._blobs.size(h.sha256) != h.size:
            return None
        if not await self._store.tenant_has_digest(tenant, h.sha256):
            return None   # proof of possession: another tenant's content needs its bytes
        async with self._gc_lock:
            self._blobs.touch(h.sha256)
            self._blobs.discard(up.key)
            return _done(await self._record(tenant, up, h.sha256, h.size))

    async def _receive(self, tenant: str, up: _Upload, first: apb.WriteRequest,
                       rest: AsyncIterator[apb.WriteRequest]) -> apb.WriteResponse:
        part = self._blobs.open_part(up.key)
        try:
            hasher = self._hasher(up, part.size)
            used = await self._store.artifact_bytes(tenant)
            checked_at = part.size
            req: apb.WriteRequest | None = first
            while req is not None:
                if req.upload_id != first.upload_id:
                    raise InvalidArgument(
                        f"a chunk for upload {req.upload_id!r} arrived on the stream of "
                        f"{first.upload_id!r}: one stream carries one upload")
                check_chunk(offset=req.write_offset, committed=part.size,
                            length=len(req.data), declared=up.header.size)
                if part.size + len(req.data) - checked_at > _QUOTA_RECHECK or \
                        req.finish_write:
                    checked_at = part.size
                    self._check_quota(up, used, part.size + len(req.data))
                if req.data:
                    part.write(req.data)
                    hasher.update(req.data)
                    up.hashed = part.size
                if req.finish_write:
                    return _done(await self._finish(tenant, up, part, hasher, req.sha256))
                req = await anext(rest, None)
            return apb.WriteResponse(committed_size=part.size)
        finally:
            part.close()

    def _check_quota(self, up: _Upload, used: int, size: int) -> None:
        try:
            check_quota(used=used, adding=size, quota=self._limits.quota_bytes)
        except Exception:
            self._forget(up)
            raise

    def _hasher(self, up: _Upload, size: int) -> hashlib._Hash:
        if up.hasher is not None and up.hashed == size:
            return up.hasher
        hasher = hashlib.sha256()
        f = self._blobs.read_part(up.key)
        if f is not None:
            with f:
                remaining = size
                while remaining:
                    block = f.read(min(remaining, 1 << 20))
                    if not block:
                        break
                    hasher.update(block)
                    remaining -= len(block)
        up.hasher, up.hashed = hasher, size
        return hasher

    async def _finish(self, tenant: str, up: _Upload, part_file: PartFile,
                      hasher: hashlib._Hash, trailer: str) -> pb.File:
        size = part_file.size
        h = up.header
        if h.size >= 0 and size != h.size:
            raise InvalidArgument(
                f"the upload ended at {size} bytes but its header declared {h.size}: send "
                f"the rest from write_offset {size}")
        digest = hasher.hexdigest()
        expected = h.sha256 or (_check_digest(trailer) if trailer else "")
        if not expected:
            raise InvalidArgument("finish_write needs the sha256 (in the header or on the "
                                  "finishing message)")
        if expected != digest:
            self._forget(up)
            raise InvalidArgument(
                f"sha256 mismatch: expected {expected}, the hub received {digest} "
                f"({size} bytes); nothing was stored, upload again")
        await asyncio.to_thread(part_file.sync)
        part_file.close()
        async with self._gc_lock:
            await asyncio.to_thread(self._blobs.commit, up.key, digest)
            return await self._record(tenant, up, digest, size)

    async def _record(self, tenant: str, up: _Upload, digest: str, size: int) -> pb.File:
        h, now = up.header, self._clock()
        file = pb.File(artifact_id=new_id("a"), name=h.name, size=size, sha256=digest,
                       media_type=h.media_type, task_id=h.task_id, created_at=now,
                       expires_at=expiry(now=now, ttl_s=h.ttl_s,
                                         default_ttl_s=self._limits.default_ttl_s))
        await self._store.insert_artifact(tenant, file)
        up.file, up.hasher = file, None
        self._blobs.save_meta(up.key, _meta(h, file))
        # Done: the meta file answers repeats; streams already waiting hold `up` itself.
        self._uploads.pop(up.key, None)
        return file

    def _restart(self, up: _Upload) -> _Upload:
        self._forget(up)
        fresh = _Upload(up.key, up.header)
        fresh.lock = up.lock   # held by the caller
        self._blobs.save_meta(up.key, _meta(up.header, None))
        self._uploads[up.key] = fresh
        return fresh

    def _forget(self, up: _Upload) -> None:
        self._blobs.discard(up.key)
        self._uploads.pop(up.key, None)

    # -- reading and metadata ---------------------------------------------------------------
    async def stat(self, tenant: str, artifact_id: str) -> pb.File:
        file = await self._store.get_artifact(tenant, _artifact_id(artifact_id))
        if file is None:
            raise NotFound(f"no artifact {artifact_id} (list them with cortex artifacts ls)")
        return file

    async def read(self, tenant: str, artifact_id: str, *, offset: int, limit: int
                   ) -> AsyncIterator[apb.ReadResponse]:
        file = await self.stat(tenant, artifact_id)
        if offset < 0 or offset > file.size:
            raise InvalidArgument(f"read_offset {offset} is outside the artifact's "
                                  f"{file.size} bytes")
        if limit < 0:
            raise InvalidArgument("read_limit: 0 (to the end) or a positive byte count")
        end = file.size if limit == 0 else min(file.size, offset + limit)
        verify = offset == 0 and end == file.size
        hasher = hashlib.sha256()
        with self._blobs.open_blob(file.sha256) as f:
            f.seek(offset)
            pos = offset
            while pos < end:
                block = f.read(min(CHUNK_BYTES, end - pos))
                if not block:
                    break
                if verify:
                    hasher.update(block)
                yield apb.ReadResponse(offset=pos, data=block)
                pos += len(block)
        if pos != end or (verify and hasher.hexdigest() != file.sha256):
            self._blobs.quarantine(file.sha256)
            log.error("blob %s is corrupt; quarantined", file.sha256)
            raise RemoteError(f"artifact {artifact_id} is corrupt on the hub (its content "
                              "no longer matches its sha256); it was quarantined")

    async def list(self, tenant: str, *, task_id: str, limit: int, after_id: str
                   ) -> list[pb.File]:
        return await self._store.list_artifacts(tenant, task_id=task_id, limit=limit,
                                                after_id=after_id)

    async def delete(self, tenant: str, artifact_id: str) -> None:
        if not await self._store.delete_artifact(tenant, _artifact_id(artifact_id)):
            raise NotFound(f"no artifact {artifact_id} (list them with cortex artifacts ls)")

    # -- garbage collection -----------------------------------------------------------------
    async def gc(self) -> GcReport:
        """Drop expired artifacts, blobs nothing references, and stale uploads."""
        now = self._clock()
        expired = await self._store.expire_artifacts_all_tenants(now=now)
        deleted = freed = 0
        async with self._gc_lock:
            keep = await self._store.artifact_digests_all_tenants()
            for digest, mtime in list(self._blobs.blobs()):
                if digest in keep or mtime > now - self._limits.gc_grace_s:
                    continue
                freed += self._blobs.size(digest) or 0
                self._blobs.delete(digest)
                deleted += 1
        swept = self._blobs.sweep_uploads(older_than=now - self._limits.upload_ttl_s)
        for key, up in list(self._uploads.items()):
            if not up.lock.locked() and self._blobs.load_meta(key) is None:
                del self._uploads[key]   # swept: forget the abandoned upload here too
        report = GcReport(expired, deleted, freed, swept)
        if expired or deleted or swept:
            log.info("artifact gc: %s", report)
        return report


def _normalized(h: apb.WriteHeader) -> apb.WriteHeader:
    """The header as the hub stores it (media type filled in from the name)."""
    out = apb.WriteHeader()
    out.CopyFrom(h)
    out.media_type = h.media_type or mimetypes.guess_type(h.name)[0] \
        or "application/octet-stream"
    return out


def _key(tenant: str, upload_id: str) -> str:
    return f"{hashlib.sha256(tenant.encode()).hexdigest()[:16]}-{upload_id}"


def _meta(header: apb.WriteHeader, file: pb.File | None) -> bytes:
    return json.dumps({"header": header.SerializeToString().hex(),
                       "file": file.SerializeToString().hex() if file else ""}).encode()


def _done(file: pb.File) -> apb.WriteResponse:
    return apb.WriteResponse(committed_size=file.size, complete=True, file=file)


def _check_digest(value: str) -> str:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InvalidArgument(f"sha256 must be 64 lowercase hex digits, not {value[:80]!r}")
    return value


def _artifact_id(value: str) -> str:
    if not value or len(value) > 128 or not value.isascii():
        raise InvalidArgument("artifact_id: give an id such as a-0123456789abcdefghij")
    return value
