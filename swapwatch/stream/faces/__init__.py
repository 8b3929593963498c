"""Face pipeline shared by training and the live monitor: detect, filter, align.

Typical use::

    from swapwatch.stream.faces import DetectorConfig, FacePipeline, load_detector, read_image

    pipeline = FacePipeline(load_detector(DetectorConfig()), size=224, margin=0.15)
    crops = pipeline.process(read_image("frame.jpg"))
"""

from swapwatch.stream.faces.align import (
    ALIGNMENT,
    align_face,
    alignment_spec,
    similarity_matrix,
    template_landmarks,
)
from swapwatch.stream.faces.config import DetectorConfig
from swapwatch.stream.faces.detector import FaceDetector, load_detector
from swapwatch.stream.faces.insightface_pack import InsightFaceDetector
from swapwatch.stream.faces.onnx_session import make_session
from swapwatch.stream.faces.pipeline import FacePipeline, read_image
from swapwatch.stream.faces.retinaface_embedded import EmbeddedRetinaFace
from swapwatch.stream.faces.types import AlignedFace, Face

__all__ = [
    "ALIGNMENT",
    "AlignedFace",
    "DetectorConfig",
    "EmbeddedRetinaFace",
    "Face",
    "FaceDetector",
    "FacePipeline",
    "InsightFaceDetector",
    "align_face",
    "alignment_spec",
    "load_detector",
    "make_session",
    "read_image",
    "similarity_matrix",
    "template_landmarks",
]
