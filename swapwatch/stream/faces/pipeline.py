"""Detect, filter and align: the one path from a BGR frame to template-aligned face crops.

The dataset cache and the scoring paths share `FacePipeline`'s detector settings, size filter and
geometry. `process` makes model inputs through the shared resampling chain (`chain.face_input`:
aligned at the canonical `crop_size`, then shrunk to `size`); the training cache, whose crops *are*
the canonical crops, aligns the faces `faces()` selects straight at its own size.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from swapwatch.stream.faces.chain import CANONICAL_SIZE, face_input
from swapwatch.stream.faces.detector import FaceDetector, check_image, keep_large_enough
from swapwatch.stream.faces.types import AlignedFace, Face


class FacePipeline:
    """Turns a frame into aligned crops of its faces.

    `max_faces` keeps the first N faces by `keep` order: "score" (the detector's confidence, the
    default, good for the monitor which watches every face) or "largest" (box area, better for a
    dataset cache where the subject is the biggest face and bystanders can score just as high).
    `min_face` is an extra floor on the shorter box side on top of the detector's own `min_face`,
    for callers (e.g. a training cache) that want only faces big enough to carry detail.
    `crop_size` is the canonical aligned-crop side crops go through before they are shrunk to `size`
    (a model's `alignment.size`; `CANONICAL_SIZE` by default); crop_size == size is a direct warp.
    """

    def __init__(
        self,
        detector: FaceDetector,
        size: int = 224,
        margin: float = 0.15,
        max_faces: int | None = None,
        *,
        min_face: int = 0,
        keep: Literal["score", "largest"] = "score",
        crop_size: int = CANONICAL_SIZE,
    ) -> None:
        if max_faces is not None and max_faces < 1:
            raise ValueError(f"max_faces must be >= 1 or None, got {max_faces}")
        if keep not in ("score", "largest"):
            raise ValueError(f"keep must be 'score' or 'largest', got {keep!r}")
        self.detector = detector
        self.size = size
        self.margin = margin
        self.max_faces = max_faces
        self.min_face = min_face
        self.keep = keep
        self.crop_size = int(crop_size)

    def select(self, faces: list[Face]) -> list[Face]:
        """Apply the size floor, then the ordering and the max_faces cap."""
        faces = keep_large_enough(faces, self.min_face)
        if self.keep == "largest":
            faces = sorted(faces, key=lambda f: f.width * f.height, reverse=True)
        return faces if self.max_faces is None else faces[: self.max_faces]

    def faces(self, image_bgr: np.ndarray) -> list[Face]:
        """The detected faces this pipeline keeps, in `keep` order."""
        check_image(image_bgr)
        return self.select(self.detector.detect(image_bgr))

    def process(self, image_bgr: np.ndarray) -> list[AlignedFace]:
        """Model inputs at `size` for the kept faces, through the canonical crop at `crop_size`."""
        return [
            face_input(image_bgr, f.landmarks, self.size, self.margin, self.crop_size, face=f)
            for f in self.faces(image_bgr)
        ]
