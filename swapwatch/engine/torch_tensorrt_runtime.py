"""torch-tensorrt backend: the folded torch module compiled by Torch-TensorRT (dynamo IR), dynamic batch.

Compilation: `torch_tensorrt.compile(module, ir="dynamo", arg_inputs=[Input(min, opt, max)])` traces the
folded ScoreModel with torch.export and turns the TensorRT-convertible subgraphs into engines (what it
cannot convert keeps running in torch, which is this backend's advantage over a raw plan: no ONNX step,
no unsupported-op failures). It takes tens of seconds to minutes, so the result is saved:
`torch_tensorrt.save(compiled, "model.ep", output_format="exported_program", arg_inputs=[Input(...)])`
writes an ExportedProgram with the engines embedded and the dynamic batch dim inferred from the Input
min/max, and `torch_tensorrt.load(path).module()` (torch.export.load with Torch-TensorRT's runtime ops
registered) gives a callable back at start-up without recompiling. `swapwatch export --format
torch-tensorrt` writes such a `.ep`; given a `.pt` checkpoint instead, this backend compiles at start-up
and, with a plan cache folder, saves the program there for the next start.

Precision with TensorRT 11 (torch-tensorrt 2.14): networks are strongly typed, `enabled_precisions` is
deprecated and ignored by the dynamo path. FP32 is the module's own dtype; FP16 uses Torch-TensorRT's
rule-based autocast (`enable_autocast=True, autocast_low_precision_type=torch.float16`), which inserts
explicit casts the way ModelOpt AutoCast does for ONNX. INT8 would need a ModelOpt-quantized torch
module; it is refused here (use the Q/DQ ONNX -> TensorRT plan path).

The embedded engines are tied to the GPU and TensorRT version like any plan, so a `.ep` gets the same
build descriptor (`model.ep.build.json`) and the same staleness check as a plan.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from swapwatch.engine.base import BackendUnavailable, Engine
from swapwatch.engine.metadata import EngineMetadata, Precision, file_sha256, read_metadata, write_metadata
from swapwatch.engine.plan_cache import (
    GpuTarget,
    PlanCache,
    check_plan,
    current_target,
    mismatches,
    new_descriptor,
    plan_key,
    read_descriptor,
    write_descriptor,
)
from swapwatch.engine.trt_build import GPU_EXTRA, require_cuda
from swapwatch.engine.trt_profile import BatchProfile
from swapwatch.errors import ConfigError, ModelFileError

log = logging.getLogger(__name__)



def import_torch_tensorrt() -> ModuleType:
    if importlib.util.find_spec("torch_tensorrt") is None:
        raise BackendUnavailable(f"the torch-tensorrt package is not installed ({GPU_EXTRA} on a machine with an NVIDIA GPU)")
    try:
        import torch_tensorrt
    except (ImportError, OSError, RuntimeError) as err:
        raise BackendUnavailable(f"torch-tensorrt is installed but does not load ({err})") from None
    return torch_tensorrt


def precision_kwargs(compile_fn: Any, precision: Precision) -> dict[str, Any]:
    """Compile arguments for `precision`, checked against the installed `torch_tensorrt.dynamo.compile`."""
    import torch

    if precision == "fp32":
        return {}
    if precision == "int8":
        raise ConfigError(
            "precision: int8 with torch-tensorrt needs a ModelOpt-quantized module; use --format tensorrt "
            "--precision int8 (a Q/DQ ONNX built into a TensorRT plan)"
        )
    params = inspect.signature(compile_fn).parameters
    if "enable_autocast" not in params or "autocast_low_precision_type" not in params:
        raise BackendUnavailable(
            "precision: fp16 needs Torch-TensorRT's rule-based autocast (enable_autocast), which this torch-tensorrt "
            "does not have; TensorRT 11 has no FP16 builder flag to fall back on"
        )
    kwargs: dict[str, Any] = {"enable_autocast": True, "autocast_low_precision_type": torch.float16}
    if "use_explicit_typing" in params:  # versions where it is still an option and defaults to False
        kwargs["use_explicit_typing"] = True
    return kwargs


def input_spec(torch_tensorrt: ModuleType, input_size: int, profile: BatchProfile) -> list[Any]:
    import torch

    mn, opt, mx = profile.shapes(input_size)
    return [torch_tensorrt.Input(min_shape=mn, opt_shape=opt, max_shape=mx, dtype=torch.float32)]


def compile_checkpoint(
    checkpoint: Path, precision: Precision = "fp32", profile: BatchProfile | None = None, device: int = 0
) -> tuple[Any, list[Any], EngineMetadata]:
    """(compiled module, its Input spec, metadata with precision set; model_sha256 = the checkpoint's)."""
    from swapwatch.engine.torch_runtime import load_score_module, metadata_for_checkpoint

    require_cuda(device, "torch-tensorrt")
    ttrt = import_torch_tensorrt()
    import torch

    profile = profile or BatchProfile()
    module, model, state = load_score_module(checkpoint)
    inputs = input_spec(ttrt, int(model.input_size), profile)
    kwargs = precision_kwargs(ttrt.dynamo.compile, precision)
    log.info("torch-tensorrt: compiling %s (%s, batch %d/%d/%d); this takes a while", checkpoint.name, precision,
             profile.min_batch, profile.opt_batch, profile.max_batch)
    compiled = ttrt.compile(
        module.to(torch.device("cuda", device)), ir="dynamo", arg_inputs=inputs,
        device=torch.device("cuda", device), **kwargs,
    )
    meta = metadata_for_checkpoint(
        model, state, checkpoint, file_sha256(checkpoint), precision=precision,
        export={"format": "torch-tensorrt", "torch_tensorrt": str(getattr(ttrt, "__version__", "?")),
                "profile": profile.model_dump()},
    )
    return compiled, inputs, meta


def save_program(compiled: Any, inputs: list[Any], out: Path, meta: EngineMetadata, checkpoint: Path,
                 target: GpuTarget, profile: BatchProfile) -> EngineMetadata:
    """Write `out` (.ep), its metadata sidecar and its build descriptor; returns the written metadata."""
    ttrt = import_torch_tensorrt()
    out.parent.mkdir(parents=True, exist_ok=True)
    ttrt.save(compiled, str(out), output_format="exported_program", arg_inputs=inputs)
    export = dict(meta.export, source_sha256=meta.model_sha256, gpu=target.gpu_name,
                  compute_capability=target.compute_capability, tensorrt=target.tensorrt_version)
    written = meta.model_copy(update={"model_sha256": file_sha256(out), "export": export})
    write_metadata(out, written)
    write_descriptor(out, new_descriptor(out, checkpoint, meta.model_sha256, target, profile, meta.input_size,
                                         meta.precision, kind="torch-tensorrt-program"))
    return written


class TorchTensorRTEngine(Engine):
    """A Torch-TensorRT compiled program: a saved `.ep` (fast start) or a `.pt` checkpoint (compiled now)."""

    def __init__(
        self,
        path: str | Path,
        device: int = 0,
        profile: BatchProfile | None = None,
        precision: Precision = "fp32",
        plan_cache: Path | None = None,
        target: GpuTarget | None = None,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(path, "no such file (expected a .ep from swapwatch export --format torch-tensorrt, or a .pt)")
        require_cuda(device, "torch-tensorrt")
        ttrt = import_torch_tensorrt()
        import torch

        self._torch = torch
        self.device = torch.device("cuda", device)
        self.name = "torch-tensorrt"
        target = target or current_target(device)
        if path.suffix == ".pt":
            program, meta, profile = self._from_checkpoint(path, device, profile or BatchProfile(), precision,
                                                           plan_cache, target, ttrt)
        else:
            meta = read_metadata(path)
            desc = check_plan(path, target)
            profile = desc.profile
            program = ttrt.load(str(path)).module()
        self._init_preprocessing(path, meta)
        self.module = program
        self.max_batch = profile.max_batch
        self.min_batch = profile.min_batch

    def _from_checkpoint(self, path: Path, device: int, profile: BatchProfile, precision: Precision,
                         plan_cache: Path | None, target: GpuTarget, ttrt: ModuleType) -> tuple[Any, EngineMetadata, BatchProfile]:
        if plan_cache is None:
            log.warning("torch-tensorrt: compiling %s at start-up (no plan cache to keep the result)", path.name)
            compiled, _, meta = compile_checkpoint(path, precision, profile, device)
            return compiled, meta, profile
        sha = file_sha256(path)
        # the key covers the precision too: an fp16 and an fp32 program of one checkpoint are different files
        key = plan_key(f"{sha}:{precision}", target, profile, 0)
        cached = PlanCache(plan_cache).root / f"{path.stem}-{key}.ep"
        if cached.is_file():
            try:
                desc = read_descriptor(cached)
                meta = read_metadata(cached)
                if not mismatches(desc, target, sha, profile, plan_sha256=file_sha256(cached)):
                    log.info("torch-tensorrt: reusing compiled program %s", cached)
                    return ttrt.load(str(cached)).module(), meta, profile
            except ModelFileError as err:
                log.warning("torch-tensorrt: ignoring cached %s: %s", cached.name, err)
        compiled, inputs, meta = compile_checkpoint(path, precision, profile, device)
        meta = save_program(compiled, inputs, cached, meta, path, target, profile)
        return compiled, meta, profile

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        n = batch.shape[0]
        if n < self.min_batch:
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.min_batch - n, axis=0)])
        with torch.inference_mode():
            out = self.module(torch.from_numpy(batch).to(self.device))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().cpu().numpy().reshape(-1)[:n]

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        super().close()
        self.module = None
