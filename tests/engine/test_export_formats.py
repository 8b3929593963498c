"""`swapwatch export --format onnx|tensorrt|torch-tensorrt --precision fp32|fp16|int8` through the real CLI.

On a machine without a GPU the GPU formats must fail with exit 1 and say why before any slow step;
reduced-precision ONNX runs for real through swapwatch.calib's converters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from swapwatch.cli.main import main
from swapwatch.engine.export import default_tolerance, sample_crops
from swapwatch.engine.metadata import read_metadata
from swapwatch.engine.plan_cache import cuda_gpu


def ckpt(smoke_runs: dict[str, Path], method: str = "masm") -> Path:
    return smoke_runs[method] / "checkpoints" / "last.pt"


HAS_CUDA = cuda_gpu(0) is not None


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is present: tests/engine/test_gpu_paths.py exports for real")
@pytest.mark.parametrize(
    ("fmt", "precision", "out", "message"),
    [
        ("tensorrt", "fp32", "m.plan", "TensorRT export needs an NVIDIA GPU with CUDA; found none"),
        ("tensorrt", "fp16", "m.plan", "TensorRT export needs an NVIDIA GPU with CUDA; found none"),
        ("tensorrt", "int8", "m.engine", "TensorRT export needs an NVIDIA GPU with CUDA; found none"),
        ("torch-tensorrt", "fp32", "m.ep", "torch-tensorrt export needs an NVIDIA GPU with CUDA; found none"),
        ("torch-tensorrt", "fp16", "m.ep", "torch-tensorrt export needs an NVIDIA GPU with CUDA; found none"),
    ],
)
def test_gpu_formats_without_a_gpu_exit_1_before_reading_the_checkpoint(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str], fmt: str,
                                                                       precision: str, out: str, message: str) -> None:
    # The GPU check comes before the slow ONNX export: so early that the checkpoint is never read, and
    # a file that is not a checkpoint at all still gets the GPU message (the export would refuse it).
    checkpoint = tmp_path / "in" / "last.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"not a checkpoint")
    outputs = tmp_path / "out"
    outputs.mkdir()
    code = main(["export", str(checkpoint), "--format", fmt, "--precision", precision, "--out", str(outputs / out)])
    assert code == 1
    assert message in capsys.readouterr().err
    assert not list(outputs.iterdir()), "nothing is written when the export cannot run"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "onnx", "--out", "{tmp}/m.plan"], "--out {tmp}/m.plan: a onnx engine file must end in .onnx"),
        (["--format", "tensorrt", "--out", "{tmp}/m.onnx"], "a tensorrt engine file must end in .plan or .engine or .trt"),
        (["--format", "torch-tensorrt", "--out", "{tmp}/m.plan"], "a torch-tensorrt engine file must end in .ep"),
        (["--out", "{tmp}/m.onnx", "--calib-crops", "{tmp}"], "--calib-crops: only used with --precision fp16 or int8"),
        (["--format", "tensorrt", "--out", "{tmp}/m.plan", "--opt-batch", "16", "--max-batch", "8"],
         "need 1 <= opt (16) <= max (8)"),
        (["--format", "tensorrt", "--out", "{tmp}/m.plan", "--workspace-mb", "1"], "--workspace-mb: need at least 16"),
    ],
)
def test_bad_export_options_exit_2_naming_the_option(smoke_runs: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str], args: list[str],
                                                     message: str) -> None:
    argv = ["export", str(ckpt(smoke_runs))] + [a.format(tmp=tmp_path) for a in args]
    assert main(argv) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["onnx", "tensorrt", "torch-tensorrt"])
def test_unknown_format_or_precision_is_usage_error(smoke_runs: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["export", str(ckpt(smoke_runs)), "--format", fmt, "--precision", "bf16", "--out", str(tmp_path / "x")])
    assert info.value.code == 2


def test_help_lists_formats_and_precisions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    for word in ("onnx", "tensorrt", "torch-tensorrt", "fp32", "fp16", "int8", "--calib-crops", "--calib-raw",
                 "--max-batch", "--opt-batch", "--workspace-mb", "--timing-cache", "--device"):
        assert word in text


@pytest.mark.parametrize(
    ("fmt", "precision", "expected"),
    [("onnx", "fp32", 1e-3), ("tensorrt", "fp32", 5e-3), ("torch-tensorrt", "fp32", 5e-3),
     ("onnx", "fp16", 2e-2), ("tensorrt", "fp16", 2e-2), ("tensorrt", "int8", 1e-1), ("onnx", "int8", 1e-1)],
)
def test_default_tolerance_follows_precision(fmt: str, precision: str, expected: float) -> None:
    assert default_tolerance(fmt, precision) == expected


@pytest.mark.parametrize("method", ["masm", "airl"])
def test_onnx_fp32_export_records_format_and_precision(smoke_runs: dict[str, Path], tmp_path: Path,
                                                       method: str) -> None:
    out = tmp_path / f"{method}.onnx"
    assert main(["export", str(ckpt(smoke_runs, method)), "--format", "onnx", "--precision", "fp32",
                 "--out", str(out)]) == 0
    meta = read_metadata(out)
    assert (meta.precision, meta.export["format"], meta.method) == ("fp32", "onnx", method)
    assert meta.export["max_abs_diff"] < 1e-4


# --------------------------------------------------------------------------- reduced-precision ONNX


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_onnx_runs_on_onnxruntime(smoke_runs: dict[str, Path], smoke_onnx: dict[str, Path],
                                                    tmp_path: Path, precision: str) -> None:
    from swapwatch.engine.select import load_engine

    out = tmp_path / f"m-{precision}.onnx"
    assert main(["export", str(ckpt(smoke_runs)), "--precision", precision, "--out", str(out)]) == 0
    meta = read_metadata(out)  # sidecar hash matches the converted file
    assert meta.precision == precision and meta.export["format"] == "onnx"
    assert meta.export["max_abs_diff"] <= default_tolerance("onnx", precision)
    fp32 = load_engine(smoke_onnx["masm"], backend="onnxruntime")
    low = load_engine(out, backend="onnxruntime")
    assert low.input_size == fp32.input_size and low.meta.alignment == fp32.meta.alignment
    crops = sample_crops(low.input_size, low.meta.alignment.margin)
    np.testing.assert_allclose(low.score_crops(crops), fp32.score_crops(crops), atol=default_tolerance("onnx", precision))


@pytest.mark.parametrize(("target", "zero_point_type"), [("cpu", "uint8"), ("tensorrt", "int8")])
def test_int8_onnx_has_the_qdq_form_its_target_needs(smoke_runs: dict[str, Path], tmp_path: Path, target: str,
                                                     zero_point_type: str) -> None:
    """The Q/DQ graph a TensorRT plan is built from (s8, zero point 0) is made and checked on the CPU."""
    import cv2
    import onnx
    from onnx import numpy_helper

    from swapwatch.engine.export import export_reduced_onnx

    crops_dir = tmp_path / "crops"
    (crops_dir / "real").mkdir(parents=True)
    crops = sample_crops(64, 0.15)
    for i, c in enumerate(crops):
        cv2.imwrite(str(crops_dir / "real" / f"{i}.png"), c)
    from swapwatch.calib.crops import load_crops

    calib = load_crops(crops_dir, 64, 0.15, aligned=True).crops
    assert calib.shape == crops.shape
    out = tmp_path / f"m-{target}.onnx"
    report = export_reduced_onnx(ckpt(smoke_runs), out, "int8", calib_crops=calib, int8_target=target,  # type: ignore[arg-type]
                                 calib_source=str(crops_dir))
    assert report.max_abs_diff <= default_tolerance("onnx", "int8") and report.precision == "int8"
    meta = read_metadata(out)
    assert meta.export["calibration"]["source"] == str(crops_dir)
    assert meta.export["calibration"]["n_crops"] == len(crops)
    graph = onnx.load(str(out)).graph
    inits = {i.name: i for i in graph.initializer}
    zps = [numpy_helper.to_array(inits[n.input[2]]) for n in graph.node if n.op_type == "QuantizeLinear"]
    assert zps, "no QuantizeLinear nodes: not a Q/DQ graph"
    assert {str(z.dtype) for z in zps} == {zero_point_type}
    if target == "tensorrt":
        assert all(int(z.max()) == 0 and int(z.min()) == 0 for z in zps)


def test_fp16_graph_the_cpu_cannot_run_is_kept_and_marked_unchecked(smoke_runs: dict[str, Path], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """ORT CPU lacks FP16 kernels for some ops: such a graph (meant for GPUs) is kept, marked not checked."""
    from swapwatch.engine import export
    from swapwatch.errors import ModelFileError

    out = tmp_path / "gpu-only.onnx"
    real = export.OnnxEngine

    def engine(path: Path, *args: object, **kwargs: object) -> object:
        if Path(path) == out:
            raise ModelFileError(path, "expected a valid ONNX model (NOT_IMPLEMENTED: Could not find an implementation)")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(export, "OnnxEngine", engine)
    report = export.export_reduced_onnx(ckpt(smoke_runs), out, "fp16")
    assert report.n_crops == 0 and out.is_file()
    meta = read_metadata(out)
    assert meta.precision == "fp16" and meta.export["max_abs_diff"] is None
    assert meta.export["parity"].startswith("not checked: ONNX Runtime CPU cannot run this graph (expected a valid")
