"""Export a training checkpoint to ONNX (MASM subspaces folded into dense weights) with its sidecar.

The export is checked against torch on real aligned face crops (the package-shipped sample faces, or
crops the caller passes); an export whose scores drift past `tolerance` is deleted and refused.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from swapwatch.engine.metadata import AlignmentSpec, EngineMetadata, file_sha256, write_metadata
from swapwatch.engine.onnx_runtime import OnnxEngine
from swapwatch.errors import NoFaceError, SwapwatchError
from swapwatch.stream.faces.align import template_landmarks
from swapwatch.train.models.base import ScoreModel

log = logging.getLogger(__name__)


@dataclass
class ExportReport:
    path: Path
    sidecar: Path
    max_abs_diff: float
    fold_max_abs_diff: float
    n_crops: int


def sample_crops(size: int, margin: float, limit: int = 16) -> np.ndarray:
    """Aligned crops of the real faces that installed packages ship, at the model's input size."""
    from swapwatch.samples import sample_face_images
    from swapwatch.stream.faces import FacePipeline, load_detector
    from swapwatch.stream.faces.pipeline import read_image

    pipeline = FacePipeline(load_detector(), size=size, margin=margin)
    crops = []
    for path in sample_face_images().values():
        crops.extend(a.crop for a in pipeline.process(read_image(path)))
    if not crops:
        raise NoFaceError("no face found in the package sample images for the export check")
    return np.stack(crops[:limit])


def export_onnx(
    checkpoint: Path,
    out: Path,
    opset: int = 17,
    tolerance: float = 1e-3,
    crops: np.ndarray | None = None,
) -> ExportReport:
    from swapwatch.train.loop import model_from_checkpoint

    model, state = model_from_checkpoint(checkpoint)
    train_cfg = state.get("train_config", {})
    margin = float(train_cfg.get("data", {}).get("cache", {}).get("margin", 0.15))
    size = int(model.input_size)
    plain = ScoreModel(model.export_module()).eval()
    reference = ScoreModel(model).eval()

    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter still works and is simplest here
        torch.onnx.export(
            plain, (dummy,), str(out), input_names=["input"], output_names=["score"],
            dynamic_axes={"input": {0: "batch"}, "score": {0: "batch"}}, opset_version=opset, dynamo=False,
        )

    backbone = model.backbone_info()
    meta = EngineMetadata(
        method=model.method,
        input_size=size,
        mean=list(model.mean),
        std=list(model.std),
        alignment=AlignmentSpec(
            name="arcface5", size=size, margin=margin, template=template_landmarks(size, margin).tolist()
        ),
        model_sha256=file_sha256(out),
        checkpoint=str(checkpoint),
        backbone=backbone,
        data=state.get("data_summary", {}),
        export={"exporter": "torch.onnx (legacy)", "opset": opset, "torch": torch.__version__},
    )
    write_metadata(out, meta)

    if crops is None:
        crops = sample_crops(size, margin)
    engine = OnnxEngine(out)
    x = engine.preprocess(crops)
    with torch.no_grad():
        ref = reference(torch.from_numpy(x)).numpy()
        folded = plain(torch.from_numpy(x)).numpy()
    got = engine.infer(x)
    diff = float(np.max(np.abs(got - ref)))
    fold_diff = float(np.max(np.abs(folded - ref)))
    if diff > tolerance:
        out.unlink(missing_ok=True)
        out.with_name(out.name + ".json").unlink(missing_ok=True)
        raise SwapwatchError(
            f"{out}: export refused: ONNX Runtime differs from torch by {diff:.2e} on {len(crops)} real face crops "
            f"(tolerance {tolerance:.1e})"
        )
    meta.export.update({"max_abs_diff": diff, "fold_max_abs_diff": fold_diff, "check_crops": int(len(crops))})
    sidecar = write_metadata(out, meta)
    log.info("exported %s (max |onnx - torch| = %.2e on %d crops)", out, diff, len(crops))
    return ExportReport(out, sidecar, diff, fold_diff, int(len(crops)))
