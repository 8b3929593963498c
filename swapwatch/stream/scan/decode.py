"""The decode stage: files in, frames out, in input order; every failure becomes that file's error.

Runs in its own thread. PyAV decodes with the GIL released, so decoding the next frames overlaps the
detector and the scorer working on earlier ones. Per file it emits `FileStart`, then a `FrameJob`
per sampled frame (one for an image), then `FileEnd` carrying the file's error or warning.

Choices:
- Frames not sampled (`every` > 1) are decoded (H.264 has to) but never converted to BGR, which is
  the larger half of the per-frame cost at 720p here.
- A file that fails to open, is empty, has no video stream or decodes to nothing ends with an
  `error`; a video that decodes partway and then fails (truncated, corrupt in the middle) keeps the
  frames it gave and ends with a `warning` naming the frame and FFmpeg's reason. The scan goes on.
- FFmpeg's default threading is kept: frame threading would decode faster alone but takes cores
  the detector needs, and decoding is not the bottleneck (about 1-2 ms of ~15 ms per 720p frame).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import av

from swapwatch.errors import MediaError
from swapwatch.media.files import VIDEO_EXTS
from swapwatch.media.image import read_image
from swapwatch.media.video import ffmpeg_reason, open_video, to_bgr
from swapwatch.stream.scan.cadence import DETECT_EVERY_FRAME
from swapwatch.stream.scan.items import FileEnd, FileStart, FrameJob, Item, Kind

log = logging.getLogger(__name__)


def file_kind(path: Path, crops: bool) -> Kind:
    if path.suffix.lower() in VIDEO_EXTS:
        return "video"
    return "crop" if crops else "image"


def frames_to_score(total: int | None, every: int, max_frames: int | None) -> int | None:
    """How many frames of a `total`-frame video are scored with this sampling (None when unknown)."""
    if total is None:
        return max_frames
    n = -(-total // every)  # ceil
    return n if max_frames is None else min(n, max_frames)


class Decoder:
    """Turns a list of paths into the item stream (see the module docstring); `seq` numbers every item."""

    def __init__(
        self, every: int = 1, max_frames: int | None = None, crops: bool = False, detect_every: int = DETECT_EVERY_FRAME
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.every = every
        self.max_frames = max_frames
        self.crops = crops
        self.detect_every = detect_every
        self._seq = 0

    def _next(self) -> int:
        self._seq += 1
        return self._seq - 1

    def items(self, paths: list[Path], stopped: Callable[[], bool] = lambda: False) -> Iterator[Item]:
        for file, path in enumerate(paths):
            if stopped():
                return
            kind = file_kind(path, self.crops)
            if kind == "video":
                yield from self._video(file, path)
            else:
                yield from self._image(file, path, kind)

    def _image(self, file: int, path: Path, kind: Kind) -> Iterator[Item]:
        try:
            image = read_image(path)
        except MediaError as err:
            yield FileStart(self._next(), file, path, kind, None)
            yield FileEnd(self._next(), file, error=err.reason)
            return
        yield FileStart(self._next(), file, path, kind, 1)
        yield FrameJob(self._next(), file, 0, 0.0, image, kind)
        yield FileEnd(self._next(), file, frames=1)

    def _video(self, file: int, path: Path) -> Iterator[Item]:
        try:
            container = open_video(path)
        except MediaError as err:
            yield FileStart(self._next(), file, path, "video", None)
            yield FileEnd(self._next(), file, error=err.reason)
            return
        sent = 0
        decoded = 0
        reason: str | None = None
        try:
            stream = container.streams.video[0]
            total = int(stream.frames) if stream.frames and stream.frames > 0 else None
            if total is None and stream.duration and stream.time_base and stream.average_rate:
                total = max(1, round(float(stream.duration * stream.time_base * stream.average_rate)))
            if total is None and container.duration and stream.average_rate:  # Matroska: only the segment's
                total = max(1, round(container.duration / av.time_base * float(stream.average_rate)))
            rate = float(stream.average_rate) if stream.average_rate else 25.0
            expected = frames_to_score(total, self.every, self.max_frames)
            yield FileStart(self._next(), file, path, "video", expected, self.detect_every)
            try:
                for frame in container.decode(stream):
                    index = decoded
                    decoded += 1
                    if index % self.every:
                        continue
                    t = float(frame.time) if frame.time is not None else index / rate
                    yield FrameJob(self._next(), file, index, t, to_bgr(frame))
                    sent += 1
                    if self.max_frames is not None and sent >= self.max_frames:
                        break
                else:
                    # A clean end of file well short of what the header announces: a file cut short whose
                    # container (Matroska) lets FFmpeg stop without an error.
                    if total is not None and decoded < total - max(2, total // 50):
                        reason = f"the file announces {total} frames (truncated or damaged)"
            except (av.FFmpegError, OSError) as err:
                reason = ffmpeg_reason(err)
        finally:
            container.close()
        if decoded == 0:
            why = f"no frame could be decoded: {reason}" if reason else "no frame could be decoded"
            yield FileEnd(self._next(), file, error=why)
        elif reason is not None:
            log.warning("%s: decoding stopped after %d frames: %s", path, decoded, reason)
            yield FileEnd(self._next(), file, frames=sent, warning=f"decoding stopped after {decoded} frames: {reason}")
        else:
            yield FileEnd(self._next(), file, frames=sent)
