"""Build a TensorRT plan from an exported ONNX model (TensorRT 11: strongly typed, no precision flags).

In TensorRT 11 every network is strongly typed: each layer runs in the dtype the ONNX graph gives it.
There is no FP16/INT8 builder flag and no calibrator any more, so the precision of a plan is decided
before this step, by the ONNX file (see swapwatch.calib: a mixed-FP16 graph, or a Q/DQ INT8 graph made
by post-training calibration). This module therefore builds whatever it is given, with:

- one optimization profile on the batch dimension (min/opt/max from `BatchProfile`), the spatial dims
  pinned to the model's input size (a dynamic H/W in the ONNX is fixed here, a different static one is
  refused);
- a workspace limit (`set_memory_pool_limit(WORKSPACE, ...)`): lower saves memory next to other GPU
  work, at the risk of TensorRT skipping the fastest tactics;
- a timing cache file: loaded when present, saved after the build, so rebuilding on the same GPU and
  TensorRT (a new model, a new profile) skips most kernel timing;
- TF32 for FP32 layers left on by default (TensorRT's default on Ampere and later): ~10-bit mantissa
  matmuls/convolutions, typically <1e-3 change in a probability; `allow_tf32=False` for bit-closer FP32.

Parse and build failures raise PlanBuildError naming the ONNX file with TensorRT's own error list.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from swapwatch.engine.base import BackendUnavailable
from swapwatch.engine.cuda_probe import cuda_gpu
from swapwatch.engine.trt_profile import BatchProfile
from swapwatch.errors import ModelFileError

log = logging.getLogger(__name__)

GPU_EXTRA = 'pip install ".[gpu]"'


class PlanBuildError(ModelFileError):
    """TensorRT could not parse or build the ONNX model; the message carries TensorRT's errors."""


def import_tensorrt() -> ModuleType:
    """`import tensorrt`, or BackendUnavailable saying what is missing.

    The small `tensorrt` bindings wheel can be present yet fail to import (libnvinfer / libnvonnxparser
    missing), so the import itself is attempted, not just looked up.
    """
    if importlib.util.find_spec("tensorrt") is None:
        raise BackendUnavailable(f"the tensorrt package is not installed ({GPU_EXTRA} on a machine with an NVIDIA GPU)")
    try:
        import tensorrt
    except (ImportError, OSError) as err:
        raise BackendUnavailable(
            f"tensorrt is installed but does not load ({err}); it needs the NVIDIA libraries of the [gpu] extra "
            "and a CUDA driver"
        ) from None
    return tensorrt


def require_cuda(device: int = 0, what: str = "TensorRT") -> tuple[str, str]:
    """(GPU name, compute capability) of `device`, or BackendUnavailable '<what> needs an NVIDIA GPU ...'."""
    gpu = cuda_gpu(device)
    if gpu is None:
        raise BackendUnavailable(f"{what} needs an NVIDIA GPU with CUDA; found none")
    return gpu


def cuda_device_context(device: int) -> contextlib.AbstractContextManager[Any]:
    """Make `device` current for TensorRT calls (torch owns the CUDA context when it is installed)."""
    if importlib.util.find_spec("torch") is not None:
        import torch

        return torch.cuda.device(device)
    if device != 0:
        log.warning("torch is not installed: cannot select CUDA device %d, TensorRT uses the current device", device)
    return contextlib.nullcontext()


