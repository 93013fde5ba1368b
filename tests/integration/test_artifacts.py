"""Artifacts end to end on a real hub (both store backends) and node over loopback TLS:
round trips, dedupe, task outputs, resume after a cut connection, GC, and every bad
input of issue #5 answered with a precise error and nothing half-stored."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from cortex._proto.cortex.v1 import artifacts_pb2 as apb
from cortex._proto.cortex.v1 import artifacts_pb2_grpc
from cortex.errors import Conflict, InvalidArgument, NotFound, RemoteError, Unavailable
from cortex.hub.auth import issue_api_token
from cortex.hub.blobs import PartFile
from cortex.hub.server import Hub
from cortex.node.agent import Agent
from cortex.sdk import Client, ClientConfig, TaskState
from cortex.testing import running_hub

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

CHUNK = 64 * 1024


def make_file(path: Path, size: int, seed: int = 1) -> str:
    """Write `size` pseudo-random bytes; returns their sha256."""
    block = hashlib.sha256(str(seed).encode()).digest() * (CHUNK // 32)
    h = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            part = block[:min(left, len(block))]
            f.write(part)
            h.update(part)
            left -= len(part)
    return h.hexdigest()


def client_config(hub: Hub, token: str | None = None) -> ClientConfig:
    assert hub.ca is not None
    return ClientConfig(address=hub.address, token=token or hub.admin_token,
                        ca_pem=hub.ca.cert_pem)


def blobs_on_disk(hub: Hub) -> list[Path]:
    return [p for p in (hub.config.artifact_root / "cas").rglob("*") if p.is_file()]


def stub(channel: grpc.aio.Channel) -> artifacts_pb2_grpc.ArtifactServiceAsyncStub:
    return artifacts_pb2_grpc.ArtifactServiceStub(channel)  # type: ignore[return-value]


async def write(raw: grpc.aio.Channel, hub: Hub, *requests: apb.WriteRequest
                ) -> apb.WriteResponse:
    async def gen() -> AsyncIterator[apb.WriteRequest]:
        for r in requests:
            yield r

    md = (("authorization", f"Bearer {hub.admin_token}"),)
    return await stub(raw).Write(gen(), metadata=md)


def header(data: bytes, *, name: str = "f.bin", sha: str | None = None,
           size: int | None = None) -> apb.WriteHeader:
    return apb.WriteHeader(name=name, size=len(data) if size is None else size,
                           sha256=hashlib.sha256(data).hexdigest() if sha is None else sha)


# -- round trips ------------------------------------------------------------------------------

async def test_upload_download_round_trip_and_dedupe(client: Client, hub: Hub,
                                                      tmp_path: Path) -> None:
    """A file comes back byte for byte; identical content is stored as one blob; the
    metadata lists, stats and deletes per artifact."""
    src = tmp_path / "data.bin"
    digest = make_file(src, 3 * CHUNK + 17)
    seen: list[tuple[int, int]] = []
    first = await client.upload_artifact(src, name="out/data.bin",
                                         progress=lambda d, t: seen.append((d, t)))
    second = await client.upload_artifact(src, name="copy.bin")
    assert first.sha256 == second.sha256 == digest
    assert first.artifact_id != second.artifact_id
    assert len(blobs_on_disk(hub)) == 1
    assert seen[-1] == (src.stat().st_size, src.stat().st_size)
    (tmp_path / "dl").mkdir()
    dest = await client.download_artifact(first, tmp_path / "dl")
    assert dest == tmp_path / "dl" / "data.bin"
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    ids = {f.artifact_id for f in await client.list_artifacts()}
    assert ids == {first.artifact_id, second.artifact_id}
    assert (await client.stat_artifact(second.artifact_id)).name == "copy.bin"
    await client.delete_artifact(first.artifact_id)
    with pytest.raises(NotFound):
        await client.stat_artifact(first.artifact_id)


async def test_task_outputs_are_uploaded_and_listed_in_the_result(
        client: Client, node: Agent, tmp_path: Path) -> None:
    """`artifacts=[glob]` uploads the matching files after the run; the result lists
    them as Files the client fetches, verified."""
    work = tmp_path / "work"
    work.mkdir()
    script = ("import os; os.makedirs('out', exist_ok=True);"
              "open('out/a.tar.gz','wb').write(b'A'*100000);"
              "open('out/b.txt','w').write('hello'); open('skip.log','w').write('x')")
    result = await client.run(argv=["python3", "-c", script], cwd=str(work),
                              artifacts=["out/*"])
    assert result.ok, result.stderr
    assert sorted(f.name for f in result.files) == ["out/a.tar.gz", "out/b.txt"]
    by_name = {f.name: f for f in result.files}
    assert by_name["out/b.txt"].media_type == "text/plain"
    got = await client.download_artifact(by_name["out/a.tar.gz"], tmp_path / "a.tgz")
    assert got.read_bytes() == b"A" * 100000
    listed = await client.list_artifacts(result.task.id)
    assert {f.artifact_id for f in listed} == {f.artifact_id for f in result.files}


async def test_symlink_escaping_the_task_dir_is_refused(client: Client, node: Agent,
                                                       tmp_path: Path) -> None:
    """An output glob matching a symlink out of the task's directory uploads nothing and
    fails the task, naming the file."""
    work = tmp_path / "work"
    work.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("do not take me")
    (work / "link.txt").symlink_to(secret)
    result = await client.run(argv=["true"], cwd=str(work), artifacts=["*.txt"])
    assert result.task.state == TaskState.FAILED
    assert "outside the task's directory" in result.task.reason
    assert result.files == []


async def test_globs_with_dotdot_or_absolute_paths_are_rejected(client: Client) -> None:
    """Output globs must stay under the task's cwd: '..' and absolute paths fail submit."""
    for bad in ("../x", "/etc/passwd", "a/../../b"):
        with pytest.raises(InvalidArgument, match="relative"):
            await client.submit(argv=["true"], artifacts=[bad])


