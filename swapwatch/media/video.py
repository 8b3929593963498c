"""Videos with PyAV: opening a file, decoding frames to upright BGR, counting and sampling frames.

Decoding is sequential, so any container FFmpeg reads works and frame indices are decode order (what
a dataset's "frame N" means). Every failure raises `MediaError` naming the file and what went wrong,
so a caller can log and skip a bad file instead of dying on it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import numpy as np

from swapwatch.errors import MediaError
from swapwatch.media.files import require_file

log = logging.getLogger(__name__)


def ffmpeg_reason(err: BaseException) -> str:
    """FFmpeg's own message (e.g. 'Invalid data found when processing input') without the file name.

    Only `strerror` is used, never `str(err)`: that quotes the file name or URL, which for a stream
    can carry credentials.
    """
    strerror = getattr(err, "strerror", None)
    return str(strerror) if strerror else type(err).__name__


def open_video(path: str | Path) -> av.container.InputContainer:
    """Open a file as a video container, turning every failure into a MediaError with the reason.

    Reasons: "file not found", "not a file", "the file is empty", "not a readable video: <FFmpeg's
    reason>", "no video stream in the file". The caller closes the container.
    """
    p = Path(path)
    require_file(p)
    try:
        container = av.open(str(p), mode="r")
    except (av.FFmpegError, OSError) as err:
        raise MediaError(p, f"not a readable video: {ffmpeg_reason(err)}") from None
    if not container.streams.video:
        container.close()
        raise MediaError(p, "no video stream in the file")
    return container


def to_bgr(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as an upright (H, W, 3) uint8 BGR array, honouring the display rotation."""
    img: np.ndarray = frame.to_ndarray(format="bgr24")
    rotation = int(getattr(frame, "rotation", 0) or 0) % 360
    # FFmpeg's display matrix angle is counter-clockwise; np.rot90 with k>0 also turns counter-clockwise.
    if rotation in (90, 180, 270):
        img = np.ascontiguousarray(np.rot90(img, k=rotation // 90))
    return img


def count_frames(path: str | Path) -> int:
    """Number of frames in a video.

    Uses the container's frame count when it has one; when it does not (`stream.frames == 0`, common in
    Matroska/WebM and some AVI files) the video packets are counted by demuxing, which needs no decoding.
    """
    p = Path(path)
    container = open_video(p)
    try:
        stream = container.streams.video[0]
        if stream.frames and stream.frames > 0:
            return int(stream.frames)
        count = 0
        try:
            for packet in container.demux(stream):
                if packet.size > 0:
                    count += 1
        except av.FFmpegError as err:
            if count == 0:
                raise MediaError(p, f"could not read any video packet: {ffmpeg_reason(err)}") from None
            log.warning("%s: demuxing stopped after %d packets: %s", p, count, ffmpeg_reason(err))
        if count == 0:
            raise MediaError(p, "the video stream holds no frames")
        return count
    finally:
        container.close()


def sample_indices(n_frames: int, n: int) -> list[int]:
    """N frame indices spread evenly over a clip of `n_frames`, each at the centre of its segment.

    The clip is cut into `n` equal segments and the middle frame of each is taken, so neither the first
    nor the last frame (often a fade or a cut) is favoured. When `n >= n_frames` every frame is returned.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n_frames <= 0:
        return []
    if n >= n_frames:
        return list(range(n_frames))
    step = n_frames / n
    return [min(n_frames - 1, int((i + 0.5) * step)) for i in range(n)]


def read_frames(path: str | Path, indices: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Decode a video sequentially and yield `(index, bgr_frame)` for the wanted indices, in order.

    Decoding stops after the last wanted frame. A truncated or partly corrupt file yields what decodes
    and logs the shortfall; MediaError is raised only when the file opens to nothing at all (no frame
    decodes), or cannot be opened.
    """
    p = Path(path)
    wanted = sorted({int(i) for i in indices if int(i) >= 0})
    if not wanted:
        return
    container = open_video(p)
    decoded = 0
    yielded = 0
    stopped_by: str | None = None
    try:
        stream = container.streams.video[0]
        wanted_set = set(wanted)
        last = wanted[-1]
        try:
            for frame in container.decode(stream):
                index = decoded
                decoded += 1
                if index in wanted_set:
                    yield index, to_bgr(frame)
                    yielded += 1
                if index >= last:
                    break
        except av.FFmpegError as err:
            stopped_by = ffmpeg_reason(err)
    finally:
        container.close()
    if decoded == 0:
        reason = f"no frame could be decoded: {stopped_by}" if stopped_by else "no frame could be decoded"
        raise MediaError(p, reason)
    if yielded < len(wanted):
        missing = [i for i in wanted if i >= decoded]
        log.warning(
            "%s: only %d frames decoded%s; %d of %d wanted frames missing (first missing index %d)",
            p,
            decoded,
            f" ({stopped_by})" if stopped_by else "",
            len(missing),
            len(wanted),
            missing[0] if missing else -1,
        )


def sample_video(path: str | Path, n: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(index, bgr_frame)` for `n` evenly spaced frames of a video (see `sample_indices`)."""
    yield from read_frames(path, sample_indices(count_frames(path), n))
