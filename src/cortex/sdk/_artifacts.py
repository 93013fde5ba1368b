"""Artifact methods of the async `Client`: upload, download (resumable, verified), list,
stat, delete. Progress callbacks get (bytes done, bytes in all)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from cortex import _transfer
from cortex._proto.cortex.v1 import artifacts_pb2 as apb
from cortex._proto.cortex.v1 import artifacts_pb2_grpc, common_pb2
from cortex.sdk._config import ClientConfig
from cortex.sdk._errors import translate

if TYPE_CHECKING:
    from cortex._proto.cortex.v1.artifacts_pb2_grpc import ArtifactServiceAsyncStub

__all__ = ["ArtifactMethods", "Progress"]

Progress = _transfer.Progress
File = common_pb2.File


class ArtifactMethods:
    """Mixed into `Client`; relies on its channel, metadata and config."""

    _config: ClientConfig
    _metadata: tuple[tuple[str, str], ...]
    _channel: grpc.aio.Channel | None

    def _stub(self) -> object:
        raise NotImplementedError

    def _artifact_stub(self) -> ArtifactServiceAsyncStub:
        self._stub()   # opens the channel
        if self._channel is None:
            raise RuntimeError("the client channel did not open")
        return artifacts_pb2_grpc.ArtifactServiceStub(self._channel)

    async def upload_artifact(
        self, path: str | Path, *, task_id: str = "", name: str = "", media_type: str = "",
        ttl_s: float = 0.0, progress: Progress | None = None, retry_s: float = 60.0,
    ) -> common_pb2.File:
        """Upload a local file as an artifact (of `task_id` if given); identical content
        is stored once. Resumes after a broken connection for up to `retry_s` idle s."""
        return await _transfer.upload(
            self._artifact_stub(), Path(path), metadata=self._metadata, task_id=task_id,
            name=name, media_type=media_type, ttl_s=ttl_s, progress=progress,
            retry_s=retry_s)

    async def download_artifact(
        self, artifact: common_pb2.File | str, dest: str | Path, *,
        progress: Progress | None = None, resume: bool = True, retry_s: float = 60.0,
    ) -> Path:
        """Fetch an artifact (a `File` from a task's result, or its id) to `dest`; a
        directory `dest` gets the artifact's base name. Verified by sha256; a partial
        ``<dest>.part`` from an interrupted download is resumed."""
        file = artifact if isinstance(artifact, File) else await self.stat_artifact(artifact)
        target = Path(dest)
        if await asyncio.to_thread(target.is_dir):
            target = target / Path(file.name).name
        return await _transfer.download(
            self._artifact_stub(), file, target, metadata=self._metadata,
            progress=progress, resume=resume, retry_s=retry_s)

    async def stat_artifact(self, artifact_id: str) -> common_pb2.File:
        try:
            return await self._artifact_stub().Stat(
                apb.StatArtifactRequest(artifact_id=artifact_id),
                timeout=self._config.call_timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            raise translate(e, address=self._config.address) from e

    async def list_artifacts(self, task_id: str = "") -> list[common_pb2.File]:
        """Every artifact of a task (or of the tenant when task_id is empty)."""
        return [f async for f in self.iter_artifacts(task_id)]

    async def iter_artifacts(self, task_id: str = "") -> AsyncIterator[common_pb2.File]:
        token = ""
        while True:
            try:
                page = await self._artifact_stub().List(
                    apb.ListArtifactsRequest(task_id=task_id, limit=1000, page_token=token),
                    timeout=self._config.call_timeout, metadata=self._metadata)
            except grpc.aio.AioRpcError as e:
                raise translate(e, address=self._config.address) from e
            for f in page.files:
                yield f
            token = page.next_page_token
            if not token:
                return

    async def delete_artifact(self, artifact_id: str) -> None:
        """Forget an artifact; its content goes at the next GC once nothing refers to it."""
        try:
            await self._artifact_stub().Delete(
                apb.DeleteArtifactRequest(artifact_id=artifact_id),
                timeout=self._config.call_timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            raise translate(e, address=self._config.address) from e