# -- resume -----------------------------------------------------------------------------------

class CuttingProxy:
    """A TCP proxy that cuts its first connection after `cut_after` bytes upstream."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.cuts = 0
        self.upstream_bytes = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        cut = self.cuts == 0
        sent = 0

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: bool) -> None:
            nonlocal sent
            try:
                while data := await r.read(65536):
                    if up:
                        sent += len(data)
                        self.upstream_bytes += len(data)
                        if cut and sent > self.cut_after:
                            self.cuts += 1
                            raise ConnectionResetError
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                for x in (w, writer, up_w):
                    x.close()

        await asyncio.gather(pump(reader, up_w, True), pump(up_r, writer, False))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_upload_and_download_resume_after_the_connection_is_cut(
        hub: Hub, tmp_path: Path) -> None:
    """A connection cut half way through resumes from the hub's committed size: the
    upload completes with the right digest and re-sends far less than the whole file."""
    size = 32 * 1024 * 1024
    src = tmp_path / "big.bin"
    digest = make_file(src, size, seed=7)
    proxy = CuttingProxy(hub.port, cut_after=size // 2)
    port = await proxy.start()
    try:
        cfg = client_config(hub)
        via = ClientConfig(address=f"127.0.0.1:{port}", token=cfg.token, ca_pem=cfg.ca_pem)
        async with Client(via) as client:
            file = await client.upload_artifact(src)
            assert proxy.cuts == 1
            assert file.sha256 == digest
            # Upstream bytes beyond the file itself: what was re-sent (plus TLS/HTTP/2);
            # the hub may not have consumed what sat in its flow-control window at the cut.
            assert proxy.upstream_bytes < size * 1.5
            proxy.cuts = 0
            proxy.cut_after = size // 3
            got = await client.download_artifact(file, tmp_path / "back.bin")
            assert hashlib.sha256(got.read_bytes()).hexdigest() == digest
    finally:
        await proxy.close()


async def test_download_resumes_a_partial_local_file(client: Client, tmp_path: Path) -> None:
    """A `.part` left by an interrupted download is continued, not restarted."""
    src = tmp_path / "src.bin"
    make_file(src, 5 * CHUNK, seed=3)
    file = await client.upload_artifact(src)
    dest = tmp_path / "dest.bin"
    (tmp_path / "dest.bin.part").write_bytes(src.read_bytes()[:2 * CHUNK])
    done: list[int] = []
    await client.download_artifact(file, dest, progress=lambda d, t: done.append(d))
    assert dest.read_bytes() == src.read_bytes()
    assert done[0] == 3 * CHUNK   # the first chunk received completes the third one
    assert not (tmp_path / "dest.bin.part").exists()


async def test_write_status_after_a_stream_ends_early(raw_channel: grpc.aio.Channel,
                                                      hub: Hub) -> None:
    """A Write that stops before finish_write leaves its bytes committed; the next Write
    continues at that offset and completes."""
    data = os.urandom(3 * CHUNK)
    uid = uuid.uuid4().hex
    h = header(data)
    resp = await write(raw_channel, hub, apb.WriteRequest(
        upload_id=uid, header=h, write_offset=0, data=data[:CHUNK]))
    assert (resp.committed_size, resp.complete) == (CHUNK, False)
    md = (("authorization", f"Bearer {hub.admin_token}"),)
    status = await stub(raw_channel).QueryWriteStatus(
        apb.QueryWriteStatusRequest(upload_id=uid), metadata=md)
    assert status.committed_size == CHUNK
    resp = await write(raw_channel, hub,
                       apb.WriteRequest(upload_id=uid, write_offset=CHUNK, data=data[CHUNK:]),
                       apb.WriteRequest(upload_id=uid, write_offset=len(data),
                                        finish_write=True))
    assert resp.complete
    assert resp.file.sha256 == hashlib.sha256(data).hexdigest()


# -- bad input ----------------------------------------------------------------------------------

async def expect(code: grpc.StatusCode, match: str, coro: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    assert match in (info.value.details() or ""), info.value.details()


async def test_wrong_digest_is_refused_and_nothing_is_stored(raw_channel: grpc.aio.Channel,
                                                             hub: Hub) -> None:
    """Content that does not match the declared sha256 is refused; no blob, no row."""
    data = b"x" * 1000
    uid = uuid.uuid4().hex
    await expect(grpc.StatusCode.INVALID_ARGUMENT, "sha256 mismatch", write(
        raw_channel, hub,
        apb.WriteRequest(upload_id=uid, header=header(data, sha="0" * 64), data=data),
        apb.WriteRequest(upload_id=uid, write_offset=len(data), finish_write=True)))
    assert blobs_on_disk(hub) == []
    assert await hub.store.list_artifacts("default") == []


async def test_truncated_upload_names_the_missing_bytes(raw_channel: grpc.aio.Channel,
                                                        hub: Hub) -> None:
    """Finishing before the declared size is refused with the offset to resume from."""
    data = b"y" * 1000
    uid = uuid.uuid4().hex
    await expect(grpc.StatusCode.INVALID_ARGUMENT, "send the rest from write_offset 500",
                 write(raw_channel, hub,
                       apb.WriteRequest(upload_id=uid, header=header(data), data=data[:500]),
                       apb.WriteRequest(upload_id=uid, write_offset=500, finish_write=True)))
    assert blobs_on_disk(hub) == []


async def test_offset_beyond_the_committed_size_is_refused(raw_channel: grpc.aio.Channel,
                                                           hub: Hub) -> None:
    """A write_offset past what the hub holds is refused, naming both numbers."""
    data = b"z" * 1000
    await expect(grpc.StatusCode.INVALID_ARGUMENT, "write_offset 4096 is beyond the 0 bytes",
                 write(raw_channel, hub, apb.WriteRequest(
                     upload_id=uuid.uuid4().hex, header=header(data), write_offset=4096,
                     data=data)))


async def test_chunk_for_another_upload_is_refused(raw_channel: grpc.aio.Channel,
                                                   hub: Hub) -> None:
    """One stream carries one upload: a chunk naming another upload id is refused."""
    data = b"q" * 100
    uid = uuid.uuid4().hex
    await expect(grpc.StatusCode.INVALID_ARGUMENT, "one stream carries one upload",
                 write(raw_channel, hub,
                       apb.WriteRequest(upload_id=uid, header=header(data), data=data[:50]),
                       apb.WriteRequest(upload_id=uuid.uuid4().hex, write_offset=50,
                                        data=data[50:])))


async def test_oversized_chunk_and_bad_names_are_refused(raw_channel: grpc.aio.Channel,
                                                         hub: Hub) -> None:
    """Chunks over 1 MiB and names that escape (`..`, absolute) are refused up front."""
    big = b"b" * (1024 * 1024 + 1)
    await expect(grpc.StatusCode.INVALID_ARGUMENT, "limit 1048576", write(
        raw_channel, hub, apb.WriteRequest(upload_id=uuid.uuid4().hex, header=header(big),
                                           data=big)))
    for name in ("../etc/passwd", "/abs", "a//b"):
        await expect(grpc.StatusCode.INVALID_ARGUMENT, "artifact name", write(
            raw_channel, hub, apb.WriteRequest(upload_id=uuid.uuid4().hex,
                                               header=header(b"1", name=name), data=b"1")))


async def test_quota_exceeded_is_refused_before_and_during_upload(tmp_path: Path) -> None:
    """A tenant over its quota gets Conflict naming usage and quota; nothing is stored."""
    async with running_hub(tmp_path / "hub", artifact_quota_bytes=100_000) as hub, \
            Client(client_config(hub)) as client:
        small = tmp_path / "small.bin"
        make_file(small, 60_000)
        await client.upload_artifact(small)
        with pytest.raises(Conflict, match="artifact quota exceeded"):
            await client.upload_artifact(small, name="again.bin")
        assert len(await client.list_artifacts()) == 1


async def test_another_tenants_artifact_is_invisible(client: Client, hub: Hub,
                                                     tmp_path: Path) -> None:
    """An artifact id of tenant A is NotFound for tenant B: stat, read, delete, and its
    upload id cannot be queried or resumed from B."""
    src = tmp_path / "mine.bin"
    make_file(src, 1000)
    file = await client.upload_artifact(src)
    await hub.store.ensure_tenant("other", now=time.time())
    token = await issue_api_token(hub.store, tenant="other", role="admin", name="o",
                                  now=time.time())
    async with Client(client_config(hub, token)) as other:
        with pytest.raises(NotFound):
            await other.stat_artifact(file.artifact_id)
        with pytest.raises(NotFound):
            await other.download_artifact(file.artifact_id, tmp_path / "x")
        with pytest.raises(NotFound):
            await other.delete_artifact(file.artifact_id)
        assert await other.list_artifacts() == []
    assert (await client.stat_artifact(file.artifact_id)).sha256 == file.sha256


async def test_read_offset_beyond_the_size_is_refused(raw_channel: grpc.aio.Channel,
                                                      client: Client, tmp_path: Path,
                                                      hub: Hub) -> None:
    """Reading past the end is InvalidArgument naming the size."""
    src = tmp_path / "s.bin"
    make_file(src, 100)
    file = await client.upload_artifact(src)
    md = (("authorization", f"Bearer {hub.admin_token}"),)

    async def read() -> None:
        async for _ in stub(raw_channel).Read(
                apb.ReadRequest(artifact_id=file.artifact_id, read_offset=101), metadata=md):
            pass

    await expect(grpc.StatusCode.INVALID_ARGUMENT, "outside the artifact's 100 bytes", read())


async def test_disk_full_cuts_the_part_back_and_says_so() -> None:
    """ENOSPC from the OS (/dev/full) becomes Unavailable naming the full disk, and the
    part keeps only what was written before."""
    part = PartFile(Path("/dev/full"))
    try:
        with pytest.raises(Unavailable, match="disk is full"):
            part.write(b"x" * 1000)
        assert part.size == 0
    finally:
        part.close()


async def test_corrupt_blob_is_detected_on_read(client: Client, hub: Hub,
                                                tmp_path: Path) -> None:
    """A blob whose bytes changed on disk fails the read (and the client's check)."""
    src = tmp_path / "c.bin"
    make_file(src, 10_000)
    file = await client.upload_artifact(src)
    (blob,) = blobs_on_disk(hub)
    blob.chmod(0o600)
    blob.write_bytes(b"\0" * 10_000)
    with pytest.raises(RemoteError, match="corrupt"):
        await client.download_artifact(file, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


# -- garbage collection --------------------------------------------------------------

async def test_gc_removes_expired_and_unreferenced_blobs_only(tmp_path: Path) -> None:
    """GC deletes expired artifacts and blobs nothing references; shared blobs stay."""
    async with running_hub(tmp_path / "hub") as hub, Client(client_config(hub)) as client:
        assert hub.artifacts is not None
        hub.artifacts._limits = type(hub.artifacts._limits)(gc_grace_s=0.0)
        a, b = tmp_path / "a.bin", tmp_path / "b.bin"
        make_file(a, 1000, seed=1)
        make_file(b, 1000, seed=2)
        kept = await client.upload_artifact(a, name="kept")
        dup = await client.upload_artifact(a, name="dup")
        gone = await client.upload_artifact(b, name="gone", ttl_s=0.5)
        await client.delete_artifact(dup.artifact_id)
        await asyncio.sleep(0.6)
        report = await hub.artifacts.gc()
        assert (report.expired, report.blobs_deleted) == (1, 1)
        assert [p.name for p in blobs_on_disk(hub)] == [kept.sha256]
        with pytest.raises(NotFound):
            await client.stat_artifact(gone.artifact_id)
        back = await client.download_artifact(kept, tmp_path / "k.bin")
        assert back.read_bytes() == a.read_bytes()


# -- a killed uploader resumes ----------------------------------------------------------

UPLOADER = """
import asyncio, sys
from cortex.sdk import Client, ClientConfig
cfg = ClientConfig(address=sys.argv[1], token=sys.argv[2], ca_pem=open(sys.argv[3], 'rb').read())
last = 0
def progress(done, total):
    global last
    if done - last >= 1 << 20:
        last = done
        print(done, flush=True)
async def main():
    async with Client(cfg) as c:
        await c.upload_artifact(sys.argv[4], progress=progress)
asyncio.run(main())
"""


async def test_an_uploader_killed_mid_transfer_resumes_on_the_next_run(
        client: Client, hub: Hub, tmp_path: Path) -> None:
    """kill -9 of the uploading process half way: running the same upload again continues
    from what the hub committed (the upload id derives from the content), not from 0."""
    size = 64 * 1024 * 1024
    src = tmp_path / "big.bin"
    digest = make_file(src, size, seed=11)
    ca = tmp_path / "ca.pem"
    assert hub.ca is not None
    ca.write_bytes(hub.ca.cert_pem)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", UPLOADER, hub.address, hub.admin_token, str(ca), str(src),
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        while int((await proc.stdout.readline()) or b"-1") < size // 2:
            assert proc.returncode is None, "the uploader ended before half way"
    finally:
        proc.kill()
        await proc.wait()
    seen: list[int] = []
    file = await client.upload_artifact(src, progress=lambda d, t: seen.append(d))
    assert file.sha256 == digest
    assert seen[0] > size // 4, f"resumed from {seen[0] - CHUNK}, not from the hub's bytes"
    back = await client.download_artifact(file, tmp_path / "back.bin")
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest


async def test_the_same_upload_after_its_artifact_was_deleted_is_stored_again(
        client: Client, tmp_path: Path) -> None:
    """Re-uploading identical content under the same name is idempotent while the artifact
    exists, and stores a new one once it was deleted."""
    src = tmp_path / "same.bin"
    make_file(src, 5000)
    first = await client.upload_artifact(src)
    assert (await client.upload_artifact(src)).artifact_id == first.artifact_id
    await client.delete_artifact(first.artifact_id)
    again = await client.upload_artifact(src)
    assert again.artifact_id != first.artifact_id
    assert (await client.stat_artifact(again.artifact_id)).sha256 == first.sha256


# -- inputs ----------------------------------------------------------------------------

async def test_inputs_are_downloaded_into_the_cwd_before_the_task(
        client: Client, node: Agent, tmp_path: Path) -> None:
    """`inputs={path: artifact}` places verified files in the task's cwd before it runs."""
    src = tmp_path / "dataset.bin"
    make_file(src, 200_000, seed=5)
    file = await client.upload_artifact(src)
    work = tmp_path / "work"
    work.mkdir()
    result = await client.run(argv=["sha256sum", "data/in.bin"], cwd=str(work),
                              inputs={"data/in.bin": file.artifact_id})
    assert result.ok, result.task.reason
    assert result.stdout.split()[0].decode() == file.sha256


async def test_inputs_that_escape_the_cwd_fail_the_task_before_it_runs(
        client: Client, node: Agent, tmp_path: Path) -> None:
    """An input through a symlinked directory out of the cwd fails the task, writing
    nothing outside; an unknown artifact fails it naming the id; '..' fails submit."""
    src = tmp_path / "x.bin"
    make_file(src, 1000)
    file = await client.upload_artifact(src)
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (work / "link").symlink_to(outside)
    result = await client.run(argv=["true"], cwd=str(work),
                              inputs={"link/sub/x.bin": file.artifact_id})
    assert result.task.state == TaskState.FAILED
    assert "outside the task's directory" in result.task.reason
    assert list(outside.iterdir()) == []
    result = await client.run(argv=["true"], cwd=str(work), inputs={"y.bin": "a-missing"})
    assert result.task.state == TaskState.FAILED
    assert "a-missing" in result.task.reason
    with pytest.raises(InvalidArgument, match="artifact name"):
        await client.submit(argv=["true"], inputs={"../y.bin": file.artifact_id})


# -- the node API other skills use ------------------------------------------------------------

async def test_node_publishes_a_growing_file_as_it_grows(client: Client, node: Agent,
                                                         tmp_path: Path) -> None:
    """NodeArtifacts.upload_growing sends a file while it is appended to and completes,
    verified, once told the file is finished; it belongs to the given task."""
    from cortex.node.artifacts import NodeArtifacts
    from cortex.node.identity import load_identity

    ident = load_identity(tmp_path / "n1")
    assert ident is not None
    task = await client.submit(skill="noop")
    path = tmp_path / "video.webm"
    path.write_bytes(b"")
    finished = asyncio.Event()
    upload = asyncio.create_task(NodeArtifacts(ident).upload_growing(
        path, finished, task_id=task.id, name="video.webm"))
    written = bytearray()
    for i in range(20):
        piece = bytes([i]) * 50_000
        with path.open("ab") as f:
            f.write(piece)
        written += piece
        await asyncio.sleep(0.01)   # the writer's pace; the uploader follows the file
    finished.set()
    file = await upload
    assert file.size == len(written)
    assert file.sha256 == hashlib.sha256(written).hexdigest()
    assert file.media_type == "video/webm"
    assert [f.artifact_id for f in await client.list_artifacts(task.id)] == [file.artifact_id]
    back = await client.download_artifact(file, tmp_path / "back.webm")
    assert back.read_bytes() == bytes(written)


async def test_another_tenants_content_cannot_be_claimed_by_its_hash(
        raw_channel: grpc.aio.Channel, client: Client, hub: Hub, tmp_path: Path) -> None:
    """Dedupe without the bytes works only inside a tenant: tenant B naming A's sha256 and
    size must still send the content, and finishing without it is refused."""
    src = tmp_path / "secret.bin"
    make_file(src, 10_000, seed=9)
    mine = await client.upload_artifact(src)
    await hub.store.ensure_tenant("other", now=time.time())
    token = await issue_api_token(hub.store, tenant="other", role="admin", name="o",
                                  now=time.time())
    uid = uuid.uuid4().hex
    h = apb.WriteHeader(name="stolen.bin", size=mine.size, sha256=mine.sha256)

    async def gen() -> AsyncIterator[apb.WriteRequest]:
        yield apb.WriteRequest(upload_id=uid, header=h)
        yield apb.WriteRequest(upload_id=uid, write_offset=0, finish_write=True)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub(raw_channel).Write(gen(), metadata=(("authorization", f"Bearer {token}"),))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ended at 0 bytes" in (info.value.details() or "")
    assert await hub.store.list_artifacts("other") == []
