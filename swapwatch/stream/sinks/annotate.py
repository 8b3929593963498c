"""Annotated output video: boxes coloured by state, track ids and smoothed scores, H.264 via PyAV.

Timestamps follow the source: each frame is written at its own `pts` (stream seconds, shifted so the
file starts at 0) in a 1/90000 time base, so a variable-rate or frame-dropping live source plays back
at true speed instead of being squeezed to a nominal rate. A frame without a pts (the first RTSP frame
has none) is placed one nominal frame interval after the previous one; a pts that does not move forward
is nudged one tick past the previous frame, since a muxer refuses non-increasing timestamps.

Drawing and encoding run in one dedicated thread per sink (in order, off the event loop). libx264 is
the costliest sink by far (`preset` trades CPU for file size; "veryfast" encodes 720p in a few ms per
frame on these 2 cores): when it cannot keep up, the SinkSet's frame queue drops frames, so the file
skips frames but stays in sync with its timestamps.

`path` may contain `{stream}` to write one file per stream; without it only one stream is written
(`stream`, or the first one seen).

A stream's file is finished `end_grace_s` seconds after its `ended`/`failed` event, not at once: the
SinkSet delivers events and frames through separate queues, so that event can overtake the stream's
last queued frames. A file is never overwritten: frames of a stream whose file was already finished
(a stream that comes back under the same name) start `<name>-2.mp4`, `<name>-3.mp4`...
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from swapwatch.config import StrictModel
from swapwatch.errors import MediaError
from swapwatch.stream.events import Event, FrameTrack

log = logging.getLogger(__name__)

STATE_COLORS_BGR: dict[str, tuple[int, int, int]] = {
    "clear": (0, 200, 0),  # green
    "suspicious": (0, 165, 255),  # orange
    "alert": (0, 0, 255),  # red
}

TIME_BASE = Fraction(1, 90000)


class AnnotateConfig(StrictModel):
    """The annotated output video."""

    path: str = Field(..., description="Output file (.mp4/.mkv); '{stream}' in it gives one file per stream.")
    stream: str | None = Field(
        None, description="Without '{stream}' in path: the stream to write (default: first seen)."
    )
    codec: str = Field("libx264", description="Encoder (libx264 for H.264).")
    crf: int = Field(23, ge=0, le=51, description="x264 constant rate factor: lower is better quality, bigger files.")
    preset: str = Field("veryfast", description="x264 preset: faster presets use less CPU for bigger files.")
    fps: float = Field(30.0, gt=0, description="Nominal frame rate, used only for frames that carry no pts.")
    max_side: int | None = Field(
        None, ge=16, description="Downscale frames so the longer side is at most this (None: source size)."
    )
    threads: int = Field(0, ge=0, description="Encoder threads (0: the encoder's choice).")
    end_grace_s: float = Field(
        2.0, ge=0, description="Seconds after a stream's ended/failed event before its file is finished."
    )


def draw_tracks(frame_bgr: np.ndarray, tracks: Sequence[FrameTrack], scale: float = 1.0) -> np.ndarray:
    """A copy of `frame_bgr` with each track's box (colour = state), id and smoothed score drawn on it.

    `scale` maps source-pixel boxes onto a resized frame.
    """
    import cv2

    out = np.ascontiguousarray(frame_bgr).copy()
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 240))
    font_scale = max(0.35, min(h, w) / 900)
    for tr in tracks:
        color = STATE_COLORS_BGR.get(tr.state, (255, 255, 255))
        x1, y1, x2, y2 = (round(v * scale) for v in tr.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_8)  # crisp: exact state colours
        label = f"#{tr.track} {tr.state}" + (f" {tr.score:.2f}" if tr.score is not None else "")
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else min(h - 1, y2 + th + 4)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 4, ty + base // 2), color, -1)
        cv2.putText(
            out, label, (x1 + 2, ty - base // 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA
        )
    return out


class VideoWriter:
    """A blocking H.264 file writer fed BGR frames with their timestamps (seconds). Not thread-safe.

    The size is fixed by the first frame (rounded down to even, as yuv420p needs); later frames of
    another size are resized to it.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        codec: str = "libx264",
        crf: int = 23,
        preset: str = "veryfast",
        fps: float = 30.0,
        threads: int = 0,
    ) -> None:
        self.path = Path(path)
        self.codec = codec
        self.crf = crf
        self.preset = preset
        self.fps = fps
        self.threads = threads
        self.frames = 0
        self.size: tuple[int, int] | None = None
        self.start_pts: float | None = None
        self._container: Any = None
        self._stream: Any = None
        self._last_ticks: int | None = None

    def _open(self, width: int, height: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._container = av.open(str(self.path), "w")
        except Exception as err:  # PyAV raises several error types for a bad path or format
            raise MediaError(self.path, f"cannot open the output video: {err}") from None
        stream = self._container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        if self.codec == "libx264":
            stream.options = {"crf": str(self.crf), "preset": self.preset}
        if self.threads:
            stream.codec_context.thread_count = self.threads
        self._stream = stream
        self.size = (width, height)

    def write(self, frame_bgr: np.ndarray, pts: float | None) -> None:
        """Encode one frame at stream time `pts` seconds (None: one nominal interval after the last)."""
        import av
        import cv2

        if self._container is None:
            h, w = frame_bgr.shape[:2]
            if w < 2 or h < 2:
                raise MediaError(self.path, f"frame too small to encode: {w}x{h}")
            self._open(w - w % 2, h - h % 2)
        assert self.size is not None
        w, h = self.size
        if frame_bgr.shape[1] != w or frame_bgr.shape[0] != h:
            if (
                frame_bgr.shape[1] >= w
                and frame_bgr.shape[0] >= h
                and frame_bgr.shape[1] - w < 2
                and frame_bgr.shape[0] - h < 2
            ):
                frame_bgr = frame_bgr[:h, :w]
            else:
                frame_bgr = cv2.resize(frame_bgr, (w, h), interpolation=cv2.INTER_AREA)
        if pts is None:
            ticks = 0 if self._last_ticks is None else self._last_ticks + round(1.0 / (self.fps * TIME_BASE))
        else:
            if self.start_pts is None:
                self.start_pts = float(pts)
            ticks = round((float(pts) - self.start_pts) / TIME_BASE)
        if self._last_ticks is not None and ticks <= self._last_ticks:
            ticks = self._last_ticks + 1
        self._last_ticks = ticks
        if self.start_pts is None:
            self.start_pts = 0.0
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_bgr), format="bgr24")
        frame.pts = ticks
        frame.time_base = TIME_BASE
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (a writer that never got a frame writes nothing)."""
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None


class AnnotatedVideoSink:
    """Write frames with their tracks drawn on into H.264 files, off the event loop."""

    name = "annotate"

    def __init__(self, config: AnnotateConfig) -> None:
        self.config = config
        self.per_stream = "{stream}" in config.path
        self.writers: dict[str, VideoWriter] = {}
        self._chosen: str | None = config.stream
        self._parts: dict[str, int] = {}  # files finished per stream
        self._timers: set[asyncio.TimerHandle] = set()
        self._finishing: set[asyncio.Task[None]] = set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="annotate")
        self._closed = False

    def path_for(self, stream: str, part: int = 1) -> Path:
        """The file of `stream`'s `part`-th run (1: the configured name; 2...: "-2" before the suffix)."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stream) or "stream"
        path = Path(self.config.path.replace("{stream}", safe))
        return path if part <= 1 else path.with_name(f"{path.stem}-{part}{path.suffix}")

    def _writer(self, stream: str) -> VideoWriter | None:
        if not self.per_stream:
            if self._chosen is None:
                self._chosen = stream
            if stream != self._chosen:
                return None
        w = self.writers.get(stream)
        if w is None:
            c = self.config
            w = self.writers[stream] = VideoWriter(
                self.path_for(stream, self._parts.get(stream, 0) + 1),
                codec=c.codec,
                crf=c.crf,
                preset=c.preset,
                fps=c.fps,
                threads=c.threads,
            )
        return w

    def _encode(
        self, writer: VideoWriter, frame_bgr: np.ndarray, pts: float | None, tracks: Sequence[FrameTrack]
    ) -> None:
        import cv2

        scale = 1.0
        if self.config.max_side is not None:
            h, w = frame_bgr.shape[:2]
            scale = min(1.0, self.config.max_side / max(h, w))
            if scale < 1.0:
                frame_bgr = cv2.resize(frame_bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        writer.write(draw_tracks(frame_bgr, tracks, scale), pts)

    async def on_frame(
        self, stream: str, frame_bgr: np.ndarray, pts: float | None, tracks: Sequence[FrameTrack]
    ) -> None:
        if self._closed:
            return
        writer = self._writer(stream)
        if writer is None:
            return
        await asyncio.get_running_loop().run_in_executor(self._pool, self._encode, writer, frame_bgr, pts, tracks)

    async def publish(self, event: Event) -> None:
        """Events carry nothing to draw (frames bring their tracks); a stream that ended has its file
        finished `end_grace_s` later."""
        if self._closed or event.type != "stream" or event.source_state not in ("ended", "failed"):
            return
        loop = asyncio.get_running_loop()
        stream = event.stream

        def fire() -> None:
            self._timers.discard(handle)
            task = loop.create_task(self._finish(stream))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)

        handle = loop.call_later(self.config.end_grace_s, fire)
        self._timers.add(handle)

    async def _finish(self, stream: str) -> None:
        writer = self.writers.pop(stream, None)
        if writer is None:
            return
        self._parts[stream] = self._parts.get(stream, 0) + 1
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, writer.close)
        except Exception:
            log.exception("annotated video %s: failed to finish", writer.path)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        loop = asyncio.get_running_loop()
        for writer in list(self.writers.values()):
            try:
                await loop.run_in_executor(self._pool, writer.close)
            except Exception:
                log.exception("annotated video %s: failed to finish", writer.path)
        self.writers.clear()
        self._pool.shutdown(wait=True)
