"""The face stage: find each frame's faces, align them on the shared template, preprocess the crops.

It is split in two steps so that the part that must see frames in order stays small:
- `locate` (one thread, interpolation mode only): `KeyframeInterpolator` (scan/interpolate.py) runs
  the detector on every Nth frame and interpolates each face's box and landmarks between two
  agreeing detections, detecting the frames between when they disagree (faces came or went, a cut).
  It needs a file's frames in order, so it is one thread, and it does nothing but detection and
  bookkeeping: about a fifth of the detector's work of a plain loop.
- `finish` (several worker threads): aligns and preprocesses the faces `locate` placed; with
  detection on every frame (`detect_every=1`) it also runs the detector itself, frames being
  independent then. Workers share one detector session (ONNX Runtime accepts concurrent `run` calls;
  with intra-op threads = 1 each call runs on its caller's thread). Frames come out of the workers
  in any order and are put back in order downstream.
Keeping two or more threads busy matters on a shared machine too: the kernel shares the cores per
runnable thread, so a pipeline with one busy thread loses its share to a loop running two.

Crops go through the shared resampling chain (`faces.chain.face_input`): aligned at the model's
canonical crop size (`alignment.size`, the crop it was trained on), then shrunk to its input size;
`--crops` images are shrunk by the chain's last step alone (`to_input`).

Crops leave this stage preprocessed (float32 NCHW, via `engine.preprocess`), so the scorer's thread
only concatenates and runs inference, and the frame image is dropped here.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from swapwatch.engine.base import Engine
from swapwatch.errors import SwapwatchError
from swapwatch.stream.faces.chain import face_input, to_input
from swapwatch.stream.faces.detector import FaceDetector
from swapwatch.stream.scan.cadence import DETECT_EVERY_FRAME
from swapwatch.stream.scan.interpolate import KeyframeInterpolator, PlacedFace
from swapwatch.stream.scan.items import (
    FaceFrame,
    FaceInfo,
    FileEnd,
    FileStart,
    FrameJob,
    Item,
)


def _box(box: np.ndarray) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (round(float(v), 1) for v in box)
    return (x1, y1, x2, y2)


class FaceStage:
    """`locate(item)` (one thread; only needed when `interpolating`) then `finish(item)` (any thread).

    `engine` is only used for its `input_size`, its alignment margin and size, and `preprocess`.
    """

    def __init__(self, detector: FaceDetector, engine: Engine, detect_every: int = DETECT_EVERY_FRAME) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        self.detector = detector
        self.engine = engine
        self.size = int(engine.input_size)
        self.margin = float(engine.meta.alignment.margin)
        self.crop_size = int(engine.meta.alignment.size)
        self.detect_every = detect_every
        self._interp: dict[int, KeyframeInterpolator] = {}
        self._lock = threading.Lock()
        self.detections = 0

    @property
    def interpolating(self) -> bool:
        return self.detect_every > 1

    def _count_detection(self) -> None:
        with self._lock:
            self.detections += 1

    # --- step 1: in order, one thread -------------------------------------------------------------

    def locate(self, item: Item) -> list[Item]:
        """Place faces on video frames by keyframe detection + interpolation; returns the items now
        ready, in order (a frame waits for the next keyframe, so zero or several)."""
        if isinstance(item, FrameJob):
            interp = self._interp.get(item.file)
            if interp is None:
                return [item]
            try:
                ready = interp.push(item)
            except (SwapwatchError, ValueError) as err:  # the detector refused this frame
                return [FaceFrame(item.seq, item.file, item.index, error=str(err))]
            for job, faces in ready:
                job.placed = faces
            return [job for job, _ in ready]
        if isinstance(item, FileStart):
            if item.kind == "video" and self.interpolating:
                self._interp[item.file] = KeyframeInterpolator(
                    self.detector, self.detect_every, on_detect=self._count_detection
                )
            return [item]
        if isinstance(item, FileEnd):
            interp = self._interp.pop(item.file, None)
            ready_jobs: list[Item] = []
            if interp is not None:
                try:
                    for job, faces in interp.finish():
                        job.placed = faces
                        ready_jobs.append(job)
                except (SwapwatchError, ValueError) as err:
                    item.warning = item.warning or f"the last frames could not be processed: {err}"
            return [*ready_jobs, item]
        return [item]

    # --- step 2: any order, any number of threads ---------------------------------------------------

    def finish(self, item: Item) -> Item:
        """A `FrameJob` becomes a `FaceFrame` (crops aligned and preprocessed); other items pass."""
        if not isinstance(item, FrameJob):
            return item
        if item.placed is not None:
            return self._placed(item, item.placed)
        return self._detect_and_align(item)

    def _align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        return face_input(image, landmarks, self.size, self.margin, self.crop_size).crop

    def _crops(self, out: FaceFrame, crops: Sequence[np.ndarray]) -> FaceFrame:
        if crops:
            out.crops = self.engine.preprocess(np.stack(crops))
        return out

    def _placed(self, job: FrameJob, faces: list[PlacedFace]) -> FaceFrame:
        out = FaceFrame(job.seq, job.file, job.index)
        try:
            crops = [self._align(job.image, f.landmarks) for f in faces]
            out.faces = [FaceInfo(_box(f.box), round(f.score, 4), f.track, f.detected) for f in faces]
            return self._crops(out, crops)
        except (SwapwatchError, ValueError) as err:
            return FaceFrame(job.seq, job.file, job.index, error=str(err))

    def _detect_and_align(self, job: FrameJob) -> FaceFrame:
        out = FaceFrame(job.seq, job.file, job.index)
        try:
            if job.kind == "crop":
                out.faces = [FaceInfo(box=None, det_score=None)]
                return self._crops(out, [to_input(job.image, self.size)])
            faces = self.detector.detect(job.image)
            self._count_detection()
            crops = [self._align(job.image, f.landmarks) for f in faces]
            out.faces = [FaceInfo(_box(f.box), round(float(f.score), 4)) for f in faces]
            return self._crops(out, crops)
        except (SwapwatchError, ValueError) as err:
            return FaceFrame(job.seq, job.file, job.index, error=str(err))
