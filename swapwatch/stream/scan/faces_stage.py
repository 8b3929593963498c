"""The face stage: detect (or interpolate), align on the shared template and preprocess each frame's faces.

Two modes, chosen by `detect_every`:
- 1: the detector runs on every frame, exactly as a plain loop would, so scores are the ones the
  sequential path gives. Frames are independent, so several workers can share one detector session
  (ONNX Runtime sessions accept concurrent `run` calls; with intra-op threads = 1 each call runs on
  its caller's thread) and frames are put back in order downstream.
- N > 1: `KeyframeInterpolator` (swapwatch/stream/scan/interpolate.py) detects every Nth frame and
  interpolates each face's box and landmarks between two agreeing detections, falling back to
  detecting every frame between them when they do not agree (faces came or went, a scene cut).
  It holds a file's frames in order, so this mode runs one worker; the decode and scoring stages
  still overlap with it.

Crops leave this stage preprocessed (float32 NCHW, via `engine.preprocess`), so the scorer's thread
only concatenates and runs inference, and the frame image is dropped here.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from swapwatch.engine.onnx_runtime import resize_crop
from swapwatch.errors import SwapwatchError
from swapwatch.stream.faces.align import align_face
from swapwatch.stream.faces.detector import FaceDetector
from swapwatch.stream.scan.interpolate import KeyframeInterpolator, PlacedFace
from swapwatch.stream.scan.items import FaceFrame, FaceInfo, FileEnd, FileStart, FrameJob, Item


def _box(box: np.ndarray) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (round(float(v), 1) for v in box)
    return (x1, y1, x2, y2)


class FaceStage:
    """Turns `FrameJob`s into `FaceFrame`s; other items pass through. `handle` returns the items now
    ready (in interpolation mode a frame may wait for the next keyframe, so zero or several).

    `engine` is only used for its `input_size`, its alignment margin and `preprocess`. In
    interpolation mode one thread must call `handle`; with detection on every frame, several may.
    """

    def __init__(self, detector: FaceDetector, engine: Any, detect_every: int = 1) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        self.detector = detector
        self.engine = engine
        self.size = int(engine.input_size)
        self.margin = float(engine.meta.alignment.margin)
        self.detect_every = detect_every
        self._kinds: dict[int, str] = {}
        self._interp: dict[int, KeyframeInterpolator] = {}
        self._lock = threading.Lock()
        self.detections = 0

    def _count_detection(self) -> None:
        with self._lock:
            self.detections += 1

    def handle(self, item: Item) -> list[Item]:
        if isinstance(item, FrameJob):
            interp = self._interp.get(item.file)
            if interp is None:
                return [self._frame(item)]
            try:
                return [self._placed(job, faces) for job, faces in interp.push(item)]
            except (SwapwatchError, ValueError) as err:  # the detector refused this frame
                return [FaceFrame(item.seq, item.file, item.index, error=str(err))]
        if isinstance(item, FileStart):
            self._kinds[item.file] = item.kind
            if item.kind == "video" and self.detect_every > 1:
                self._interp[item.file] = KeyframeInterpolator(
                    self.detector, self.detect_every, on_detect=self._count_detection
                )
            return [item]
        if isinstance(item, FileEnd):
            self._kinds.pop(item.file, None)
            interp = self._interp.pop(item.file, None)
            ready: list[Item] = []
            if interp is not None:
                try:
                    ready = [self._placed(job, faces) for job, faces in interp.finish()]
                except (SwapwatchError, ValueError) as err:
                    item.warning = item.warning or f"the last frames could not be processed: {err}"
            return [*ready, item]
        return [item]

    def _crops(self, out: FaceFrame, crops: Sequence[np.ndarray]) -> FaceFrame:
        if crops:
            out.crops = self.engine.preprocess(np.stack(crops))
        return out

    def _placed(self, job: FrameJob, faces: list[PlacedFace]) -> FaceFrame:
        out = FaceFrame(job.seq, job.file, job.index)
        try:
            crops = [align_face(job.image, f.landmarks, self.size, self.margin).crop for f in faces]
            out.faces = [FaceInfo(_box(f.box), round(f.score, 4), f.track, f.detected) for f in faces]
            return self._crops(out, crops)
        except (SwapwatchError, ValueError) as err:
            return FaceFrame(job.seq, job.file, job.index, error=str(err))

    def _frame(self, job: FrameJob) -> FaceFrame:
        out = FaceFrame(job.seq, job.file, job.index)
        try:
            if self._kinds.get(job.file) == "crop":
                out.faces = [FaceInfo(box=None, det_score=None)]
                return self._crops(out, [resize_crop(job.image, self.size)])
            faces = self.detector.detect(job.image)
            self._count_detection()
            crops = [align_face(job.image, f.landmarks, self.size, self.margin).crop for f in faces]
            out.faces = [FaceInfo(_box(f.box), round(float(f.score), 4)) for f in faces]
            return self._crops(out, crops)
        except (SwapwatchError, ValueError) as err:
            return FaceFrame(job.seq, job.file, job.index, error=str(err))
