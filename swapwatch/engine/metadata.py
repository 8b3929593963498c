"""The metadata sidecar that travels with every engine file (`model.onnx` -> `model.onnx.json`).

The monitor never guesses preprocessing: input size, normalisation, channel order and the alignment
template all come from here, and a sidecar whose model hash does not match its model file is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, ValidationError

from swapwatch.config import StrictModel, format_validation_error
from swapwatch.errors import ModelFileError

FORMAT: Final = "swapwatch-engine/1"

#: The numeric precision an engine runs at (fp32 export, FP16 or INT8 Q/DQ variant, or a TensorRT build).
Precision = Literal["fp32", "fp16", "int8"]


class AlignmentSpec(StrictModel):
    name: str = Field(..., description="Template name, e.g. arcface5.")
    size: int = Field(
        ...,
        description="Crop side the template was scaled to when the model was trained: the canonical aligned crop "
        "(the training cache's size), which the monitor aligns at and then shrinks to input_size.",
    )
    margin: float = Field(..., description="Fraction of the crop left around the template face.")
    template: list[list[float]] = Field(..., description="5x2 landmark positions at `size`.")


class ScoreCalibration(StrictModel):
    method: Literal["identity", "platt", "isotonic"] = Field("identity", description="Raw score -> probability map.")
    params: dict[str, Any] = Field(default_factory=dict, description="Parameters of the mapping.")
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Score thresholds for target false-positive rates, e.g. {'fpr_0.01': 0.7}."
    )


class EngineMetadata(StrictModel):
    format: Literal["swapwatch-engine/1"] = FORMAT
    method: str = Field(..., description="Detector family: masm | airl.")
    input_size: int = Field(..., description="Square input side in pixels.")
    mean: list[float] = Field(..., description="Per-channel mean (RGB, 0..1 scale).")
    std: list[float] = Field(..., description="Per-channel std (RGB, 0..1 scale).")
    color: Literal["RGB", "BGR"] = Field("RGB", description="Channel order the model expects.")
    layout: Literal["NCHW"] = "NCHW"
    output: Literal["probability"] = Field("probability", description="The output is P(fake) per crop, shape (N,).")
    alignment: AlignmentSpec
    score_calibration: ScoreCalibration = Field(default_factory=ScoreCalibration)
    precision: Precision = "fp32"
    model_sha256: str = Field(..., description="SHA-256 of the engine file this sidecar describes.")
    checkpoint: str | None = Field(None, description="Checkpoint the engine was exported from.")
    backbone: dict[str, Any] = Field(default_factory=dict, description="Backbone name, pretrained flag, source.")
    data: dict[str, Any] = Field(default_factory=dict, description="Summary of the training data.")
    export: dict[str, Any] = Field(default_factory=dict, description="Exporter, opset, parity check result.")


def sidecar_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_metadata(model_path: str | Path, meta: EngineMetadata) -> Path:
    path = sidecar_path(model_path)
    path.write_text(json.dumps(meta.model_dump(mode="json"), indent=2) + "\n")
    return path


def read_metadata(model_path: str | Path, verify_hash: bool = True) -> EngineMetadata:
    """Read and check the sidecar of `model_path`; every problem names the file."""
    path = sidecar_path(model_path)
    if not path.is_file():
        raise ModelFileError(path, f"missing metadata sidecar for {Path(model_path).name} (export writes it)")
    try:
        meta = EngineMetadata.model_validate(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ModelFileError(path, f"sidecar is not valid JSON: {err}") from None
    except ValidationError as err:
        raise ModelFileError(path, format_validation_error(err, "sidecar")) from None
    if verify_hash:
        actual = file_sha256(model_path)
        if actual != meta.model_sha256:
            raise ModelFileError(
                path,
                f"sidecar does not match {Path(model_path).name}: model sha256 {actual[:12]}... "
                f"but sidecar says {meta.model_sha256[:12]}...",
            )
    return meta
