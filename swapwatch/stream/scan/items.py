"""What travels between the scan stages: one record type per event, each tagged with its sequence number.

Every item carries `seq`, a number the decode stage hands out in input order. Face workers may finish
frames out of order; the scoring stage puts them back in `seq` order, which is what keeps results in
input order without a barrier between files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from swapwatch.stream.scan.cadence import DETECT_EVERY_FRAME

Kind = Literal["image", "video", "crop"]


@dataclass
class FileStart:
    """A file begins. `expected_frames` is how many frames will be scored (None for an unreadable file)."""

    seq: int
    file: int
    path: Path
    kind: Kind
    expected_frames: int | None = None
    detect_every: int = DETECT_EVERY_FRAME


@dataclass
class FrameJob:
    """A decoded frame (or still image) on its way to the face stage. `t` is its time in seconds.

    `placed` is filled by the locate step when faces come from keyframe interpolation: the faces'
    boxes and landmarks on this frame, so only alignment is left to do (by any worker).
    """

    seq: int
    file: int
    index: int
    t: float
    image: np.ndarray
    kind: Kind = "video"
    placed: list[Any] | None = None


@dataclass
class FileEnd:
    """A file is done decoding. `error` means nothing usable came out of it; `warning` that part of it did.

    `frames` is how many frames (or images) were sent on for this file.
    """

    seq: int
    file: int
    frames: int = 0
    error: str | None = None
    warning: str | None = None


@dataclass
class FaceInfo:
    """One face found on a frame: where, how sure the detector was, and its track when tracking is on.

    `detected` is False on frames where the box and landmarks were predicted by the tracker.
    """

    box: tuple[float, float, float, float] | None
    det_score: float | None
    track: int | None = None
    detected: bool = True


@dataclass
class FaceFrame:
    """A frame after the face stage: its faces and their preprocessed crops (N, 3, S, S) float32.

    The frame image itself is dropped here, so what waits for the scorer is a few crops, not a frame.
    `scores` is filled by the scoring stage. `error` is set when this one frame could not be processed.
    """

    seq: int
    file: int
    index: int
    faces: list[FaceInfo] = field(default_factory=list)
    crops: np.ndarray | None = None
    scores: np.ndarray | None = None
    error: str | None = None

    @property
    def n_crops(self) -> int:
        return 0 if self.crops is None else int(self.crops.shape[0])


@dataclass
class StageDone:
    """A producer thread finished (one per thread, so the consumer knows when all of them have)."""

    seq: int = -1


@dataclass
class StageFailed:
    """A stage hit an unexpected error (a bug, not a bad file): the consumer re-raises it."""

    stage: str
    error: BaseException
    seq: int = -1


Item = FileStart | FrameJob | FileEnd | FaceFrame | StageDone | StageFailed
