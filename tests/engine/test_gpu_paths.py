"""GPU backends for real: TensorRT plans (built, cached, refused when stale), ONNX Runtime's CUDA and
TensorRT providers, torch on CUDA and Torch-TensorRT. Each test skips with the reason when this machine
lacks CUDA, the tensorrt / torch_tensorrt packages or the onnxruntime-gpu providers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from swapwatch.cli.main import main
from swapwatch.engine.metadata import read_metadata
from swapwatch.engine.plan_cache import BatchProfile, PlanCache, StalePlanError, descriptor_path
from swapwatch.engine.select import load_engine
from swapwatch.samples import sample_crops

torch = pytest.importorskip("torch", reason="the GPU paths need torch (the [train] or [gpu] install)")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]


def needs_tensorrt() -> None:
    pytest.importorskip("tensorrt", reason="the tensorrt package is not installed (the [gpu] extra)")


def needs_torch_tensorrt() -> None:
    pytest.importorskip("torch_tensorrt", reason="the torch-tensorrt package is not installed (the [gpu] extra)")


def needs_provider(provider: str) -> None:
    if provider not in ort.get_available_providers():
        pytest.skip(f"onnxruntime has no {provider} (install onnxruntime-gpu)")


def ckpt(smoke_runs: dict[str, Path], method: str = "masm") -> Path:
    return smoke_runs[method] / "checkpoints" / "last.pt"


def cpu_reference(onnx: Path) -> tuple[np.ndarray, np.ndarray]:
    """(crops, ONNX Runtime CPU scores) for the model's real sample faces."""
    ref = load_engine(onnx, backend="onnxruntime")
    crops = sample_crops(ref.input_size, ref.meta.alignment.margin)
    return crops, ref.score_crops(crops)


# ---------------------------------------------------------------------------------------- TensorRT plan


@pytest.mark.parametrize("method", ["masm", "airl"])
def test_plan_from_the_cache_matches_onnxruntime_at_every_batch_size(smoke_onnx: dict[str, Path], tmp_path: Path,
                                                                     method: str) -> None:
    needs_tensorrt()
    onnx = smoke_onnx[method]
    crops, expected = cpu_reference(onnx)
    profile = BatchProfile(opt_batch=4, max_batch=8)
    engine = load_engine(onnx, backend="tensorrt", plan_cache=tmp_path, profile=profile)
    assert engine.name == "tensorrt" and engine.max_batch == 8
    assert engine.meta.precision == "fp32" and engine.meta.export["format"] == "tensorrt"
    for n in (1, 3, 8, len(crops)):  # len(crops) > max_batch: split by Engine.infer
        np.testing.assert_allclose(engine.score_crops(crops[:n]), expected[:n], atol=5e-3)
    big = np.concatenate([crops] * 5)  # 40 crops, 5 runs of 8
    np.testing.assert_allclose(engine.score_crops(big), np.concatenate([expected] * 5), atol=5e-3)
    engine.close()
    plans = list(tmp_path.glob("*.plan"))
    assert len(plans) == 1 and descriptor_path(plans[0]).is_file()
    assert list(tmp_path.glob("timing-*.cache")), "the timing cache is saved after the build"
    mtime = plans[0].stat().st_mtime_ns
    load_engine(onnx, backend="tensorrt", plan_cache=tmp_path, profile=profile).close()
    assert plans[0].stat().st_mtime_ns == mtime, "the second load reuses the cached plan"


