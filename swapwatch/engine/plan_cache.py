"""TensorRT plans: what each one was built for, when one is stale, and a cache that rebuilds stale ones.

A serialized TensorRT plan only runs on the GPU model (compute capability) and the TensorRT version that
built it, for the optimization profile it was built with, and it says nothing about which ONNX it came
from. TensorRT itself rejects some mismatches at deserialization with a terse message and silently runs
others (another GPU of the same compute capability runs, possibly with poorly tuned kernels). So every
plan gets a small build descriptor beside it, `model.plan.build.json`:

    {"format": "swapwatch-plan/1", "model_sha256": <source ONNX>, "gpu_name": ..., "compute_capability": "9.0",
     "tensorrt_version": "11.1.0", "profile": {"min_batch": 1, "opt_batch": 8, "max_batch": 32},
     "input_size": 224, "precision": "fp16", "plan_sha256": ..., ...}

and the runtime compares it with this machine before deserializing (`check_plan`). A plan is stale when
the GPU name, compute capability, TensorRT version, source-model hash or profile differ, or when the plan
bytes are not the ones the descriptor was written for (an interrupted copy).

The cache (`PlanCache`, default `~/.cache/swapwatch/plans`, or `$SWAPWATCH_PLAN_CACHE`) names each plan by
a key over exactly those fields, so a changed model, GPU, TensorRT or profile looks up a different file
and gets built once; `get_or_build` also re-checks the descriptor of the file it finds and rebuilds it
when it does not match (a hand-copied or half-written plan). Everything but the probing of the live GPU
is pure and testable without one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, ValidationError

from swapwatch.config import StrictModel, format_validation_error
from swapwatch.engine.base import BackendUnavailable
from swapwatch.engine.cuda_probe import cuda_gpu
from swapwatch.engine.metadata import EngineMetadata, Precision, file_sha256, read_metadata, write_metadata
from swapwatch.engine.trt_build import build_plan, import_tensorrt
from swapwatch.engine.trt_profile import BatchProfile
from swapwatch.errors import ModelFileError

log = logging.getLogger(__name__)

PLAN_FORMAT: Final = "swapwatch-plan/1"
DEFAULT_ROOT = Path("~/.cache/swapwatch/plans")
ENV_ROOT = "SWAPWATCH_PLAN_CACHE"


class StalePlanError(ModelFileError):
    """A plan (or compiled program) was built for another GPU, TensorRT version, model or profile."""


class GpuTarget(StrictModel):
    """What a plan is tied to: the GPU model, its compute capability and the TensorRT version."""

    gpu_name: str = Field(..., description="CUDA device name, e.g. 'NVIDIA H100 80GB HBM3'.")
    compute_capability: str = Field(..., description="SM version 'major.minor', e.g. '9.0'.")
    tensorrt_version: str = Field(..., description="tensorrt.__version__ of the builder/runtime.")


class PlanDescriptor(StrictModel):
    """The build descriptor written beside every plan (`<plan>.build.json`)."""

    format: Literal["swapwatch-plan/1"] = PLAN_FORMAT
    kind: Literal["tensorrt-plan", "torch-tensorrt-program"] = Field(
        "tensorrt-plan", description="What the described file is."
    )
    model_sha256: str = Field(..., description="SHA-256 of the source model (ONNX, or checkpoint for torch-tensorrt).")
    source: str | None = Field(None, description="Path of the source model when it was built, for rebuilds.")
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    profile: BatchProfile
    input_size: int
    precision: Precision = "fp32"
    plan_sha256: str = Field(..., description="SHA-256 of the described file; guards against partial copies.")
    built_at: str = Field(..., description="ISO 8601 build time (informational).")
    workspace_bytes: int | None = Field(None, description="Builder workspace limit (informational).")

    def target(self) -> GpuTarget:
        return GpuTarget(
            gpu_name=self.gpu_name, compute_capability=self.compute_capability, tensorrt_version=self.tensorrt_version
        )


# ---------------------------------------------------------------------------------------------- pure logic


def plan_key(model_sha256: str, target: GpuTarget, profile: BatchProfile, input_size: int) -> str:
    """Cache key: 20 hex digits of SHA-256 over model hash, GPU, compute capability, TensorRT and profile."""
    payload = {
        "format": PLAN_FORMAT,
        "model_sha256": model_sha256,
        "gpu_name": target.gpu_name,
        "compute_capability": target.compute_capability,
        "tensorrt_version": target.tensorrt_version,
        "profile": profile.model_dump(),
        "input_size": int(input_size),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def mismatches(
    desc: PlanDescriptor,
    target: GpuTarget,
    model_sha256: str | None = None,
    profile: BatchProfile | None = None,
    plan_sha256: str | None = None,
) -> list[str]:
    """Every way `desc` differs from what is wanted here, as 'field: plan X, here Y' lines (empty = fresh).

    `model_sha256`, `profile` and `plan_sha256` are checked only when given (a bare plan has no source
    model to compare with; the runtime of a user-supplied plan accepts the profile it was built with).
    """
    out = []
    if desc.gpu_name != target.gpu_name:
        out.append(f"GPU: plan built on {desc.gpu_name!r}, this machine has {target.gpu_name!r}")
    if desc.compute_capability != target.compute_capability:
        out.append(f"compute capability: plan {desc.compute_capability}, this GPU {target.compute_capability}")
    if desc.tensorrt_version != target.tensorrt_version:
        out.append(f"TensorRT: plan built with {desc.tensorrt_version}, installed {target.tensorrt_version}")
    if model_sha256 is not None and desc.model_sha256 != model_sha256:
        out.append(f"model: plan built from sha256 {desc.model_sha256[:12]}..., model is now {model_sha256[:12]}...")
    if profile is not None and desc.profile != profile:
        out.append(f"profile: plan {_profile_text(desc.profile)}, wanted {_profile_text(profile)}")
    if plan_sha256 is not None and desc.plan_sha256 != plan_sha256:
        out.append(f"plan file: sha256 {plan_sha256[:12]}... but the descriptor was written for {desc.plan_sha256[:12]}...")
    return out


def _profile_text(p: BatchProfile) -> str:
    return f"batch {p.min_batch}/{p.opt_batch}/{p.max_batch}"


def descriptor_path(plan_path: str | Path) -> Path:
    p = Path(plan_path)
    return p.with_name(p.name + ".build.json")


def read_descriptor(plan_path: str | Path) -> PlanDescriptor:
    path = descriptor_path(plan_path)
    if not path.is_file():
        raise ModelFileError(
            path, f"missing build descriptor for {Path(plan_path).name} (plans are written by swapwatch export / the plan cache)"
        )
    try:
        return PlanDescriptor.model_validate(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ModelFileError(path, f"build descriptor is not valid JSON: {err}") from None
    except ValidationError as err:
        raise ModelFileError(path, format_validation_error(err, "build descriptor")) from None


def write_descriptor(plan_path: str | Path, desc: PlanDescriptor) -> Path:
    path = descriptor_path(plan_path)
    _atomic_write_text(path, json.dumps(desc.model_dump(mode="json"), indent=2) + "\n")
    return path


def source_sha256(desc: PlanDescriptor) -> str | None:
    """SHA-256 of the source model the descriptor names, when that file still exists (else None)."""
    if desc.source is None:
        return None
    src = Path(desc.source)
    return file_sha256(src) if src.is_file() else None


def check_plan(
    plan_path: str | Path,
    target: GpuTarget,
    model_sha256: str | None = None,
    profile: BatchProfile | None = None,
) -> PlanDescriptor:
    """Read the descriptor of `plan_path` and raise StalePlanError listing every mismatch with `target`.

    Without an explicit `model_sha256` the source model recorded in the descriptor is hashed when it
    still exists, so a plan whose ONNX was re-exported since is stale too.
    """
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise ModelFileError(plan_path, "no such plan file")
    desc = read_descriptor(plan_path)
    if model_sha256 is None:
        model_sha256 = source_sha256(desc)
    problems = mismatches(desc, target, model_sha256, profile, plan_sha256=file_sha256(plan_path))
    if problems:
        raise StalePlanError(
            plan_path,
            "stale engine, refusing to load it:\n  " + "\n  ".join(problems)
            + "\n  rebuild it on this machine (swapwatch export --format tensorrt, or load the ONNX with a plan cache)",
        )
    return desc


def fresh_plan(
    plan_path: str | Path,
    target: GpuTarget,
    cache: PlanCache | None = None,
    *,
    device: int = 0,
    workspace_bytes: int | None = 1 << 30,
    builder: PlanBuilder | None = None,
) -> Path:
    """`plan_path` when it fits this machine; else, given a cache, a plan rebuilt from its source ONNX.

    Without a cache, or when the source ONNX recorded in the descriptor is gone, the StalePlanError
    from `check_plan` propagates.
    """
    plan_path = Path(plan_path)
    try:
        check_plan(plan_path, target)
        return plan_path
    except StalePlanError as err:
        if cache is None:
            raise
        desc = read_descriptor(plan_path)
        source = Path(desc.source) if desc.source else None
        if desc.kind != "tensorrt-plan" or source is None or not source.is_file() or source.suffix != ".onnx":
            raise StalePlanError(
                plan_path, f"{err.expected}\n  and its source ONNX ({desc.source}) is gone, so it cannot be rebuilt"
            ) from None
        log.warning("%s is stale (%s); rebuilding it from %s in the plan cache %s", plan_path.name,
                    "; ".join(err.expected.splitlines()[1:-1]).strip(), source, cache.root)
        return cache.get_or_build(source, desc.profile, target=target, device=device,
                                  workspace_bytes=workspace_bytes, builder=builder)


def new_descriptor(
    plan_path: Path,
    source: Path | None,
    source_sha256: str,
    target: GpuTarget,
    profile: BatchProfile,
    input_size: int,
    precision: Precision,
    kind: Literal["tensorrt-plan", "torch-tensorrt-program"] = "tensorrt-plan",
    workspace_bytes: int | None = None,
) -> PlanDescriptor:
    return PlanDescriptor(
        kind=kind,
        model_sha256=source_sha256,
        source=str(source.resolve()) if source is not None else None,
        gpu_name=target.gpu_name,
        compute_capability=target.compute_capability,
        tensorrt_version=target.tensorrt_version,
        profile=profile,
        input_size=input_size,
        precision=precision,
        plan_sha256=file_sha256(plan_path),
        built_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        workspace_bytes=workspace_bytes,
    )


def engine_metadata_for(
    source_meta: EngineMetadata, engine_path: Path, fmt: str, extra: dict[str, Any] | None = None
) -> EngineMetadata:
    """The sidecar of a derived engine file: the source's preprocessing, this file's hash, its own export info."""
    export = dict(source_meta.export)
    export.update({"format": fmt, "source_sha256": source_meta.model_sha256, **(extra or {})})
    return source_meta.model_copy(update={"model_sha256": file_sha256(engine_path), "export": export})


def finalize_plan(
    plan_path: Path,
    onnx_path: Path,
    onnx_meta: EngineMetadata,
    target: GpuTarget,
    profile: BatchProfile,
    workspace_bytes: int | None = None,
) -> PlanDescriptor:
    """Write the metadata sidecar and then the build descriptor (last: it marks the plan complete)."""
    desc = new_descriptor(
        plan_path, onnx_path, onnx_meta.model_sha256, target, profile, onnx_meta.input_size,
        onnx_meta.precision, workspace_bytes=workspace_bytes,
    )
    extra = {"profile": profile.model_dump(), "gpu": target.gpu_name, "compute_capability": target.compute_capability,
             "tensorrt": target.tensorrt_version, "source_onnx": onnx_path.name}
    write_metadata(plan_path, engine_metadata_for(onnx_meta, plan_path, "tensorrt", extra))
    write_descriptor(plan_path, desc)
    return desc


# ------------------------------------------------------------------------------------ the live machine


def tensorrt_version() -> str:
    return str(import_tensorrt().__version__)


def current_target(device: int = 0) -> GpuTarget:
    """This machine's GPU `device` and TensorRT; BackendUnavailable when either is missing."""
    gpu = cuda_gpu(device)
    if gpu is None:
        raise BackendUnavailable(f"TensorRT needs an NVIDIA GPU with CUDA; found none (device {device})")
    return GpuTarget(gpu_name=gpu[0], compute_capability=gpu[1], tensorrt_version=tensorrt_version())


