"""The face detector interface, and the input checks and size rules every detector backend shares.

The backends build on this module and nothing above it, so the factory (detector.py) can import
them through the registry (detector_backends.py) without either importing the other back.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from swapwatch.stream.faces.types import Face


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in one BGR uint8 image.

    `detect` returns faces sorted by score (highest first) in source-image pixels, landmarks in the
    ArcFace order (left eye, right eye, nose, left mouth corner, right mouth corner; "left" meaning
    smaller x in the image for an upright face). `name` identifies the model for logs and metadata.
    """

    name: str

    def detect(self, image_bgr: np.ndarray) -> list[Face]: ...


def check_image(image_bgr: np.ndarray) -> None:
    """Reject anything that is not an (H, W, 3) uint8 image, naming what was passed."""
    if not isinstance(image_bgr, np.ndarray):
        raise TypeError(f"expected a numpy BGR image, got {type(image_bgr).__name__}")
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 BGR image, got shape {image_bgr.shape} dtype {image_bgr.dtype}")
    if image_bgr.shape[0] == 0 or image_bgr.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {image_bgr.shape}")


def scale_to_max_side(height: int, width: int, max_side: int) -> float:
    """Downscale factor so the longer side fits `max_side`; never upscales (1.0 for small frames)."""
    return min(1.0, max_side / float(max(height, width)))


def keep_large_enough(faces: list[Face], min_face: int) -> list[Face]:
    """Drop faces whose shorter box side is below `min_face` pixels (order preserved)."""
    if min_face <= 0:
        return faces
    return [f for f in faces if min(f.width, f.height) >= min_face]
