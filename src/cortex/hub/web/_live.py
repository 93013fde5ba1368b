"""The browser live view: the newest frame of a recording that is still being uploaded,
as a JPEG.

A recording is a fragmented MP4 (`frag_keyframe+empty_moov`: `ftyp` and an empty `moov`,
then one `moof`+`mdat` fragment per keyframe interval) that the node streams to the hub
while it is written (an artifact upload of unknown size). The hub keeps the upload's bytes
in a part file, so the newest complete fragment is already on the hub's disk: the init
boxes plus that one fragment form a small playable MP4 whose last frame PyAV decodes. Only
box headers are read to find it (seeks), then the init boxes and the one fragment, so the
cost does not grow with the recording's length.

The frame lags the page by up to one fragment (a keyframe interval, 2 s) plus upload
latency. A page that does not paint makes no frames, so the view shows what it last drew.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from typing import BinaryIO

__all__ = ["MAX_FRAGMENT_BYTES", "fragment_bounds", "last_frame_jpeg", "latest_fragment"]

MAX_FRAGMENT_BYTES = 32 * 1024 * 1024
"""A fragment bigger than this is not decoded for the live view (it says so instead)."""
_MAX_INIT_BYTES = 1024 * 1024
_HEADER = struct.Struct(">I4s")


def latest_fragment(part: BinaryIO, size: int) -> bytes | None:
    """The init boxes and the newest complete `moof`+`mdat` of the fMP4 in `part` (its
    first `size` bytes), as one playable MP4; None when no fragment is complete yet."""
    found = fragment_bounds(part, size)
    if found is None:
        return None
    init_end, start, end = found
    part.seek(0)
    init = part.read(init_end)
    part.seek(start)
    return init + part.read(end - start)


def fragment_bounds(part: BinaryIO, size: int) -> tuple[int, int, int] | None:
    """(end of the init boxes, start and end of the newest complete fragment) of the fMP4
    in `part`, reading box headers only; None when no fragment is complete yet."""
    init_end = 0
    last: tuple[int, int] | None = None      # (start of moof, end of its mdat)
    moof_at = -1
    offset = 0
    while offset + _HEADER.size <= size:
        part.seek(offset)
        length, kind = _HEADER.unpack(part.read(_HEADER.size))
        if length == 1:     # 64-bit size follows
            (length,) = struct.unpack(">Q", part.read(8))
        if length < _HEADER.size or offset + length > size:
            break           # a box still being written (or garbage): stop at what is whole
        if kind in (b"ftyp", b"moov"):
            init_end = offset + length
        elif kind == b"moof":
            moof_at = offset
        elif kind == b"mdat" and moof_at >= 0:
            last, moof_at = (moof_at, offset + length), -1
        offset += length
    if not init_end or last is None or init_end > _MAX_INIT_BYTES:
        return None
    start, end = last
    if end - start > MAX_FRAGMENT_BYTES:
        return None
    return init_end, start, end


def last_frame_jpeg(mp4: bytes, *, max_width: int = 960) -> bytes | None:
    """The last video frame of `mp4` as a JPEG at most `max_width` wide; None when it
    holds no decodable frame. CPU-bound: call it in a thread."""
    import av  # heavy: only a hub that shows a live view loads it

    frame = None
    try:
        with av.open(io.BytesIO(mp4), "r", format="mp4") as container:
            for decoded in container.decode(video=0):
                frame = decoded
    except av.error.FFmpegError:
        pass  # a damaged tail: keep the last frame decoded before it
    if frame is None:
        return None
    width = min(frame.width, max_width) // 2 * 2
    height = max(2, round(frame.height * width / frame.width) // 2 * 2)
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    encoder.options = {"qscale": "4"}
    image = frame.reformat(width=width, height=height, format="yuvj420p")
    image.pts = 0
    packets = [*encoder.encode(image), *encoder.encode(None)]
    return b"".join(bytes(p) for p in packets) or None