# ------------------------------------------------------------------------------------------ the cache

# (onnx_path, plan_path, input_size, profile, workspace_bytes, timing_cache, device) -> None; writes plan_path
PlanBuilder = Callable[[Path, Path, int, BatchProfile, int | None, Path | None, int], None]


def _default_builder(
    onnx_path: Path, plan_path: Path, input_size: int, profile: BatchProfile,
    workspace_bytes: int | None, timing_cache: Path | None, device: int,
) -> None:
    build_plan(onnx_path, plan_path, input_size, profile, workspace_bytes=workspace_bytes,
               timing_cache=timing_cache, device=device)


def default_cache_root() -> Path:
    env = os.environ.get(ENV_ROOT)
    return Path(env).expanduser() if env else DEFAULT_ROOT.expanduser()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "gpu"


class PlanCache:
    """A folder of plans keyed by (model sha256, GPU, compute capability, TensorRT version, profile).

    Layout: `<root>/<onnx stem>-<key>.plan` with `.plan.json` (metadata sidecar) and `.plan.build.json`
    (descriptor), plus one TensorRT timing cache per GPU/TensorRT pair (`timing-<gpu>-sm<cc>-trt<ver>.cache`)
    that makes rebuilds of other models on the same machine faster. Plans are written to a temporary name
    and renamed, and the descriptor is written last, so a crash mid-build leaves no plan that looks valid.
    Concurrent builders of one key serialise on a lock file; the second one reuses the first one's plan.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()

    def plan_path(self, onnx_path: Path, model_sha256: str, target: GpuTarget, profile: BatchProfile, input_size: int) -> Path:
        return self.root / f"{_slug(onnx_path.stem)}-{plan_key(model_sha256, target, profile, input_size)}.plan"

    def timing_cache_path(self, target: GpuTarget) -> Path:
        cc = target.compute_capability.replace(".", "")
        return self.root / f"timing-{_slug(target.gpu_name)}-sm{cc}-trt{_slug(target.tensorrt_version)}.cache"

    def ort_cache_dir(self, model_sha256: str, target: GpuTarget | None) -> Path:
        """Folder for ONNX Runtime's TensorRT EP engine cache of one model on one GPU/TensorRT.

        ORT's own cache does not notice a changed GPU or TensorRT version, so each combination gets its own folder.
        """
        tag = "unknown-gpu" if target is None else (
            f"{_slug(target.gpu_name)}-sm{target.compute_capability.replace('.', '')}-trt{_slug(target.tensorrt_version)}"
        )
        return self.root / "onnxruntime-trt" / f"{model_sha256[:16]}-{tag}"

    def stale_reasons(self, plan: Path, model_sha256: str, target: GpuTarget, profile: BatchProfile) -> list[str]:
        """Why the cached `plan` cannot be used ([] = usable); missing files count as reasons."""
        if not plan.is_file():
            return ["no cached plan"]
        try:
            desc = read_descriptor(plan)
            read_metadata(plan)  # sidecar present and matching the plan bytes
        except ModelFileError as err:
            return [str(err)]
        return mismatches(desc, target, model_sha256, profile, plan_sha256=file_sha256(plan))

    def lookup(self, onnx_path: Path, target: GpuTarget, profile: BatchProfile) -> Path | None:
        meta = read_metadata(onnx_path)
        plan = self.plan_path(onnx_path, meta.model_sha256, target, profile, meta.input_size)
        return None if self.stale_reasons(plan, meta.model_sha256, target, profile) else plan

    def get_or_build(
        self,
        onnx_path: str | Path,
        profile: BatchProfile | None = None,
        *,
        target: GpuTarget | None = None,
        device: int = 0,
        workspace_bytes: int | None = 1 << 30,
        builder: PlanBuilder | None = None,
    ) -> Path:
        """The cached plan for `onnx_path` on this GPU, building (or rebuilding a stale one) when needed.

        `target` and `builder` are injectable so the cache logic is testable without a GPU.
        """
        onnx_path = Path(onnx_path)
        profile = profile or BatchProfile()
        meta = read_metadata(onnx_path)  # also verifies the ONNX against its sidecar hash
        target = target or current_target(device)
        plan = self.plan_path(onnx_path, meta.model_sha256, target, profile, meta.input_size)
        self.root.mkdir(parents=True, exist_ok=True)
        with _file_lock(plan.with_name(plan.name + ".lock")):
            reasons = self.stale_reasons(plan, meta.model_sha256, target, profile)
            if not reasons:
                log.info("plan cache: reusing %s", plan)
                return plan
            if plan.exists():
                log.warning("plan cache: rebuilding stale %s: %s", plan.name, "; ".join(reasons))
            else:
                log.info("plan cache: building %s for %s (sm %s, TensorRT %s), %s",
                         plan.name, target.gpu_name, target.compute_capability, target.tensorrt_version,
                         _profile_text(profile))
            for stale in (descriptor_path(plan), plan):  # descriptor first: never a valid-looking half
                stale.unlink(missing_ok=True)
            tmp = plan.with_name(f".{plan.name}.{os.getpid()}.tmp")
            try:
                (builder or _default_builder)(onnx_path, tmp, meta.input_size, profile, workspace_bytes,
                                              self.timing_cache_path(target), device)
                os.replace(tmp, plan)
            finally:
                tmp.unlink(missing_ok=True)
            finalize_plan(plan, onnx_path, meta, target, profile, workspace_bytes)
        return plan


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no cross-process lock, builds may duplicate work
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
