"""The live view's frame: the newest complete fragment of a growing fragmented MP4 is
found from box headers alone, a box still being written is ignored, and its last frame
decodes to a JPEG of the frame that was encoded last."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av

from cortex.hub.web._live import fragment_bounds, last_frame_jpeg, latest_fragment

W, H = 160, 96


def _recording(path: Path, lumas: list[int]) -> None:
    """An fMP4 like the browser worker's (keyframe every 10 frames), one flat grey level
    per frame."""
    out = av.open(str(path), "w", format="mp4",
                  options={"movflags": "frag_keyframe+empty_moov+default_base_moof"})
    stream = out.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    stream.codec_context.time_base = Fraction(1, 1000)
    stream.codec_context.options = {"preset": "veryfast", "tune": "zerolatency", "g": "10"}
    for i, luma in enumerate(lumas):
        frame = av.VideoFrame(W, H, "yuv420p")
        for plane, value in zip(frame.planes, (luma, 128, 128), strict=True):
            plane.update(bytes([value]) * plane.buffer_size)
        frame.pts, frame.time_base = i * 100, Fraction(1, 1000)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()


def _luma(jpeg: bytes) -> int:
    with av.open(io.BytesIO(jpeg), "r", format="mjpeg") as c:
        frame = next(iter(c.decode(video=0)))
    y = bytes(frame.planes[0])
    return y[len(y) // 2]


def test_the_newest_fragment_decodes_to_the_last_frame(tmp_path: Path) -> None:
    """30 frames, the last ones bright: the JPEG is the bright last frame, scaled."""
    path = tmp_path / "v.mp4"
    _recording(path, [40] * 25 + [220] * 5)
    data = path.read_bytes()
    with path.open("rb") as part:
        mp4 = latest_fragment(part, len(data))
    assert mp4 is not None
    assert len(mp4) < len(data)
    jpeg = last_frame_jpeg(mp4)
    assert jpeg is not None
    assert jpeg[:3] == b"\xff\xd8\xff"
    assert _luma(jpeg) > 200     # (full-range JPEG: 220 limited-range is about 238)


def test_a_box_being_written_is_ignored_and_nothing_complete_is_none(
        tmp_path: Path) -> None:
    """Cut inside the last fragment: the one before it is used; cut before the first
    fragment completes (or inside the init boxes): None."""
    path = tmp_path / "v.mp4"
    _recording(path, [40] * 10 + [120] * 10 + [220] * 10)
    data = path.read_bytes()
    with path.open("rb") as part:
        whole = fragment_bounds(part, len(data))
        assert whole is not None
        init_end, start, _ = whole
        before = fragment_bounds(part, start + 20)      # the newest moof half written
        assert before is not None
        assert before[2] <= start
        assert fragment_bounds(part, init_end + 10) is None
        assert fragment_bounds(part, 12) is None
        mp4 = latest_fragment(part, start + 20)
    assert mp4 is not None
    jpeg = last_frame_jpeg(mp4)
    assert jpeg is not None
    assert 100 < _luma(jpeg) < 160   # the middle, grey fragment's last frame


def test_garbage_has_no_frame() -> None:
    """Bytes that are no MP4: no fragment, and decoding them gives None, not an error."""
    junk = io.BytesIO(b"\x00\x00\x00\x10moofxxxxxxxx" * 4)
    assert fragment_bounds(junk, 64) is None
    assert last_frame_jpeg(b"not an mp4 at all") is None
