"""ONNX Runtime backend: the portable default, on CPU, CUDA or ORT's TensorRT execution provider.

Providers are always explicit (never ORT's Azure provider, which the 1.31 CPU wheel lists first) and
sessions never spin-wait (see swapwatch/media/onnx_session.py), so the detector and classifier
sessions share two cores well.

Two ways to open one:
- `OnnxEngine(path, threads, providers=None)`: the original API. `providers=None` is CPU; a list of
  provider names keeps the available ones in order (CUDA-then-CPU runs on CPU where there is no CUDA).
- `OnnxEngine(path, execution="cpu" | "cuda" | "tensorrt", device=..., plan_cache=...)`: strict. The
  provider must exist in this onnxruntime build and must actually be the session's first provider after
  it opens (onnxruntime-gpu lists CUDA/TensorRT even when their libraries are missing, then silently runs
  on CPU); otherwise BackendUnavailable lists the providers this install has.

TensorRT EP: ORT builds TensorRT engines for the subgraphs TensorRT supports (CUDA, then CPU, for the
rest) at session start, which takes seconds to minutes, so its engine and timing caches are enabled and
kept under the plan cache folder, in a sub-folder per model hash, GPU and TensorRT version (ORT's own
cache does not notice a GPU or TensorRT change). The batch profile is passed explicitly (min/opt/max on
the batch dim, spatial dims fixed), which also bounds `max_batch`. Precision is the graph's: FP16 is
enabled in the EP only for a graph whose sidecar says fp16, so an FP32 model is never silently lowered
(TensorRT 11 builds strongly typed networks anyway; this matters for ORT builds on TensorRT 10).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from swapwatch.engine.base import BackendUnavailable, Engine
from swapwatch.engine.cuda_probe import cuda_gpu
from swapwatch.engine.metadata import EngineMetadata, read_metadata
from swapwatch.engine.plan_cache import PlanCache
from swapwatch.engine.trt_profile import BatchProfile
from swapwatch.errors import ModelFileError
from swapwatch.media.onnx_session import make_session, session_options

log = logging.getLogger(__name__)

Execution = Literal["cpu", "cuda", "tensorrt"]
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_NAMES = {v: f"onnxruntime:{k}" for k, v in PROVIDERS.items()}


def default_model_path() -> Path:
    """The embedded default detector shipped inside the package (see swapwatch/assets/MODEL_CARD.md)."""
    path = Path(str(resources.files("swapwatch") / "assets" / "default.onnx"))
    if not path.is_file():
        raise ModelFileError(path, "the embedded default model is missing from this installation")
    return path


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def require_provider(execution: Execution) -> str:
    """The ORT provider name for `execution`, or BackendUnavailable listing what this onnxruntime has."""
    wanted = PROVIDERS[execution]
    have = available_providers()
    if wanted not in have:
        hint = " (install onnxruntime-gpu, the [gpu] extra, on a machine with an NVIDIA GPU)" if execution != "cpu" else ""
        raise BackendUnavailable(
            f"onnxruntime has no {wanted}{hint}; available providers: {', '.join(have)}"
        )
    return wanted


def tensorrt_ep_options(
    input_name: str, meta: EngineMetadata, profile: BatchProfile, cache_dir: Path, device: int,
    workspace_bytes: int = 1 << 30,
) -> dict[str, str]:
    """TensorrtExecutionProvider options: engine + timing cache in `cache_dir`, explicit batch profile."""
    s = meta.input_size

    def shape(n: int) -> str:
        return f"{input_name}:{n}x3x{s}x{s}"

    return {
        "device_id": str(device),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
        "trt_max_workspace_size": str(int(workspace_bytes)),
        "trt_profile_min_shapes": shape(profile.min_batch),
        "trt_profile_opt_shapes": shape(profile.opt_batch),
        "trt_profile_max_shapes": shape(profile.max_batch),
        "trt_fp16_enable": "True" if meta.precision == "fp16" else "False",
    }


class OnnxEngine(Engine):
    """Scores aligned crops with an exported swapwatch ONNX model and its metadata sidecar."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        threads: int = 1,
        providers: Sequence[str] | None = None,
        *,
        execution: Execution | None = None,
        device: int = 0,
        plan_cache: str | Path | None = None,
        profile: BatchProfile | None = None,
        workspace_bytes: int = 1 << 30,
    ) -> None:
        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_file():
            raise ModelFileError(path, "no such model file (expected an .onnx exported by swapwatch export)")
        if providers is not None and execution is not None:
            raise ValueError("pass either providers (lenient list) or execution (strict), not both")
        self._init_preprocessing(path, read_metadata(path))
        self.max_batch = None
        if execution is None:
            self.session = make_session(self.path, threads=threads, providers=list(providers) if providers else None)
        else:
            self.session = self._strict_session(execution, threads, device, plan_cache, profile, workspace_bytes)
        self.name = _NAMES.get(self.session.get_providers()[0], f"onnxruntime:{self.session.get_providers()[0]}")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        if len(shape) != 4 or (shape[2] not in (self.meta.input_size, None) and not isinstance(shape[2], str)):
            raise ModelFileError(
                self.path, f"model input shape {shape} does not match sidecar input_size {self.meta.input_size}"
            )

    def _strict_session(
        self, execution: Execution, threads: int, device: int, plan_cache: str | Path | None,
        profile: BatchProfile | None, workspace_bytes: int,
    ) -> ort.InferenceSession:
        wanted = require_provider(execution)
        # A CPU session first: it validates the file (a broken model is a ModelFileError, not a missing
        # backend) and tells the input name the TensorRT EP's profile options need. For the GPU providers
        # that costs one extra model load at start-up.
        cpu = make_session(self.path, threads=threads, providers=["CPUExecutionProvider"])
        if execution == "cpu":
            return cpu
        input_name = cpu.get_inputs()[0].name
        del cpu
        chain: list[tuple[str, dict[str, str]]] = []
        if execution == "tensorrt":
            profile = profile or BatchProfile()
            cache_dir = self._ort_trt_cache(plan_cache, device)
            cache_dir.mkdir(parents=True, exist_ok=True)
            chain.append((wanted, tensorrt_ep_options(input_name, self.meta, profile, cache_dir, device, workspace_bytes)))
            self.max_batch = profile.max_batch
        if "CUDAExecutionProvider" in available_providers():
            chain.append(("CUDAExecutionProvider", {"device_id": str(device)}))
        chain.append(("CPUExecutionProvider", {}))  # for the few nodes the GPU providers leave over
        try:
            session = ort.InferenceSession(
                str(self.path), sess_options=session_options(threads),
                providers=[p for p, _ in chain], provider_options=[o for _, o in chain],
            )
        except Exception as err:  # ORT raises its own pybind types; the reason is in the text
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BackendUnavailable(f"{self.path}: onnxruntime could not start {wanted}: {reason[:300]}") from err
        got = session.get_providers()
        if got[0] != wanted:
            raise BackendUnavailable(
                f"{self.path}: onnxruntime fell back to {got} instead of {wanted} (its CUDA/TensorRT libraries "
                f"or the GPU are missing); available providers: {', '.join(available_providers())}"
            )
        return session

    def _ort_trt_cache(self, plan_cache: str | Path | None, device: int) -> Path:
        from swapwatch.engine.plan_cache import GpuTarget

        gpu = cuda_gpu(device)
        target = None
        if gpu is not None:
            try:
                import tensorrt  # the same libraries ORT's TensorRT EP loads, when installed as a package

                trt_version = str(tensorrt.__version__)
            except Exception:  # noqa: BLE001 - version unknown: key by the onnxruntime build instead
                trt_version = f"ort{ort.__version__}"
            target = GpuTarget(gpu_name=gpu[0], compute_capability=gpu[1], tensorrt_version=trt_version)
        return PlanCache(plan_cache).ort_cache_dir(self.meta.model_sha256, target)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: batch})[0]
        return np.asarray(out, np.float32).reshape(-1)

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        super().close()
        self.session = None
