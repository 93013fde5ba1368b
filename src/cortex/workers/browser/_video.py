"""Video of a page: CDP screencast JPEG frames, encoded to H.264 fragmented MP4 by PyAV.

Frames come from ``Page.startScreencast``; holding back ``Page.screencastFrameAck`` caps
the frame rate. A thread decodes and encodes (the event loop keeps serving the page);
each frame's pts is its CDP timestamp, so a page that paints rarely makes a short file,
not a wrong clock. The file is fragmented (``frag_keyframe+empty_moov``) with a keyframe
every 2 s: the part written so far is playable, so a crash loses at most a fragment.

x264 rejects a frame decoded from JPEG as "every frame a keyframe" unless its pict_type is
reset (4.9 MB instead of 0.4 MB per 10 s): see `_Encoder._encode`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

__all__ = ["Recorder"]

_QUEUE = 32  # frames waiting for the encoder; past it frames are dropped (and counted)
_KEYFRAME_S = 2


class _Encoder(threading.Thread):
    def __init__(self, path: Path, *, width: int, height: int, fps: int) -> None:
        super().__init__(name="cortex-video-encoder", daemon=True)
        self.path = path
        self._width, self._height, self._fps = width, height, fps
        self.frames: queue.Queue[tuple[bytes, float] | None] = queue.Queue(maxsize=_QUEUE)
        self.encoded = 0
        self.error = ""

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - reported by stop(), the recording ends
            self.error = f"video encoder failed: {exc!r}"

    def _run(self) -> None:
        # flush_packets: each fragment reaches the file as it is cut, not when a 32 KiB
        # buffer fills - without it a killed worker leaves an unplayable 28-byte file.
        out = av.open(str(self.path), "w", format="mp4",
                      options={"movflags": "frag_keyframe+empty_moov+default_base_moof"},
                      container_options={"flush_packets": "1"})
        try:
            stream = out.add_stream("libx264", rate=self._fps)
            stream.width, stream.height = self._width, self._height
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = Fraction(1, 1000)
            # zerolatency: no lookahead, so each frame is in the file within one fragment.
            stream.codec_context.options = {"preset": "veryfast", "tune": "zerolatency",
                                            "g": str(self._fps * _KEYFRAME_S)}
            decoder = av.CodecContext.create("mjpeg", "r")
            first, last_pts = None, -1
            while (item := self.frames.get()) is not None:
                data, stamp = item
                first = stamp if first is None else first
                pts = int((stamp - first) * 1000)
                if pts <= last_pts:
                    continue  # two frames in one millisecond: keep the first
                last_pts = pts
                for frame in decoder.decode(av.Packet(data)):
                    self._encode(out, stream, frame, pts)
            for packet in stream.encode(None):
                out.mux(packet)
        finally:
            out.close()

    def _encode(self, out: Any, stream: Any, frame: Any, pts: int) -> None:
        frame = frame.reformat(width=self._width, height=self._height, format="yuv420p")
        frame.pict_type = av.video.frame.PictureType.NONE  # let x264 choose (see above)
        frame.pts = pts
        frame.time_base = Fraction(1, 1000)
        for packet in stream.encode(frame):
            out.mux(packet)
        self.encoded += 1


class Recorder:
    """One recording of one page (see the module docstring)."""

    def __init__(self, cdp: Any, path: Path, *, width: int, height: int, fps: int) -> None:
        self._cdp = cdp
        self._encoder = _Encoder(path, width=width, height=height, fps=fps)
        self._interval = 1.0 / fps
        self._next_ack = 0.0
        self._received = 0
        self._dropped = 0
        self._started = 0.0
        self._acks: set[asyncio.Task[None]] = set()
        self._width, self._height, self._fps = width, height, fps

    async def start(self) -> None:
        self._encoder.start()
        self._started = time.monotonic()
        self._cdp.on("Page.screencastFrame", self._on_frame)
        await self._cdp.send("Page.startScreencast", {
            "format": "jpeg", "quality": 80, "maxWidth": self._width,
            "maxHeight": self._height, "everyNthFrame": 1})

    def _on_frame(self, params: dict[str, Any]) -> None:
        import base64

        self._received += 1
        try:
            self._encoder.frames.put_nowait(
                (base64.b64decode(params["data"]), float(params["metadata"]["timestamp"])))
        except queue.Full:
            self._dropped += 1
        now = time.monotonic()
        delay = max(0.0, self._next_ack - now)
        self._next_ack = max(now, self._next_ack) + self._interval
        task = asyncio.get_running_loop().create_task(self._ack(params["sessionId"], delay))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _ack(self, session_id: int, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self._cdp.send("Page.screencastFrameAck", {"sessionId": session_id})
        except Exception:  # noqa: BLE001 - the page went away: no more frames anyway
            return

    async def stop(self) -> dict[str, Any]:
        with contextlib.suppress(Exception):  # a crashed or closed page has stopped already
            await self._cdp.send("Page.stopScreencast")
        for task in list(self._acks):
            task.cancel()
        self._encoder.frames.put(None)
        await asyncio.to_thread(self._encoder.join, 60)
        path = self._encoder.path
        seconds = time.monotonic() - self._started
        result = {"path": str(path), "bytes": path.stat().st_size if path.exists() else 0,
                  "frames": self._encoder.encoded, "received": self._received,
                  "dropped": self._dropped, "seconds": round(seconds, 2),
                  "width": self._width, "height": self._height, "fps": self._fps}
        if self._encoder.error:
            result["error"] = self._encoder.error
        return result
