"""The face detector interface every stage codes against, and the factory that builds one from config."""

from __future__ import annotations

from swapwatch.stream.faces.config import DetectorConfig
from swapwatch.stream.faces.detector_backends import DETECTOR_BACKENDS
from swapwatch.stream.faces.detector_base import FaceDetector, check_image, keep_large_enough, scale_to_max_side

__all__ = ["FaceDetector", "check_image", "keep_large_enough", "load_detector", "scale_to_max_side"]


def load_detector(cfg: DetectorConfig | None = None) -> FaceDetector:
    """Build the detector `cfg` describes (default: the embedded RetinaFace, which needs no files).

    Raises ModelFileError when an insightface pack is missing or holds no detection model.
    """
    cfg = cfg or DetectorConfig()
    return DETECTOR_BACKENDS[cfg.type](cfg)
