"""The one face record every stage takes and returns (detector, tracker, aligner, dataset cache)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Face:
    """A detected face in source-image pixel coordinates.

    box: (4,) float32 x1, y1, x2, y2. landmarks: (5, 2) float32 in the ArcFace order
    (left eye, right eye, nose tip, left mouth corner, right mouth corner; "left" as seen in the image).
    score: detector confidence in 0..1.
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float
    track_id: int | None = None

    def __post_init__(self) -> None:
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(5, 2)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])


@dataclass
class AlignedFace:
    """A face warped onto the shared template.

    crop: (size, size, 3) uint8 BGR. landmarks: (5, 2) float32 in crop pixels.
    matrix: (2, 3) float32 affine map from source pixels to crop pixels.
    """

    crop: np.ndarray
    landmarks: np.ndarray
    matrix: np.ndarray
    face: Face | None = field(default=None, repr=False)
