"""Export a training checkpoint to an engine file with its metadata sidecar, checked on real faces.

Formats and precisions (`swapwatch export --format F --precision P`):

| format | fp32 | fp16 | int8 |
| --- | --- | --- | --- |
| onnx | folded graph, dynamic batch | + swapwatch.calib.fp16 (mixed FP16 graph) | + swapwatch.calib.int8 (Q/DQ graph from calibration crops) |
| tensorrt | ONNX above -> TensorRT plan | FP16 ONNX -> plan | Q/DQ ONNX -> plan |
| torch-tensorrt | compiled program (.ep) | Torch-TensorRT autocast | refused (needs ModelOpt) |
| triton-repo | a Triton model repository around the onnx (or, `platform="tensorrt"`, tensorrt) export above | as onnx / tensorrt | as onnx / tensorrt |

`export_triton_repo` exports into `REPO/NAME/VERSION/model.onnx|model.plan` and writes config.pbtxt
(swapwatch/engine/triton_repo.py, which also lays out a repository around an existing .onnx or plan,
or the embedded default model, without torch).

TensorRT 11 takes the precision from the ONNX graph (no builder flags), so a TensorRT plan keeps the
ONNX it was built from beside it (`model.plan` + `model.onnx`): the plan cache rebuilds stale plans from
it, and ONNX Runtime can run it where TensorRT cannot.

Every export is compared with the (unfolded) torch checkpoint on real aligned face crops (the faces
that installed packages ship, or crops the caller passes); past the tolerance the files are deleted and
the export refused. The default tolerance follows the precision: 1e-3 for FP32 ONNX, 5e-3 for FP32
TensorRT (TF32 convolutions), 2e-2 for FP16 and 1e-1 for INT8, on probabilities in [0, 1].
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from swapwatch.engine.base import BackendUnavailable, Engine
from swapwatch.engine.metadata import (
    EngineMetadata,
    Precision,
    file_sha256,
    read_metadata,
    sidecar_path,
    write_metadata,
)
from swapwatch.engine.onnx_runtime import OnnxEngine
from swapwatch.engine.plan_cache import descriptor_path
from swapwatch.engine.torch_runtime import checkpoint_crop_size, checkpoint_margin, metadata_for_checkpoint
from swapwatch.engine.triton_repo import (
    DEFAULT_NAME,
    DEFAULT_QUEUE_DELAY_US,
    TritonRepo,
    check_repo_options,
    write_triton_repo,
)
from swapwatch.engine.trt_profile import BatchProfile
from swapwatch.errors import ConfigError, ModelFileError, SwapwatchError
from swapwatch.samples import model_sample_crops, sample_crops  # noqa: F401 - sample_crops re-exported for callers of export
from swapwatch.train.models.base import ScoreModel

log = logging.getLogger(__name__)

Format = Literal["onnx", "tensorrt", "torch-tensorrt"]
FORMATS: tuple[str, ...] = ("onnx", "tensorrt", "torch-tensorrt")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
SUFFIXES: dict[str, tuple[str, ...]] = {"onnx": (".onnx",), "tensorrt": (".plan", ".engine", ".trt"), "torch-tensorrt": (".ep",)}


@dataclass
class ExportReport:
    path: Path
    sidecar: Path
    max_abs_diff: float
    fold_max_abs_diff: float
    n_crops: int
    format: str = "onnx"
    precision: str = "fp32"
    files: list[Path] = field(default_factory=list)  # every file written, engine and sidecars included


def default_tolerance(fmt: str, precision: str) -> float:
    if precision == "int8":
        return 1e-1
    if precision == "fp16":
        return 2e-2
    return 5e-3 if fmt in ("tensorrt", "torch-tensorrt") else 1e-3


def _torch_scores(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).float().numpy().reshape(-1)


def _remove(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def export_onnx(
    checkpoint: Path,
    out: Path,
    opset: int = 17,
    tolerance: float = 1e-3,
    crops: np.ndarray | None = None,
) -> ExportReport:
    """FP32 ONNX with a dynamic batch dim, checked against the unfolded checkpoint on real crops."""
    from swapwatch.train.loop import model_from_checkpoint

    model, state = model_from_checkpoint(checkpoint)
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
    meta = metadata_for_checkpoint(
        model, state, checkpoint, file_sha256(out),
        export={"format": "onnx", "exporter": "torch.onnx (legacy)", "opset": opset, "torch": torch.__version__},
    )
    write_metadata(out, meta)

    if crops is None:
        crops = sample_crops(size, checkpoint_margin(state), crop_size=checkpoint_crop_size(state))
    engine = OnnxEngine(out)
    x = engine.preprocess(crops)
    ref = _torch_scores(reference, x)
    fold_diff = float(np.max(np.abs(_torch_scores(plain, x) - ref)))
    diff = float(np.max(np.abs(engine.infer(x) - ref)))
    engine.close()
    if diff > tolerance:
        _remove([out, sidecar_path(out)])
        raise SwapwatchError(
            f"{out}: export refused: ONNX Runtime differs from torch by {diff:.2e} on {len(crops)} real face crops "
            f"(tolerance {tolerance:.1e})"
        )
    meta.export.update({"max_abs_diff": diff, "fold_max_abs_diff": fold_diff, "check_crops": len(crops)})
    sidecar = write_metadata(out, meta)
    log.info("exported %s (max |onnx - torch| = %.2e on %d crops)", out, diff, len(crops))
    return ExportReport(out, sidecar, diff, fold_diff, len(crops), "onnx", "fp32", [out, sidecar])


# ------------------------------------------------------------------------------- reduced-precision ONNX

CALIB_FUNCTIONS = {
    # precision -> (module, function): the entry points of swapwatch.calib that write a variant + its sidecar
    "fp16": ("swapwatch.calib.fp16", "calibrate_fp16"),
    "int8": ("swapwatch.calib.int8", "calibrate_int8"),
}


def calib_function(precision: str) -> Callable[..., Any]:
    """The swapwatch.calib entry point for `precision`, or SwapwatchError saying what is missing."""
    module_name, wanted = CALIB_FUNCTIONS[precision]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and not module_name.startswith(err.name):
            raise  # the calib module exists but one of its own dependencies is missing: report that
        raise SwapwatchError(
            f"--precision {precision} needs {module_name}.{wanted}(), which this installation does not have yet "
            "(the calibration module is part of swapwatch.calib); export fp32 meanwhile"
        ) from None
    fn = getattr(module, wanted, None)
    if not callable(fn):
        raise SwapwatchError(f"--precision {precision}: {module_name} has no {wanted}() function")
    return fn


def _reduced_onnx(
    fp32_onnx: Path, out: Path, precision: Precision, calib_crops: np.ndarray | None,
    int8_target: Literal["cpu", "tensorrt"], calib_source: str | None,
) -> EngineMetadata:
    """Convert the checked FP32 ONNX at `fp32_onnx` to `precision` at `out` (file + sidecar); its metadata.

    Both go through swapwatch.calib on uint8 BGR crops: `calibrate_fp16` (the crops drive its
    activation-range rule: nodes that see large values stay FP32) and `calibrate_int8` (Q/DQ scales),
    INT8 in the form its target runs best: u8 activations for ONNX Runtime on x86 ("cpu"), s8 with zero
    point 0 for TensorRT ("tensorrt", the only form TensorRT's explicit quantization accepts).
    """
    fn = calib_function(precision)
    if calib_crops is None:
        meta = read_metadata(fp32_onnx)
        calib_crops = model_sample_crops(meta)
        calib_source = "package sample faces"
        if precision == "int8":
            log.warning("int8: calibrating on the %d package sample faces only; pass --calib-crops with "
                        "hundreds of real crops for a deployable model", len(calib_crops))
    if precision == "int8":
        from swapwatch.calib.int8 import Int8Config

        fn(fp32_onnx, calib_crops, out, Int8Config(target=int8_target), source=calib_source)
    else:
        fn(fp32_onnx, calib_crops, out, source=calib_source)
    if not out.is_file():
        raise SwapwatchError(f"{out}: the {precision} converter wrote no file")
    meta = read_metadata(out)
    if meta.precision != precision:
        raise SwapwatchError(f"{sidecar_path(out)}: the {precision} converter wrote precision={meta.precision}")
    return meta


def export_reduced_onnx(
    checkpoint: Path, out: Path, precision: Precision, opset: int = 17, tolerance: float | None = None,
    crops: np.ndarray | None = None, calib_crops: np.ndarray | None = None,
    int8_target: Literal["cpu", "tensorrt"] = "cpu", calib_source: str | None = None,
) -> ExportReport:
    """ONNX at `precision` (fp32 export first, then swapwatch.calib), with sidecar and parity check."""
    if precision == "fp32":
        return export_onnx(checkpoint, out, opset, tolerance if tolerance is not None else 1e-3, crops)
    calib_function(precision)  # fail before the slow export when the converter is missing
    tolerance = default_tolerance("onnx", precision) if tolerance is None else tolerance
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="swapwatch-export-") as tmp:
        fp32 = Path(tmp) / f"{out.stem}.fp32.onnx"
        base = export_onnx(checkpoint, fp32, opset, crops=crops)
        meta = _reduced_onnx(fp32, out, precision, calib_crops, int8_target, calib_source)
    meta.export["format"] = "onnx"
    files = [out, sidecar_path(out)]
    try:
        engine = OnnxEngine(out)
    except ModelFileError as err:
        if precision != "fp16":
            _remove(files)
            raise
        # ORT's CPU provider lacks FP16 kernels for some ops; the graph is meant for GPUs, where the
        # TensorRT / ORT CUDA load checks it. Keep it, and say in the sidecar that it was not checked here.
        log.warning("fp16: ONNX Runtime CPU cannot run %s, parity not checked on the CPU: %s", out.name, err)
        meta.export["max_abs_diff"] = None
        meta.export["parity"] = f"not checked: ONNX Runtime CPU cannot run this graph ({err.expected[:200]})"
        sidecar = write_metadata(out, meta)
        return ExportReport(out, sidecar, float("nan"), base.fold_max_abs_diff, 0, "onnx", precision, files)
    return _check_engine(checkpoint, out, engine, meta, precision, "onnx", tolerance, crops,
                         base.fold_max_abs_diff, files)


def _check_engine(
    checkpoint: Path, out: Path, engine: Engine, meta: EngineMetadata, precision: str, fmt: str, tolerance: float,
    crops: np.ndarray | None, fold_diff: float, files: list[Path],
) -> ExportReport:
    """Compare `engine` with the unfolded checkpoint on real crops; refuse (delete `files`) past tolerance."""
    from swapwatch.train.loop import model_from_checkpoint

    model, _ = model_from_checkpoint(checkpoint)
    if crops is None:
        crops = model_sample_crops(meta)
    try:
        x = engine.preprocess(crops)
        diff = float(np.max(np.abs(engine.infer(x) - _torch_scores(ScoreModel(model).eval(), x))))
    finally:
        engine.close()
    if diff > tolerance:
        _remove(files)
        raise SwapwatchError(
            f"{out}: export refused: {fmt} {precision} differs from torch by {diff:.2e} on {len(crops)} real face "
            f"crops (tolerance {tolerance:.1e})"
        )
    meta.export.update({"max_abs_diff": diff, "check_crops": len(crops), "tolerance": tolerance})
    sidecar = write_metadata(out, meta)  # a plan's descriptor stays valid: the plan bytes did not change
    log.info("exported %s (%s %s, max |engine - torch| = %.2e on %d crops)", out, fmt, precision, diff, len(crops))
    return ExportReport(out, sidecar, diff, fold_diff, len(crops), fmt, precision, files)


# ------------------------------------------------------------------------------------------ GPU formats


def export_tensorrt(
    checkpoint: Path, out: Path, precision: Precision = "fp32", *, opset: int = 17, tolerance: float | None = None,
    crops: np.ndarray | None = None, calib_crops: np.ndarray | None = None, profile: BatchProfile | None = None,
    workspace_bytes: int | None = 1 << 30, timing_cache: Path | None = None, device: int = 0,
    calib_source: str | None = None,
) -> ExportReport:
    """ONNX at `precision` (kept beside the plan as `<out stem>.onnx`), then a TensorRT plan built from it."""
    from swapwatch.engine.plan_cache import current_target, finalize_plan
    from swapwatch.engine.tensorrt_runtime import TensorRTEngine
    from swapwatch.engine.trt_build import build_plan, import_tensorrt, require_cuda

    require_cuda(device, "TensorRT export")  # before any slow step
    import_tensorrt()
    if precision != "fp32":
        calib_function(precision)
    profile = profile or BatchProfile()
    tolerance = default_tolerance("tensorrt", precision) if tolerance is None else tolerance
    onnx_path = out.with_suffix(".onnx")
    onnx_report = export_reduced_onnx(checkpoint, onnx_path, precision, opset, crops=crops, calib_crops=calib_crops,
                                      int8_target="tensorrt", calib_source=calib_source)
    onnx_meta = read_metadata(onnx_path)
    target = current_target(device)
    files = [out, sidecar_path(out), descriptor_path(out)]
    try:
        build_plan(onnx_path, out, onnx_meta.input_size, profile, workspace_bytes=workspace_bytes,
                   timing_cache=timing_cache, device=device)
        finalize_plan(out, onnx_path, onnx_meta, target, profile, workspace_bytes)
    except BaseException:
        _remove(files)
        raise
    engine = TensorRTEngine(out, device=device, target=target)
    report = _check_engine(checkpoint, out, engine, read_metadata(out), precision, "tensorrt", tolerance, crops,
                           onnx_report.fold_max_abs_diff, files)
    report.files += onnx_report.files
    return report


def export_torch_tensorrt(
    checkpoint: Path, out: Path, precision: Precision = "fp32", *, tolerance: float | None = None,
    crops: np.ndarray | None = None, profile: BatchProfile | None = None, device: int = 0,
) -> ExportReport:
    """Compile the folded module with Torch-TensorRT and save the program (.ep) with sidecar and descriptor."""
    from swapwatch.engine.plan_cache import current_target
    from swapwatch.engine.torch_tensorrt_runtime import (
        TorchTensorRTEngine,
        compile_checkpoint,
        import_torch_tensorrt,
        precision_kwargs,
        save_program,
    )
    from swapwatch.engine.trt_build import require_cuda

    require_cuda(device, "torch-tensorrt export")
    ttrt = import_torch_tensorrt()
    precision_kwargs(ttrt.dynamo.compile, precision)  # refuse int8 / missing autocast before compiling
    profile = profile or BatchProfile()
    tolerance = default_tolerance("torch-tensorrt", precision) if tolerance is None else tolerance
    target = current_target(device)
    files = [out, sidecar_path(out), descriptor_path(out)]
    try:
        compiled, inputs, meta = compile_checkpoint(checkpoint, precision, profile, device)
        save_program(compiled, inputs, out, meta, checkpoint, target, profile)
    except BaseException:
        _remove(files)
        raise
    engine = TorchTensorRTEngine(out, device=device, target=target)
    return _check_engine(checkpoint, out, engine, read_metadata(out), precision, "torch-tensorrt", tolerance, crops,
                         0.0, files)


def export_engine(
    checkpoint: Path, out: Path, fmt: Format = "onnx", precision: Precision = "fp32", *, opset: int = 17,
    tolerance: float | None = None, crops: np.ndarray | None = None, calib_crops: np.ndarray | None = None,
    profile: BatchProfile | None = None, workspace_bytes: int | None = 1 << 30, timing_cache: Path | None = None,
    device: int = 0, calib_source: str | None = None,
) -> ExportReport:
    """Dispatch on format; see the module docstring. GPU formats raise BackendUnavailable without a GPU."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if out.suffix.lower() not in SUFFIXES[fmt]:
        raise ConfigError(f"--out {out}: a {fmt} engine file must end in {' or '.join(SUFFIXES[fmt])}")
    if fmt == "onnx":
        return export_reduced_onnx(checkpoint, out, precision, opset, tolerance, crops, calib_crops,
                                   calib_source=calib_source)
    if fmt == "tensorrt":
        return export_tensorrt(checkpoint, out, precision, opset=opset, tolerance=tolerance, crops=crops,
                               calib_crops=calib_crops, profile=profile, workspace_bytes=workspace_bytes,
                               timing_cache=timing_cache, device=device, calib_source=calib_source)
    return export_torch_tensorrt(checkpoint, out, precision, tolerance=tolerance, crops=crops, profile=profile,
                                 device=device)


def export_triton_repo(
    checkpoint: Path, repo: Path, platform: Literal["onnx", "tensorrt"] = "onnx", precision: Precision = "fp32", *,
    name: str = DEFAULT_NAME, version: int = 1, max_batch: int = 32, max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    opset: int = 17, tolerance: float | None = None, crops: np.ndarray | None = None,
    calib_crops: np.ndarray | None = None, profile: BatchProfile | None = None, workspace_bytes: int | None = 1 << 30,
    timing_cache: Path | None = None, device: int = 0, calib_source: str | None = None,
) -> tuple[ExportReport, TritonRepo]:
    """Export `checkpoint` (onnx, or a TensorRT plan with a profile up to `max_batch`) straight into a Triton
    model repository, `REPO/NAME/VERSION/model.onnx|model.plan` with its sidecar, and write config.pbtxt."""
    if platform not in ("onnx", "tensorrt"):
        raise ConfigError(f"--triton-platform: {platform!r} is not one of onnx, tensorrt")
    check_repo_options(name, version, max_batch, max_queue_delay_us)  # before the slow export
    out = repo / name / str(version) / ("model.onnx" if platform == "onnx" else "model.plan")
    if platform == "tensorrt":
        profile = profile or BatchProfile(max_batch=max_batch, opt_batch=min(8, max_batch))
        if profile.max_batch != max_batch:
            raise ConfigError(f"--max-batch {max_batch}: the TensorRT profile must end at the same batch "
                              f"(profile max_batch {profile.max_batch})")
    report = export_engine(checkpoint, out, platform, precision, opset=opset, tolerance=tolerance, crops=crops,
                           calib_crops=calib_crops, profile=profile, workspace_bytes=workspace_bytes,
                           timing_cache=timing_cache, device=device, calib_source=calib_source)
    layout = write_triton_repo(out, repo, name, version=version, max_batch=max_batch,
                               max_queue_delay_us=max_queue_delay_us)
    report.files.append(layout.config)
    return report, layout


__all__ = [
    "BackendUnavailable", "ExportReport", "calib_function", "default_tolerance", "export_engine", "export_onnx",
    "export_reduced_onnx", "export_tensorrt", "export_torch_tensorrt", "export_triton_repo", "sample_crops",
]
