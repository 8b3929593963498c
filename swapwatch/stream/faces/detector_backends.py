"""The registry of face detector backends: `DetectorConfig.type` -> the factory that builds that detector."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from swapwatch.stream.faces.config import DetectorConfig
from swapwatch.stream.faces.detector_base import FaceDetector
from swapwatch.stream.faces.insightface_pack import InsightFaceDetector
from swapwatch.stream.faces.retinaface_embedded import EmbeddedRetinaFace

DetectorFactory = Callable[[DetectorConfig], FaceDetector]

DETECTOR_BACKENDS: Mapping[str, DetectorFactory] = {
    "embedded": EmbeddedRetinaFace.from_config,
    "insightface": InsightFaceDetector.from_config,
}
"""One entry per `DetectorConfig.type`; a new backend adds its `from_config` here."""
