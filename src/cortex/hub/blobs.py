"""Content-addressed blob storage for artifacts: the `BlobStore` interface and the
shared-directory backend.

A blob is named by the sha256 of its content. Uploads land in a part file; `commit` fsyncs
it and renames it into place only after the caller checked the digest, so a crash never
leaves a half blob under a digest name. Identical content is stored once (dedupe).

Several hubs can share one `DirBlobStore` by pointing it at one shared directory (renames
within one filesystem are atomic, part files are named by tenant and upload id); an
S3-compatible backend is a later option behind the same interface (docs/artifacts.md).
"""

from __future__ import annotations

import abc
import contextlib
import errno
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cortex.errors import InvalidArgument, NotFound, Unavailable

__all__ = ["BlobStore", "DirBlobStore", "PartFile"]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_KEY = re.compile(r"^[0-9a-f]{16}-[A-Za-z0-9_-]{8,64}$")


class PartFile:
    """An upload in progress: an append-only file and the byte count it holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # O_NOFOLLOW: a planted symlink must never redirect hub writes.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                           0o600)
        self.size = os.lseek(self._fd, 0, os.SEEK_END)

    def write(self, data: bytes) -> None:
        """Append `data`; on a full disk the file is cut back to its previous size."""
        try:
            self._write_all(data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
                os.lseek(self._fd, self.size, os.SEEK_SET)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise Unavailable(
                    f"the hub's artifact disk is full ({os.strerror(exc.errno)}): the upload "
                    f"keeps its first {self.size} bytes; free space on the hub (cortex "
                    "artifacts rm) and resume, or upload again") from exc
            raise Unavailable(f"the hub could not write the upload: {exc}") from exc
        self.size += len(data)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class BlobStore(abc.ABC):
    """Where artifact content lives. Keys of uploads are ``<tenant hash>-<upload id>``."""

    @abc.abstractmethod
    def open_part(self, key: str) -> PartFile:
        """Create or reopen the part file of an upload."""

    @abc.abstractmethod
    def read_part(self, key: str) -> BinaryIO | None:
        """The part file for reading (to rebuild its digest), None if there is none."""

    @abc.abstractmethod
    def commit(self, key: str, digest: str) -> None:
        """Make the part the blob `digest` (the caller verified it); dedupes."""

    @abc.abstractmethod
    def discard(self, key: str) -> None: ...

    @abc.abstractmethod
    def save_meta(self, key: str, body: bytes) -> None: ...

    @abc.abstractmethod
    def load_meta(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    def size(self, digest: str) -> int | None:
        """The blob's size, None if absent."""

    @abc.abstractmethod
    def touch(self, digest: str) -> None:
        """Mark the blob as just used (GC spares young blobs)."""

    @abc.abstractmethod
    def open_blob(self, digest: str) -> BinaryIO: ...

    @abc.abstractmethod
    def quarantine(self, digest: str) -> None:
        """Move a blob whose content does not match its name out of the way."""

    @abc.abstractmethod
    def blobs(self) -> Iterator[tuple[str, float]]:
        """(digest, mtime) of every blob."""

    @abc.abstractmethod
    def delete(self, digest: str) -> None: ...

    @abc.abstractmethod
    def sweep_uploads(self, *, older_than: float) -> int:
        """Remove part and meta files untouched since `older_than`; returns how many."""


class DirBlobStore(BlobStore):
    """Blobs as ``cas/<2 hex>/<64 hex>`` files, uploads as ``uploads/<key>.part|.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cas = root / "cas"
        self._uploads = root / "uploads"
        self._corrupt = root / "corrupt"
        for d in (self._cas, self._uploads, self._corrupt):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _part(self, key: str) -> Path:
        if not _KEY.match(key):
            raise InvalidArgument(f"bad upload key {key!r}")
        return self._uploads / f"{key}.part"

    def _blob(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise InvalidArgument(f"sha256 must be 64 lowercase hex digits, not {digest!r}")
        return self._cas / digest[:2] / digest

    def open_part(self, key: str) -> PartFile:
        return PartFile(self._part(key))

    def read_part(self, key: str) -> BinaryIO | None:
        try:
            return self._part(key).open("rb")
        except FileNotFoundError:
            return None

    def commit(self, key: str, digest: str) -> None:
        part, blob = self._part(key), self._blob(digest)
        if blob.exists():
            part.unlink(missing_ok=True)
            self.touch(digest)
            return
        blob.parent.mkdir(exist_ok=True, mode=0o700)
        with part.open("rb") as f:
            os.fsync(f.fileno())
        os.chmod(part, 0o400)
        os.replace(part, blob)
        _fsync_dir(blob.parent)

    def discard(self, key: str) -> None:
        part = self._part(key)
        part.unlink(missing_ok=True)
        part.with_suffix(".json").unlink(missing_ok=True)

    def save_meta(self, key: str, body: bytes) -> None:
        meta = self._part(key).with_suffix(".json")
        tmp = meta.with_suffix(".tmp")
        tmp.write_bytes(body)
        os.replace(tmp, meta)

    def load_meta(self, key: str) -> bytes | None:
        try:
            return self._part(key).with_suffix(".json").read_bytes()
        except FileNotFoundError:
            return None

    def size(self, digest: str) -> int | None:
        try:
            return self._blob(digest).stat().st_size
        except FileNotFoundError:
            return None

    def touch(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._blob(digest))

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return self._blob(digest).open("rb")
        except FileNotFoundError:
            raise NotFound(f"the content of this artifact (sha256 {digest}) is gone from "
                           "the hub's blob store; upload it again") from None

    def quarantine(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.replace(self._blob(digest), self._corrupt / f"{digest}.{int(time.time())}")

    def blobs(self) -> Iterator[tuple[str, float]]:
        for sub in self._cas.iterdir():
            for blob in sub.iterdir():
                if _DIGEST.match(blob.name):
                    with contextlib.suppress(FileNotFoundError):
                        yield blob.name, blob.stat().st_mtime

    def delete(self, digest: str) -> None:
        self._blob(digest).unlink(missing_ok=True)

    def sweep_uploads(self, *, older_than: float) -> int:
        removed = 0
        for path in self._uploads.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
