"""Pick and open an inference backend: `load_engine(path, backend="auto")`.

`auto` takes the fastest backend this machine can run for the given file, and logs (INFO) which one it
took and why:

1. a TensorRT plan (`.plan` / `.engine`) -> tensorrt; a Torch-TensorRT program (`.ep`) -> torch-tensorrt;
   a checkpoint (`.pt`) -> torch (the only backends that read those files);
2. an ONNX model (or none: the embedded default) ->
   a. tensorrt, through the plan cache (built once per model/GPU/TensorRT/profile), when the tensorrt
      package loads and a CUDA GPU is present;
   b. else ONNX Runtime's TensorRT EP, when this onnxruntime has it and it actually starts;
   c. else ONNX Runtime's CUDA EP, likewise;
   d. else ONNX Runtime on the CPU.
   A backend that turns out to be unusable (BackendUnavailable, or a TensorRT build that fails on this
   model) is logged as a WARNING and the next one is tried; other errors (a bad model file) propagate.

`triton` is never picked by `auto`: it sends preprocessed batches to a model served by NVIDIA Triton
Inference Server (`backend: triton` with `url: triton://HOST:PORT/MODEL[/VERSION]`, or
`load_engine("triton://...")`); see swapwatch/engine/triton_runtime.py and docs/triton.md.

Importing this module never imports torch (the monitor install has none) nor tritonclient; probing for
TensorRT imports torch only when the tensorrt package is installed, i.e. on a GPU install.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from swapwatch.config import StrictModel
from swapwatch.engine.base import BackendUnavailable, Engine
from swapwatch.engine.metadata import Precision
from swapwatch.engine.triton_runtime import TritonEngine, is_triton_url, parse_triton_url
from swapwatch.engine.trt_profile import BatchProfile
from swapwatch.errors import ConfigError, ModelFileError

log = logging.getLogger(__name__)

Backend = Literal["auto", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "torch-tensorrt",
                  "torch", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt",
                             "torch-tensorrt", "torch")
"""The backends that open a local engine file (what `--backend` options offer)."""
REMOTE_BACKENDS: tuple[str, ...] = ("triton",)
"""The backends that send batches to an inference server named by a URL (`--engine URL`)."""
PLAN_SUFFIXES = (".plan", ".engine", ".trt")


class EngineConfig(StrictModel):
    """How the monitor opens its deepfake detector (the `engine:` section of its config)."""

    backend: Backend = Field("auto", description="Inference backend; auto picks the fastest available and logs why.")
    model: Path | None = Field(
        None, description="Engine file: .onnx (+ .onnx.json), .plan, .ep or a .pt checkpoint; none = embedded default."
    )
    threads: int = Field(1, ge=1, description="CPU threads for ONNX Runtime / torch on the CPU.")
    device: int = Field(0, ge=0, description="CUDA device index for the GPU backends.")
    plan_cache: Path | None = Field(
        None, description="Folder for TensorRT plans built from ONNX; default ~/.cache/swapwatch/plans or $SWAPWATCH_PLAN_CACHE."
    )
    max_batch: int = Field(32, ge=1, description="Largest batch of a TensorRT profile (bigger batches are split).")
    opt_batch: int = Field(8, ge=1, description="Batch size TensorRT tunes its kernels for.")
    workspace_mb: int = Field(1024, ge=16, description="TensorRT builder workspace limit in MiB.")
    url: str | None = Field(
        None, description="backend triton: the served model, triton://HOST:PORT/MODEL[/VERSION] (gRPC; port 8001 "
        "when left out). The model file and its sidecar stay on the server; `swapwatch ... --engine URL` sets this."
    )
    timeout_s: float = Field(
        10.0, gt=0, le=600, description="backend triton: seconds to wait for the server and model at start (it may "
        "still be starting) and for each inference request."
    )

    @model_validator(mode="after")
    def _batches(self) -> EngineConfig:
        if self.opt_batch > self.max_batch:
            raise ValueError(f"opt_batch ({self.opt_batch}) must be <= max_batch ({self.max_batch})")
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(parse_triton_url(value, field=""))  # canonical: the default port filled in
        except ConfigError as err:
            raise ValueError(str(err)) from None

    @model_validator(mode="after")
    def _remote(self) -> EngineConfig:
        if self.backend == "triton":
            if self.url is None:
                raise ValueError("backend triton needs url: triton://HOST:PORT/MODEL[/VERSION]")
            if self.model is not None:
                raise ValueError("backend triton takes no model file: the model and its sidecar are on the server "
                                 "(leave model unset)")
        elif self.url is not None:
            raise ValueError(f"url is only for backend triton (backend is {self.backend}); "
                             "set backend: triton too, or pass --engine URL")
        return self

    def profile(self) -> BatchProfile:
        return BatchProfile(min_batch=1, opt_batch=self.opt_batch, max_batch=self.max_batch)


@dataclass
class Probe:
    """What this machine offers, as far as `auto` cares (pure data, so the choice is testable)."""

    tensorrt: str | None = None  # None = usable; else why not
    cuda: str | None = None
    ort_providers: list[str] = field(default_factory=list)


def probe_environment(device: int = 0) -> Probe:
    """Check the tensorrt package, the CUDA GPU and onnxruntime's providers, cheapest first."""
    import onnxruntime as ort

    from swapwatch.engine.trt_build import import_tensorrt

    probe = Probe(ort_providers=list(ort.get_available_providers()))
    try:
        import_tensorrt()
    except BackendUnavailable as err:
        probe.tensorrt = str(err)
        probe.cuda = "not probed (no TensorRT to use it with)"
        return probe
    from swapwatch.engine.cuda_probe import cuda_gpu

    gpu = cuda_gpu(device)
    probe.cuda = None if gpu is not None else f"no CUDA GPU (device {device})"
    return probe