def make_logger(trt: ModuleType) -> Any:
    """A tensorrt.ILogger that forwards to Python logging and keeps the errors for our exceptions."""

    class _Logger(trt.ILogger):  # type: ignore[name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            s = trt.ILogger.Severity
            if severity in (s.INTERNAL_ERROR, s.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == s.WARNING:
                log.warning("TensorRT: %s", msg)
            elif severity == s.INFO:
                log.debug("TensorRT: %s", msg)

    return _Logger()


@dataclass
class BuildReport:
    plan_path: Path
    seconds: float
    input_name: str
    output_name: str
    plan_bytes: int
    timing_cache: Path | None


def _check_input_shape(onnx_path: Path, name: str, shape: tuple[int, ...], input_size: int) -> None:
    """The ONNX input must be (N, 3, S, S) with S = input_size or dynamic (-1) on N, H, W."""
    ok = len(shape) == 4 and shape[1] in (3, -1) and all(d in (input_size, -1) for d in shape[2:])
    if not ok:
        raise PlanBuildError(
            onnx_path, f"input {name!r} has shape {shape}; expected (batch, 3, {input_size}, {input_size}) "
            "as the metadata sidecar says"
        )


def _load_timing_cache(trt: ModuleType, config: Any, path: Path | None) -> Any:
    data = path.read_bytes() if path is not None and path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise ValueError("rejected")
        if data:
            log.info("TensorRT timing cache: loaded %s (%d bytes)", path, len(data))
        return cache
    except Exception as err:  # noqa: BLE001 - a corrupt or foreign cache only costs build time
        log.warning("TensorRT timing cache %s unusable (%s); starting an empty one", path, err)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        return cache


def _atomic_write_bytes(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(memoryview(data))
    os.replace(tmp, path)


def build_plan(
    onnx_path: str | Path,
    plan_path: str | Path,
    input_size: int,
    profile: BatchProfile | None = None,
    *,
    workspace_bytes: int | None = 1 << 30,
    timing_cache: str | Path | None = None,
    device: int = 0,
    allow_tf32: bool = True,
    optimization_level: int | None = None,
) -> BuildReport:
    """Parse `onnx_path` with TensorRT's ONNX parser and write a serialized plan to `plan_path`.

    Needs tensorrt and a CUDA GPU (BackendUnavailable otherwise). The precision is the ONNX graph's.
    `optimization_level` (0-5, TensorRT default 3) trades build time for tactic search.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    profile = profile or BatchProfile()
    cache_path = Path(timing_cache) if timing_cache is not None else None
    if not onnx_path.is_file():
        raise ModelFileError(onnx_path, "no such ONNX file to build a TensorRT plan from")
    trt = import_tensorrt()
    require_cuda(device)
    logger = make_logger(trt)
    t0 = time.perf_counter()
    with cuda_device_context(device):
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # TensorRT 11: strongly typed is the only mode, no flags
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
            raise PlanBuildError(
                onnx_path, "TensorRT's ONNX parser failed:\n  " + "\n  ".join(errors or ["(no error reported)"])
            )
        if network.num_inputs != 1 or network.num_outputs != 1:
            raise PlanBuildError(
                onnx_path, f"expected 1 input and 1 output, the graph has {network.num_inputs} and {network.num_outputs}"
            )
        inp, out = network.get_input(0), network.get_output(0)
        _check_input_shape(onnx_path, inp.name, tuple(inp.shape), input_size)

        config = builder.create_builder_config()
        if workspace_bytes:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
        if not allow_tf32:
            config.clear_flag(trt.BuilderFlag.TF32)
        if optimization_level is not None:
            config.builder_optimization_level = int(optimization_level)
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(inp.name, *profile.shapes(input_size))
        config.add_optimization_profile(opt_profile)
        _load_timing_cache(trt, config, cache_path)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise PlanBuildError(
                onnx_path, "TensorRT failed to build a plan:\n  " + "\n  ".join(logger.errors or ["(no error reported)"])
            )
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(plan_path, serialized)
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write_bytes(cache_path, config.get_timing_cache().serialize())
    seconds = time.perf_counter() - t0
    size = plan_path.stat().st_size
    log.info("built TensorRT plan %s from %s in %.1f s (%.1f MB, batch %d/%d/%d)", plan_path, onnx_path.name,
             seconds, size / 1e6, profile.min_batch, profile.opt_batch, profile.max_batch)
    return BuildReport(plan_path, seconds, inp.name, out.name, size, cache_path)
