"""Precision and calibration: INT8 (Q/DQ) and FP16 ONNX variants of an exported model, score calibration.

TensorRT 11 builds strongly typed networks only: the precision of every layer comes from the ONNX
graph, not from builder flags. So the reduced-precision engines start here, as ONNX files:

* `swapwatch.calib.int8`  - `model.int8.onnx`: post-training static quantization with explicit
  QuantizeLinear/DequantizeLinear nodes, calibrated on real aligned face crops;
* `swapwatch.calib.fp16`  - `model.fp16.onnx`: mixed precision, numerically sensitive ops kept in FP32;
* `swapwatch.calib.score` - raw score -> calibrated probability (Platt / isotonic) and thresholds for
  target false-positive rates, stored in the sidecar's `score_calibration`;
* `swapwatch.calib.crops` - calibration crops from a folder (aligned crops or raw media);
* `swapwatch.cli.calibrate_command` - `swapwatch calibrate`.

This module holds the pieces those share: the derived sidecar, and the FP32-vs-variant comparison
(AUC, score drift, CPU throughput). Heavy imports stay inside functions, so importing
`swapwatch.calib.score` at inference time pulls in nothing but numpy and the metadata model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from swapwatch.engine.metadata import EngineMetadata, Precision, file_sha256, write_metadata


def derived_metadata(
    source: EngineMetadata, source_path: Path, out: Path, precision: Precision, notes: dict[str, Any]
) -> Path:
    """Write `out`'s sidecar: a copy of the FP32 sidecar with the new precision and model hash.

    `notes` is merged into the free-form `export` dict (e.g. {"calibration": {...}, "quantization":
    {...}}), together with `derived_from` naming the FP32 file and its hash, so a variant can always
    be traced back to the model it was made from. The score calibration is inherited; refit it on
    the variant's own scores (`swapwatch calibrate --scores`) when its thresholds matter.
    """
    export = dict(source.export)
    export.update(notes)
    export["derived_from"] = {"model": source_path.name, "model_sha256": source.model_sha256}
    meta = source.model_copy(update={"precision": precision, "model_sha256": file_sha256(out), "export": export})
    return write_metadata(out, EngineMetadata.model_validate(meta.model_dump()))


class PreprocessedCrops:
    """uint8 BGR crops that become normalised NCHW float32 slice by slice.

    Calibration sets are large (1,500 crops at 224 px are 0.9 GB as float32) while every consumer
    (ORT's calibration reader, the FP16 range probe, scoring) walks them in small batches, so the
    float tensor is only ever made one slice at a time with the engine's own `preprocess`.
    """

    def __init__(self, crops: np.ndarray, preprocess: Any) -> None:
        self.crops = crops
        self.preprocess = preprocess
        size = crops.shape[1] if crops.ndim == 4 else 0
        self.shape = (len(crops), 3, size, size)
        self.ndim = 4

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("PreprocessedCrops supports slices only")
        return self.preprocess(self.crops[index])


def iter_batches(batch: np.ndarray | PreprocessedCrops, size: int) -> Any:
    """Yield float32 NCHW chunks of at most `size` crops."""
    for start in range(0, len(batch), size):
        yield np.ascontiguousarray(batch[start : start + size], dtype=np.float32)


def measure_interleaved(
    models: dict[str, Path],
    batch: np.ndarray | PreprocessedCrops,
    batch_size: int,
    threads: int = 2,
    seconds: float = 3.0,
    rounds: int = 6,
) -> dict[str, float]:
    """Crops per second of each model, measured in alternating bursts: the median over `rounds` rounds.

    On a shared machine the load drifts over seconds; timing FP32 for 3 s and then INT8 for 3 s puts
    that drift straight into the speed-up (we saw +-0.05 between runs). Alternating short bursts of
    each model, all sessions open at once, exposes them to the same load, and the median over rounds
    drops the bursts a neighbour's spike landed on. `seconds` is the total time per model.
    """
    from swapwatch.engine.onnx_runtime import OnnxEngine

    head = np.asarray(batch[:batch_size], np.float32)  # the first crops, tiled or cut to batch_size
    x = np.ascontiguousarray(np.concatenate([head] * -(-batch_size // len(head)))[:batch_size])
    engines = {name: OnnxEngine(path, threads=threads) for name, path in models.items()}
    try:
        for engine in engines.values():
            engine.infer(x)
        per_round: dict[str, list[float]] = {name: [] for name in engines}
        burst = seconds / max(1, rounds)
        for _ in range(max(1, rounds)):
            for name, engine in engines.items():
                runs = 0
                start = time.perf_counter()
                while runs < 3 or time.perf_counter() - start < burst:
                    engine.infer(x)
                    runs += 1
                per_round[name].append(runs * batch_size / (time.perf_counter() - start))
        return {name: float(np.median(v)) for name, v in per_round.items()}
    finally:
        for engine in engines.values():
            engine.close()


@dataclass
class VariantComparison:
    """A reduced-precision model against its FP32 source on the same crops."""

    precision: str
    path: str
    runnable: bool
    reason: str | None = None
    auc_fp32: float | None = None
    auc: float | None = None
    max_abs_drift: float | None = None
    mean_abs_drift: float | None = None
    throughput: dict[str, float] = field(default_factory=dict)
    throughput_fp32: dict[str, float] = field(default_factory=dict)
    speedup: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def auc_or_none(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels)
    if y.size == 0 or y.min() == y.max():
        return None
    return float(roc_auc_score(y, np.asarray(scores, np.float64)))


def compare_variant(
    precision: str,
    path: Path,
    batch: np.ndarray | PreprocessedCrops,
    labels: np.ndarray,
    fp32_scores: np.ndarray,
    fp32_path: Path | None,
    variant_scores: np.ndarray | None,
    reason: str | None = None,
    batch_sizes: tuple[int, ...] = (8, 1),
    threads: int = 2,
    seconds: float = 3.0,
) -> VariantComparison:
    """AUC, score drift and throughput of a variant; `variant_scores` None means ORT cannot run it.

    Throughput is measured against `fp32_path` in alternating bursts (`measure_interleaved`); None or
    `seconds` 0 skips it.
    """
    cmp = VariantComparison(precision=precision, path=str(path), runnable=variant_scores is not None, reason=reason)
    cmp.auc_fp32 = auc_or_none(labels, fp32_scores)
    if variant_scores is None:
        return cmp
    drift = np.abs(np.asarray(variant_scores, np.float64) - np.asarray(fp32_scores, np.float64))
    cmp.auc = auc_or_none(labels, variant_scores)
    cmp.max_abs_drift = float(drift.max()) if drift.size else 0.0
    cmp.mean_abs_drift = float(drift.mean()) if drift.size else 0.0
    if seconds > 0 and fp32_path is not None:
        for bs in batch_sizes:
            key = f"batch_{bs}"
            tp = measure_interleaved({"fp32": fp32_path, precision: path}, batch, bs, threads=threads, seconds=seconds)
            cmp.throughput[key], cmp.throughput_fp32[key] = tp[precision], tp["fp32"]
            cmp.speedup[key] = tp[precision] / tp["fp32"]
    return cmp