def auto_order(path: Path | None, probe: Probe) -> list[tuple[str, str]]:
    """Candidate (backend, reason) pairs, best first, for `path` on a machine described by `probe`."""
    suffix = path.suffix.lower() if path is not None else ".onnx"
    if suffix in PLAN_SUFFIXES:
        return [("tensorrt", f"{path.name if path else ''} is a TensorRT plan")]
    if suffix == ".ep":
        return [("torch-tensorrt", "a Torch-TensorRT compiled program")]
    if suffix == ".pt":
        return [("torch", "a training checkpoint (export it to ONNX/TensorRT for speed)")]
    out: list[tuple[str, str]] = []
    if probe.tensorrt is None and probe.cuda is None:
        out.append(("tensorrt", "tensorrt and a CUDA GPU are present: TensorRT plan from the plan cache"))
    skipped = [f"TensorRT plan: {probe.tensorrt or probe.cuda}"] if (probe.tensorrt or probe.cuda) else []
    for backend, provider in (("onnxruntime-tensorrt", "TensorrtExecutionProvider"),
                              ("onnxruntime-cuda", "CUDAExecutionProvider")):
        if provider in probe.ort_providers:
            out.append((backend, f"onnxruntime has {provider}" + (f" ({'; '.join(skipped)})" if skipped else "")))
        else:
            skipped.append(f"onnxruntime has no {provider}")
    out.append(("onnxruntime", "CPU fallback: " + "; ".join(skipped) + f" (providers: {', '.join(probe.ort_providers)})"))
    return out


def load_engine(
    path: str | Path | None = None,
    backend: Backend = "auto",
    threads: int = 1,
    device: int = 0,
    plan_cache: str | Path | None = None,
    *,
    profile: BatchProfile | None = None,
    workspace_bytes: int = 1 << 30,
    precision: Precision = "fp32",
    timeout_s: float = 10.0,
) -> Engine:
    """Open `path` (default: the embedded ONNX model) with `backend`; see the module docstring for auto.

    `plan_cache`: folder for plans built from ONNX (tensorrt backend) and ORT TensorRT EP caches; with a
    stale `.plan` (another GPU/TensorRT, or its source ONNX changed) a plan cache makes load_engine rebuild
    it from the source ONNX recorded in its build descriptor instead of refusing it.
    `precision` matters only for torch-tensorrt compiling a `.pt` at start-up.
    A `triton://HOST:PORT/MODEL[/VERSION]` string as `path` opens the triton backend (with `backend`
    auto or triton), which waits up to `timeout_s` for the server.
    """
    if backend not in BACKENDS + REMOTE_BACKENDS:
        raise ConfigError(f"backend: {backend!r} is not one of {', '.join(BACKENDS + REMOTE_BACKENDS)}")
    if backend == "triton" or is_triton_url(path):
        if not is_triton_url(path):
            raise ConfigError(f"backend triton needs a triton://HOST:PORT/MODEL URL, not a model file ({path})")
        if backend not in ("auto", "triton"):
            raise ConfigError(f"{path}: a triton:// URL is served by backend triton, not {backend}")
        return TritonEngine(str(path), timeout_s=timeout_s)
    if threads < 1:
        raise ConfigError(f"threads: must be >= 1, got {threads}")
    p = Path(path) if path is not None else None
    if p is not None and not p.is_file():
        raise ModelFileError(p, "no such engine file")
    profile = profile or BatchProfile()
    if backend != "auto":
        return _open(backend, p, threads, device, plan_cache, profile, workspace_bytes, precision)

    candidates = auto_order(p, probe_environment(device))
    last: Exception | None = None
    for name, reason in candidates:
        try:
            engine = _open(name, p, threads, device, plan_cache, profile, workspace_bytes, precision)
        except BackendUnavailable as err:
            log.warning("auto: %s unavailable: %s", name, err)
            last = err
            continue
        except ModelFileError as err:
            from swapwatch.engine.trt_build import PlanBuildError

            if not isinstance(err, PlanBuildError) or name != "tensorrt":
                raise
            log.warning("auto: TensorRT could not build %s, trying the next backend: %s", p, err)
            last = err
            continue
        log.info("auto: using %s for %s: %s", engine.name, engine.path.name, reason)
        return engine
    assert last is not None
    raise last


