"""Faces on every frame of one stream: detect every N frames, track in between, align every live face.

The detector is the most expensive stage on a CPU (~8-12 ms per 640x360 frame here), so it runs on
every `detect_every`-th frame; the tracker carries boxes and landmarks across the frames between.
It runs sooner when the tracker needs evidence: no live track (a face may have just appeared), a
tentative track waiting for its confirming detection, or a track the last detection missed
(occluded or gone: re-acquiring it quickly keeps its id and shortens the gap in its scores).

Trade-off: every one of those triggers makes detection run on consecutive frames for a while
(for an empty scene, on every frame). That keeps new faces' latency at one frame; a deployment
that prefers CPU to latency raises `detect_every`, which still bounds the regular cadence.

Crops: detection frames use the detector's landmarks; frames in between use the tracker's
propagated landmarks (moved with the predicted box), so the crop follows the face without running
a landmark model. `TrackedFace.detected` tells which is which, for consumers that weigh them.
Each crop goes through the shared resampling chain (`faces.chain.face_input`): aligned at the model's
canonical crop size (`crop_size`, its metadata's `alignment.size`), then shrunk to the input `size`,
exactly as training shrinks its cached crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from swapwatch.stream.config import LIVE_DETECT_EVERY
from swapwatch.stream.faces.chain import CANONICAL_SIZE, face_input
from swapwatch.stream.faces.detector import FaceDetector, check_image
from swapwatch.stream.faces.types import AlignedFace, Face
from swapwatch.stream.tracker import FaceTracker, TrackerConfig


@dataclass
class TrackedFace:
    """One live face on one frame.

    box: (4,) float32 x1y1x2y2 source pixels; landmarks: (5, 2) float32 source pixels (ArcFace order);
    crop: the face aligned on the shared template (its `face` is the tracked Face);
    detected: True when box and landmarks come from this frame's detection, False when predicted;
    score: the detector confidence of the track's latest detection.
    """

    track_id: int
    box: np.ndarray
    landmarks: np.ndarray
    crop: AlignedFace
    detected: bool
    score: float


class FaceTracking:
    """Per-stream face detection + tracking + alignment. Not thread-safe; one instance per stream.

    `process(image, t)` takes frames in time order with their time in seconds (the frame's pts, or a
    monotonic clock for sources without one) and returns one `TrackedFace` per live confirmed track.
    `ended_tracks()` lists ids that ended since the last call, for the smoother to close.
    `frames` and `detections_run` count processed frames and detector runs (for metrics and bench).
    """

    def __init__(
        self,
        detector: FaceDetector,
        tracker_cfg: TrackerConfig | None = None,
        detect_every: int = LIVE_DETECT_EVERY,
        size: int = 224,
        margin: float = 0.15,
        crop_size: int = CANONICAL_SIZE,
    ) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        self.detector = detector
        self.tracker = FaceTracker(tracker_cfg)
        self.detect_every = int(detect_every)
        self.size = int(size)
        self.margin = float(margin)
        self.crop_size = int(crop_size)
        self._since_detection: int | None = None  # frames since the detector last ran; None before the first
        self.frames = 0
        self.detections_run = 0

    def should_detect(self) -> bool:
        """Whether the next frame goes through the detector (see the module docstring for the triggers)."""
        tracker = self.tracker
        return (
            self._since_detection is None
            or self._since_detection + 1 >= self.detect_every
            or not tracker.has_tracks
            or tracker.has_tentative
            or tracker.has_missed
        )

    def process(self, image_bgr: np.ndarray, t: float) -> list[TrackedFace]:
        """Faces on this frame with their track ids and aligned crops."""
        check_image(image_bgr)
        detections: list[Face] | None = None
        if self.should_detect():
            detections = self.detector.detect(image_bgr)
            self._since_detection = 0
            self.detections_run += 1
        else:
            assert self._since_detection is not None
            self._since_detection += 1
        self.frames += 1
        faces = self.tracker.update(t, detections)
        detected = self.tracker.detected_ids
        out = []
        for face in faces:
            assert face.track_id is not None
            crop = face_input(image_bgr, face.landmarks, self.size, self.margin, self.crop_size, face=face)
            out.append(
                TrackedFace(
                    track_id=face.track_id,
                    box=face.box,
                    landmarks=face.landmarks,
                    crop=crop,
                    detected=face.track_id in detected,
                    score=face.score,
                )
            )
        return out

    def ended_tracks(self) -> list[int]:
        """Ids of tracks that ended since the previous call; clears the list."""
        return self.tracker.ended_tracks()

    def reset(self) -> None:
        """Forget every track (reported by `ended_tracks`) and detect on the next frame, e.g. after a seek."""
        self.tracker.reset()
        self._since_detection = None
