"""Reading dataset media: which files count as videos or images, frame sampling and decoding.

Videos are decoded with PyAV, sequentially, so any container FFmpeg reads works and frame indices are
decode order (what a dataset's "frame N" means). Every failure raises `MediaError` naming the file and
what went wrong, so a training run can log and skip a bad file instead of dying on it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import cv2
import numpy as np

from swapwatch.errors import MediaError

log = logging.getLogger(__name__)

VIDEO_EXTS: frozenset[str] = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})
"""Lower-case suffixes read as videos."""

IMAGE_EXTS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
"""Lower-case suffixes read as still images."""


def is_video(path: str | Path) -> bool:
    """True when the file's suffix (any case) is a video extension."""
    return Path(path).suffix.lower() in VIDEO_EXTS


def is_image(path: str | Path) -> bool:
    """True when the file's suffix (any case) is an image extension."""
    return Path(path).suffix.lower() in IMAGE_EXTS


def is_media(path: str | Path) -> bool:
    """True for a video or an image, judged by suffix."""
    return is_video(path) or is_image(path)


def media_files(folder: str | Path) -> list[Path]:
    """Every image or video under `folder`, at any depth, skipping hidden entries; sorted."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = Path(dirpath) / name
            if not name.startswith(".") and is_media(path):
                found.append(path)
    return sorted(found)


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


def open_video(path: Path) -> av.container.InputContainer:
    """Open a file as a video container, turning every failure into a MediaError with the reason."""
    if not path.is_file():
        raise MediaError(path, "file not found")
    if path.stat().st_size == 0:
        raise MediaError(path, "the file is empty")
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError) as err:
        raise MediaError(path, f"not a readable video: {ffmpeg_reason(err)}") from None
    if not container.streams.video:
        container.close()
        raise MediaError(path, "no video stream in the file")
    return container


def ffmpeg_reason(err: Exception) -> str:
    """FFmpeg's own message (e.g. 'Invalid data found when processing input') without the file name."""
    strerror = getattr(err, "strerror", None)
    return str(strerror) if strerror else str(err) or type(err).__name__


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


def to_bgr(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as an upright (H, W, 3) uint8 BGR array, honouring the display rotation."""
    img = frame.to_ndarray(format="bgr24")
    rotation = int(getattr(frame, "rotation", 0) or 0) % 360
    # FFmpeg's display matrix angle is counter-clockwise; np.rot90 with k>0 also turns counter-clockwise.
    if rotation in (90, 180, 270):
        img = np.ascontiguousarray(np.rot90(img, k=rotation // 90))
    return img


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


def read_image(path: str | Path) -> np.ndarray:
    """Read a still image as (H, W, 3) uint8 BGR (EXIF orientation applied, alpha dropped, 16-bit scaled)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise MediaError(p, "file not found") from None
    except OSError as err:
        raise MediaError(p, f"could not read the file: {err.strerror or err}") from None
    if not data:
        raise MediaError(p, "the file is empty")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise MediaError(p, "not a decodable image (corrupt, truncated or an unsupported format)")
    if img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / 65535.0)
    return img