def test_auto_prefers_a_tensorrt_plan_and_says_so(smoke_onnx: dict[str, Path], tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    needs_tensorrt()
    with caplog.at_level(logging.INFO, logger="swapwatch.engine.select"):
        engine = load_engine(smoke_onnx["masm"], plan_cache=tmp_path)
    assert engine.name == "tensorrt"
    assert any(r.message.startswith("auto: using tensorrt") for r in caplog.records)


def test_stale_plan_is_refused_and_rebuilt_with_a_cache(smoke_onnx: dict[str, Path], tmp_path: Path) -> None:
    needs_tensorrt()
    from swapwatch.engine.tensorrt_runtime import TensorRTEngine

    plan = PlanCache(tmp_path / "cache").get_or_build(smoke_onnx["masm"], BatchProfile(opt_batch=2, max_batch=4))
    desc_path = descriptor_path(plan)
    desc = json.loads(desc_path.read_text())
    desc["tensorrt_version"] = "10.0.0"  # as if built by another TensorRT
    desc_path.write_text(json.dumps(desc))
    with pytest.raises(StalePlanError, match="TensorRT: plan built with 10.0.0"):
        TensorRTEngine(plan)
    with pytest.raises(StalePlanError):
        load_engine(plan, backend="tensorrt")
    rebuilt = load_engine(plan, backend="tensorrt", plan_cache=tmp_path / "rebuilt")
    assert rebuilt.path != plan and rebuilt.path.parent == tmp_path / "rebuilt" and rebuilt.max_batch == 4


def test_export_tensorrt_writes_plan_onnx_and_sidecars(smoke_runs: dict[str, Path], tmp_path: Path) -> None:
    needs_tensorrt()
    out = tmp_path / "m.plan"
    assert main(["export", str(ckpt(smoke_runs)), "--format", "tensorrt", "--out", str(out), "--max-batch", "16",
                 "--timing-cache", str(tmp_path / "timing.cache")]) == 0
    meta = read_metadata(out)
    assert meta.precision == "fp32" and meta.export["format"] == "tensorrt" and meta.export["max_abs_diff"] < 5e-3
    assert read_metadata(out.with_suffix(".onnx")).precision == "fp32"
    assert (tmp_path / "timing.cache").stat().st_size > 0
    engine = load_engine(out)  # auto: a .plan is TensorRT
    assert engine.name == "tensorrt" and engine.max_batch == 16


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_export_tensorrt_reduced_precision(smoke_runs: dict[str, Path], tmp_path: Path, precision: str) -> None:
    needs_tensorrt()
    out = tmp_path / f"m-{precision}.plan"
    code = main(["export", str(ckpt(smoke_runs)), "--format", "tensorrt", "--precision", precision, "--out", str(out)])
    assert code == 0
    assert read_metadata(out).precision == precision
    assert read_metadata(out.with_suffix(".onnx")).precision == precision


# ------------------------------------------------------------------------------------ ONNX Runtime GPU


@pytest.mark.parametrize(("backend", "provider", "name"), [
    ("onnxruntime-cuda", "CUDAExecutionProvider", "onnxruntime:cuda"),
    ("onnxruntime-tensorrt", "TensorrtExecutionProvider", "onnxruntime:tensorrt"),
])
def test_onnxruntime_gpu_providers_match_the_cpu(smoke_onnx: dict[str, Path], tmp_path: Path, backend: str,
                                                 provider: str, name: str) -> None:
    needs_provider(provider)
    crops, expected = cpu_reference(smoke_onnx["masm"])
    engine = load_engine(smoke_onnx["masm"], backend=backend, plan_cache=tmp_path)  # type: ignore[arg-type]
    assert engine.name == name and engine.session.get_providers()[0] == provider
    np.testing.assert_allclose(engine.score_crops(crops), expected, atol=5e-3)
    if provider == "TensorrtExecutionProvider":
        assert engine.max_batch == 32 and any((tmp_path / "onnxruntime-trt").rglob("*")), "engine cache written"


# ------------------------------------------------------------------------------- torch and torch-tensorrt


def test_torch_backend_uses_cuda_and_matches_the_cpu(smoke_runs: dict[str, Path], smoke_onnx: dict[str, Path]) -> None:
    crops, expected = cpu_reference(smoke_onnx["masm"])
    engine = load_engine(ckpt(smoke_runs), backend="torch")
    assert engine.name == "torch:cuda"
    np.testing.assert_allclose(engine.score_crops(crops), expected, atol=1e-3)


def test_torch_tensorrt_export_saves_a_program_that_reloads(smoke_runs: dict[str, Path], smoke_onnx: dict[str, Path],
                                                            tmp_path: Path) -> None:
    needs_tensorrt()
    needs_torch_tensorrt()
    out = tmp_path / "m.ep"
    assert main(["export", str(ckpt(smoke_runs)), "--format", "torch-tensorrt", "--out", str(out),
                 "--max-batch", "8"]) == 0
    assert read_metadata(out).export["format"] == "torch-tensorrt" and descriptor_path(out).is_file()
    crops, expected = cpu_reference(smoke_onnx["masm"])
    engine = load_engine(out)  # auto: a .ep is torch-tensorrt, loaded without recompiling
    assert engine.name == "torch-tensorrt" and engine.max_batch == 8
    for n in (1, 5, len(crops)):
        np.testing.assert_allclose(engine.score_crops(crops[:n]), expected[:n], atol=5e-3)


def test_torch_tensorrt_compiles_a_checkpoint_once_with_a_cache(smoke_runs: dict[str, Path], tmp_path: Path) -> None:
    needs_tensorrt()
    needs_torch_tensorrt()
    first = load_engine(ckpt(smoke_runs), backend="torch-tensorrt", plan_cache=tmp_path)
    programs = list(tmp_path.glob("*.ep"))
    assert first.name == "torch-tensorrt" and len(programs) == 1
    mtime = programs[0].stat().st_mtime_ns
    load_engine(ckpt(smoke_runs), backend="torch-tensorrt", plan_cache=tmp_path)
    assert programs[0].stat().st_mtime_ns == mtime
