"""The node's side of artifacts: upload a task's outputs, publish a (growing) file as an
artifact of the current task, download inputs. Everything goes over the node's own mTLS
identity to the hub's node port, so a node acts for its own tenant only.

Reusable by skills and workers running in the agent (e.g. the browser's video)::

    artifacts = NodeArtifacts(identity)
    file = await artifacts.upload_file(path, task_id=task_id, name="video.webm")
    file = await artifacts.upload_growing(path, recording_done, task_id=task_id)
"""

from __future__ import annotations

import asyncio
import contextlib
import glob as globlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from cortex import _transfer
from cortex._dial import balanced_target
from cortex._proto.cortex.v1 import artifacts_pb2 as apb
from cortex._proto.cortex.v1 import artifacts_pb2_grpc
from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.core.addresses import parse_addresses
from cortex.core.artifacts import check_artifact_globs, check_name
from cortex.errors import CortexError, InvalidArgument, PermissionDenied
from cortex.node.identity import HUB_SERVER_NAME, Identity

__all__ = ["NodeArtifacts", "resolve_outputs"]

_MAX_MESSAGE = 4 * 1024 * 1024
MAX_OUTPUT_FILES = 1000


def resolve_outputs(cwd: Path, globs: list[str]) -> list[tuple[Path, str]]:
    """(path, artifact name) of each regular file the globs match under `cwd`, in order.

    Names are relative to `cwd`. A match that resolves outside `cwd` (a symlink out of
    it) is refused with PermissionDenied naming it; directories are skipped.
    """
    problems = check_artifact_globs(globs)
    if problems:
        raise InvalidArgument("; ".join(problems))
    root = cwd.resolve()
    found: dict[str, Path] = {}
    for pattern in globs:
        for match in sorted(globlib.glob(pattern, root_dir=root, recursive=True)):
            path = root / match
            real = path.resolve()
            if not real.is_relative_to(root):
                raise PermissionDenied(f"artifact {match!r} resolves to {real}, outside the "
                                       f"task's directory {root}: not uploaded")
            if real.is_file() and match not in found:
                found[Path(match).as_posix()] = real
            if len(found) > MAX_OUTPUT_FILES:
                raise InvalidArgument(f"the artifact globs match more than "
                                      f"{MAX_OUTPUT_FILES} files: narrow them or archive "
                                      "the files into one")
    return [(p, name) for name, p in found.items()]


class NodeArtifacts:
    """Artifact transfers of one node; each call uses a short-lived mTLS channel."""

    def __init__(self, identity: Identity, *, retry_s: float = 60.0) -> None:
        self._id = identity
        self._retry_s = retry_s

    @contextlib.asynccontextmanager
    async def _stub(self) -> AsyncIterator[artifacts_pb2_grpc.ArtifactServiceAsyncStub]:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self._id.ca_pem, private_key=self._id.key_pem,
            certificate_chain=self._id.cert_pem)
        # Several hub addresses: round robin over those that answer (cortex._dial).
        target, balancing = balanced_target(parse_addresses(self._id.node_address))
        async with grpc.aio.secure_channel(target, creds, options=[
            *balancing,
            ("grpc.ssl_target_name_override", HUB_SERVER_NAME),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
        ]) as channel:
            yield artifacts_pb2_grpc.ArtifactServiceStub(channel)

    async def upload_file(self, path: Path, *, task_id: str = "", name: str = "",
                          media_type: str = "", progress: _transfer.Progress | None = None
                          ) -> pb.File:
        """Publish a finished file as an artifact (of `task_id` when given)."""
        async with self._stub() as stub:
            return await _transfer.upload(stub, path, task_id=task_id, name=name,
                                          media_type=media_type, progress=progress,
                                          retry_s=self._retry_s)

    async def upload_growing(self, path: Path, finished: asyncio.Event, *, task_id: str = "",
                             name: str = "", media_type: str = "") -> pb.File:
        """Publish a file while it grows; completes once `finished` is set and read out."""
        async with self._stub() as stub:
            return await _transfer.upload_growing(stub, path, finished, task_id=task_id,
                                                  name=name, media_type=media_type,
                                                  retry_s=self._retry_s)

    async def upload_outputs(self, task_id: str, cwd: Path, globs: list[str]
                             ) -> list[pb.File]:
        """Upload what a task's output globs match (see `resolve_outputs`)."""
        matches = await asyncio.to_thread(resolve_outputs, cwd, globs)
        files = []
        for path, name in matches:
            files.append(await self.upload_file(path, task_id=task_id, name=name))
        return files

    async def fetch_inputs(self, spec: pb.TaskSpec) -> str:
        """Download a task's inputs into its cwd; what went wrong ("" when nothing)."""
        try:
            await self.download_inputs(_cwd(spec), [(i.artifact_id, i.path)
                                                    for i in spec.inputs])
        except CortexError as exc:
            return f"downloading inputs failed: {exc}"
        return ""

    async def store_outputs(self, task_id: str, spec: pb.TaskSpec) -> str:
        """Upload what a task's output globs match; a note for the task's output ("" when
        all went well), starting with "uploading" when the upload failed."""
        try:
            files = await self.upload_outputs(task_id, _cwd(spec), list(spec.artifacts))
        except CortexError as exc:
            return f"uploading artifacts failed: {exc}"
        return "" if files else "no file matched the artifact globs"

    async def download_inputs(self, cwd: Path, inputs: list[tuple[str, str]]) -> None:
        """Fetch (artifact id, relative path) inputs into `cwd`; a path that would land
        outside it (through '..' or a symlinked directory) is refused."""
        root = await asyncio.to_thread(cwd.resolve)
        for artifact_id, rel in inputs:
            check_name(rel)
            dest = root / rel
            # Checked before creating anything: a symlinked directory must not lead out.
            parent = Path(await asyncio.to_thread(os.path.realpath, dest.parent))
            if not parent.is_relative_to(root):
                raise PermissionDenied(f"input {rel!r} would land in {parent}, outside the "
                                       f"task's directory {root}")
            await asyncio.to_thread(parent.mkdir, parents=True, exist_ok=True)
            await self.download(artifact_id, parent / dest.name)

    async def download(self, artifact_id: str, dest: Path) -> Path:
        """Fetch an artifact of this node's tenant to `dest` (verified, resumable)."""
        async with self._stub() as stub:
            try:
                file = await stub.Stat(apb.StatArtifactRequest(artifact_id=artifact_id))
            except grpc.aio.AioRpcError as exc:
                raise _transfer.error(exc) from exc
            os.makedirs(dest.parent, exist_ok=True)
            return await _transfer.download(stub, file, dest, retry_s=self._retry_s)

    async def stat(self, artifact_id: str) -> pb.File:
        """An artifact's record (name, size, digest) from the hub."""
        async with self._stub() as stub:
            try:
                file: pb.File = await stub.Stat(apb.StatArtifactRequest(artifact_id=artifact_id))
            except grpc.aio.AioRpcError as exc:
                raise _transfer.error(exc) from exc
            return file


def _cwd(spec: pb.TaskSpec) -> Path:
    return Path(spec.shell.cwd or os.getcwd())