def engine_from_config(cfg: EngineConfig) -> Engine:
    """Open the engine an `EngineConfig` (the monitor's `engine:` section) describes."""
    if cfg.backend == "triton":
        return load_engine(cfg.url, "triton", timeout_s=cfg.timeout_s)
    return load_engine(cfg.model, cfg.backend, cfg.threads, cfg.device, cfg.plan_cache,
                       profile=cfg.profile(), workspace_bytes=cfg.workspace_mb << 20)


def _open(
    backend: str, path: Path | None, threads: int, device: int, plan_cache: str | Path | None,
    profile: BatchProfile, workspace_bytes: int, precision: Precision,
) -> Engine:
    suffix = path.suffix.lower() if path is not None else ".onnx"
    if backend.startswith("onnxruntime"):
        _expect(backend, path, suffix, (".onnx",))
        from swapwatch.engine.onnx_runtime import OnnxEngine

        execution = {"onnxruntime": "cpu", "onnxruntime-cuda": "cuda", "onnxruntime-tensorrt": "tensorrt"}[backend]
        return OnnxEngine(path, threads=threads, execution=execution, device=device,  # type: ignore[arg-type]
                          plan_cache=plan_cache, profile=profile, workspace_bytes=workspace_bytes)
    if backend == "tensorrt":
        _expect(backend, path, suffix, (".onnx", *PLAN_SUFFIXES))
        return _open_tensorrt(path, suffix, device, plan_cache, profile, workspace_bytes)
    if backend == "torch-tensorrt":
        _expect(backend, path, suffix, (".ep", ".pt"))
        from swapwatch.engine.torch_tensorrt_runtime import TorchTensorRTEngine

        return TorchTensorRTEngine(path, device=device, profile=profile, precision=precision,  # type: ignore[arg-type]
                                   plan_cache=Path(plan_cache) if plan_cache is not None else None)
    _expect(backend, path, suffix, (".pt",))
    if importlib.util.find_spec("torch") is None:
        raise BackendUnavailable('the torch backend needs torch (pip install ".[train]")')
    from swapwatch.engine.torch_runtime import TorchEngine

    return TorchEngine(path, device=device if _torch_cuda() else "cpu", threads=threads)  # type: ignore[arg-type]


def _torch_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _expect(backend: str, path: Path | None, suffix: str, allowed: tuple[str, ...]) -> None:
    if path is None and ".onnx" not in allowed:
        raise ConfigError(f"backend {backend} needs a model file ({' or '.join(allowed)}); the embedded default is ONNX")
    if suffix not in allowed:
        raise ConfigError(f"{path}: backend {backend} reads {' or '.join(allowed)} files, not {suffix}")


def _open_tensorrt(
    path: Path | None, suffix: str, device: int, plan_cache: str | Path | None, profile: BatchProfile,
    workspace_bytes: int,
) -> Engine:
    from swapwatch.engine.plan_cache import PlanCache, current_target, fresh_plan
    from swapwatch.engine.tensorrt_runtime import TensorRTEngine
    from swapwatch.engine.trt_build import import_tensorrt, require_cuda

    import_tensorrt()
    require_cuda(device)
    target = current_target(device)
    if suffix == ".onnx":
        from swapwatch.engine.onnx_runtime import default_model_path

        plan = PlanCache(plan_cache).get_or_build(path or default_model_path(), profile, target=target,
                                                  device=device, workspace_bytes=workspace_bytes)
    else:
        assert path is not None
        cache = PlanCache(plan_cache) if plan_cache is not None else None
        plan = fresh_plan(path, target, cache, device=device, workspace_bytes=workspace_bytes)
    return TensorRTEngine(plan, device=device, target=target)
