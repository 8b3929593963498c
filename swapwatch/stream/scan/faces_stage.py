"""The face stage: detect (or track), align on the shared template and preprocess each frame's faces.

Two modes, chosen by `detect_every`:
- 1 (the default): the detector runs on every frame, exactly as a plain loop would, so scores are
  the ones the sequential path gives. Frames are independent, so several workers can share one
  detector session (ONNX Runtime sessions accept concurrent `run` calls; each worker's call runs on
  its own thread with intra-op threads = 1) and frames are put back in order downstream.
- N > 1: `FaceTracking` (the monitor's detect-every-N + tracker, swapwatch/stream/face_tracking.py)
  runs the detector on every Nth frame, and sooner when a face appears, goes missing or the scene is
  empty; frames between use the tracker's predicted box and landmarks. A track is confirmed on its
  first detection here (`min_hits=1`, where the monitor uses 2): offline, a face seen once must be
  scored on that frame, as the sequential path does. A tracker is stateful and sees a file's frames in
  order, so this mode runs one worker.

Crops leave this stage preprocessed (float32 NCHW, via `engine.preprocess`), so the scorer's thread
only concatenates and runs inference, and the frame image is dropped here.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from swapwatch.engine.onnx_runtime import resize_crop
from swapwatch.errors import SwapwatchError
from swapwatch.stream.face_tracking import FaceTracking
from swapwatch.stream.faces.align import align_face
from swapwatch.stream.faces.detector import FaceDetector
from swapwatch.stream.scan.items import FaceFrame, FaceInfo, FileEnd, FileStart, FrameJob, Item
from swapwatch.stream.tracker import TrackerConfig


def _box(box: np.ndarray) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (round(float(v), 1) for v in box)
    return (x1, y1, x2, y2)


class FaceStage:
    """Turns `FrameJob`s into `FaceFrame`s; other items pass through unchanged.

    `engine` is only used for its `input_size`, its alignment margin and `preprocess`. Not thread-safe
    in tracking mode (one instance, one worker); in detect-every-frame mode `handle` may be called from
    several threads at once.
    """

    def __init__(
        self, detector: FaceDetector, engine: Any, detect_every: int = 1, tracker: TrackerConfig | None = None
    ) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        self.detector = detector
        self.engine = engine
        self.size = int(engine.input_size)
        self.margin = float(engine.meta.alignment.margin)
        self.detect_every = detect_every
        self.tracker_cfg = tracker or TrackerConfig(min_hits=1)
        self._kinds: dict[int, str] = {}
        self._tracking: dict[int, FaceTracking] = {}
        self.detections = 0
        self._lock = threading.Lock()

    def handle(self, item: Item) -> Item:
        if isinstance(item, FrameJob):
            return self._frame(item)
        if isinstance(item, FileStart):
            self._kinds[item.file] = item.kind
            if item.kind == "video" and self.detect_every > 1:
                self._tracking[item.file] = FaceTracking(
                    self.detector, self.tracker_cfg, self.detect_every, self.size, self.margin
                )
        elif isinstance(item, FileEnd):
            self._kinds.pop(item.file, None)
            tracking = self._tracking.pop(item.file, None)
            if tracking is not None:
                with self._lock:
                    self.detections += tracking.detections_run
        return item

    def _frame(self, job: FrameJob) -> FaceFrame:
        out = FaceFrame(job.seq, job.file, job.index)
        try:
            kind = self._kinds.get(job.file)
            if kind == "crop":
                crops = [resize_crop(job.image, self.size)]
                out.faces = [FaceInfo(box=None, det_score=None)]
            elif job.file in self._tracking:
                tracked = self._tracking[job.file].process(job.image, job.t)
                crops = [f.crop.crop for f in tracked]
                out.faces = [FaceInfo(_box(f.box), round(f.score, 4), f.track_id, f.detected) for f in tracked]
            else:
                faces = self.detector.detect(job.image)
                with self._lock:
                    self.detections += 1
                crops = [align_face(job.image, f.landmarks, self.size, self.margin).crop for f in faces]
                out.faces = [FaceInfo(_box(f.box), round(float(f.score), 4)) for f in faces]
            if crops:
                out.crops = self.engine.preprocess(np.stack(crops))
        except (SwapwatchError, ValueError) as err:
            out.faces, out.crops = [], None
            out.error = str(err)
        return out
