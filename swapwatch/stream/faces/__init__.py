"""Face pipeline shared by training and the live monitor: detect, filter, align.

Typical use::

    from swapwatch.media.image import read_image
    from swapwatch.stream.faces import DetectorConfig, FacePipeline, load_detector

    pipeline = FacePipeline(load_detector(DetectorConfig()), size=224, margin=0.15, crop_size=256)
    crops = pipeline.process(read_image("frame.jpg"))

Every model input goes through one resampling chain (`chain.py`): `align_face` at the canonical crop
size (a model's `alignment.size`, `CANONICAL_SIZE` by default), then `to_input` to the input size;
`face_input` is the two steps on a frame.
"""

from swapwatch.stream.faces.align import (
    ALIGNMENT,
    align_face,
    alignment_spec,
    similarity_matrix,
    template_landmarks,
)
from swapwatch.stream.faces.chain import CANONICAL_SIZE, face_input, to_input
from swapwatch.stream.faces.config import DetectorConfig
from swapwatch.stream.faces.detector import FaceDetector, load_detector
from swapwatch.stream.faces.insightface_pack import InsightFaceDetector
from swapwatch.stream.faces.pipeline import FacePipeline
from swapwatch.stream.faces.retinaface_embedded import EmbeddedRetinaFace
from swapwatch.stream.faces.types import AlignedFace, Face

__all__ = [
    "ALIGNMENT",
    "CANONICAL_SIZE",
    "AlignedFace",
    "DetectorConfig",
    "EmbeddedRetinaFace",
    "Face",
    "FaceDetector",
    "FacePipeline",
    "InsightFaceDetector",
    "align_face",
    "alignment_spec",
    "face_input",
    "load_detector",
    "similarity_matrix",
    "template_landmarks",
    "to_input",
]
