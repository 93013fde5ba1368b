"""Length-prefixed protobuf frames: the wire format between the node and its workers.

A frame is a 4-byte big-endian length, then that many bytes of one serialized message;
``MAX_FRAME`` bounds the length both ways. The node reads and writes asyncio streams; the
worker process uses the blocking twins. The worker imports this module, so it must stay
light: stdlib, protobuf and cortex.errors only (asyncio is named for the type checker only,
which keeps ~80 ms of imports out of every worker start).
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from google.protobuf.message import DecodeError, Message

from cortex.errors import InvalidArgument, RemoteError

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "MAX_FRAME",
    "PROTOCOL",
    "FrameError",
    "encode_frame",
    "read_frame",
    "read_frame_blocking",
    "write_frame",
    "write_frame_blocking",
]

MAX_FRAME = 16 << 20  # bytes of one message; big enough for any call's args or chunk
# The worker protocol's version (WorkerHello.protocol): bumped on any change a node and a
# worker of different versions would disagree on. Both ends take it from here.
PROTOCOL = 1
_HEADER = struct.Struct(">I")

M = TypeVar("M", bound=Message)


class FrameError(RemoteError):
    """The peer sent something that is not a frame: too long, cut short, or not parseable."""


def encode_frame(message: Message) -> bytes:
    """The frame for `message`; InvalidArgument if it is over ``MAX_FRAME``."""
    data = message.SerializeToString()
    if len(data) > MAX_FRAME:
        raise InvalidArgument(
            f"a {type(message).__name__} of {len(data)} bytes is over the "
            f"{MAX_FRAME >> 20} MiB frame bound; send less in one message"
        )
    return _HEADER.pack(len(data)) + data


def _length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(
            f"the peer announced a frame of {length} bytes, over the {MAX_FRAME >> 20} MiB "
            "bound (a corrupt stream or something other than the worker protocol)"
        )
    return int(length)


def _parse(kind: type[M], data: bytes) -> M:
    message = kind()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise FrameError(f"a {len(data)}-byte frame is not a valid {kind.__name__}") from exc
    return message


def _truncated(got: int, wanted: int) -> FrameError:
    return FrameError(f"the stream ended inside a frame ({got} of {wanted} bytes)")


async def read_frame(reader: asyncio.StreamReader, kind: type[M]) -> M | None:
    """The next message, or None at a clean end of stream (between frames)."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except EOFError as exc:  # asyncio.IncompleteReadError, without importing asyncio
        got = len(getattr(exc, "partial", b""))
        if got == 0:
            return None
        raise _truncated(got, _HEADER.size) from exc
    length = _length(header)
    try:
        data = await reader.readexactly(length)
    except EOFError as exc:
        raise _truncated(len(getattr(exc, "partial", b"")), length) from exc
    return _parse(kind, data)


async def write_frame(writer: asyncio.StreamWriter, message: Message) -> None:
    """Write one frame and wait until the pipe took it (backpressure, not a growing buffer)."""
    writer.write(encode_frame(message))
    await writer.drain()


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_frame_blocking(stream: BinaryIO, kind: type[M]) -> M | None:
    """As `read_frame`, from a blocking binary stream."""
    header = _read_exactly(stream, _HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise _truncated(len(header), _HEADER.size)
    length = _length(header)
    data = _read_exactly(stream, length)
    if len(data) < length:
        raise _truncated(len(data), length)
    return _parse(kind, data)


def write_frame_blocking(fd: int, message: Message) -> None:
    """Write one whole frame to a blocking file descriptor (retrying short writes)."""
    view = memoryview(encode_frame(message))
    while view:
        view = view[os.write(fd, view) :]
