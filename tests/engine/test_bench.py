"""Engine profiles, the batcher config derived from them, and `swapwatch bench` end to end on real models."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from swapwatch.engine.profile import (
    BatchTiming,
    EngineProfile,
    batch_sizes_for,
    batcher_config_from_profile,
    choose_max_batch,
    profile_engine,
)
from swapwatch.errors import ConfigError, ModelFileError


def table(rows: list[tuple[int, float, float]]) -> EngineProfile:
    """(batch, median ms, p95 ms) rows -> a profile."""
    return EngineProfile(engine="test", timings=[BatchTiming(b, m, p, 20) for b, m, p in rows])


# Shapes of real profiles: a GPU gets much faster per face with the batch, two CPU cores barely do.
GPU = table([(1, 2.0, 2.4), (2, 2.1, 2.5), (4, 2.4, 2.9), (8, 3.0, 3.6), (16, 4.5, 5.5), (32, 8.0, 9.5)])
CPU_FLAT = table([(1, 5.0, 6.0), (2, 9.8, 11.0), (4, 19.5, 22.0), (8, 39.0, 44.0), (16, 78.0, 90.0)])
CPU_SOME = table([(1, 5.0, 6.0), (2, 8.0, 9.0), (4, 14.0, 16.0), (8, 22.0, 25.0), (16, 60.0, 70.0)])
CACHE_CLIFF = table([(1, 4.0, 5.0), (2, 5.0, 6.0), (4, 7.0, 8.0), (8, 10.0, 11.0), (16, 40.0, 44.0)])
TOO_SLOW = table([(1, 60.0, 70.0), (2, 100.0, 120.0)])
TAIL = table([(1, 4.0, 5.0), (2, 5.0, 6.0), (4, 6.0, 60.0)])  # batch 4 has a fast median but a slow tail


@pytest.mark.parametrize(
    "profile, budget_ms, batch, wait_ms",
    [
        (GPU, 50.0, 32, 1.0),  # biggest batch fits: wait half the single-crop latency
        (GPU, 6.0, 16, 0.5),  # budget stops at 16 (p95 5.5); only 0.5 ms of the budget left to wait
        (GPU, 3.0, 4, 0.1),  # budget 3: batch 4 (p95 2.9) leaves 0.1 ms
        (CPU_FLAT, 50.0, 1, 0.0),  # batching buys < 5 %: batch 1 and no waiting
        (CPU_SOME, 50.0, 8, 2.5),  # x1.8 at batch 8 on CPU: worth it within 50 ms
        (CPU_SOME, 20.0, 4, 2.5),  # batch 8's p95 (25 ms) is over budget
        (CACHE_CLIFF, 100.0, 8, 2.0),  # throughput falls past 8: the best, not the biggest
        (TOO_SLOW, 50.0, 1, 0.0),  # nothing fits: the smallest batch, never a bigger one
        (TAIL, 50.0, 2, 2.0),  # the budget applies to p95, not the median
    ],
)
def test_batcher_config_from_profile_table(
    profile: EngineProfile, budget_ms: float, batch: int, wait_ms: float
) -> None:
    cfg = batcher_config_from_profile(profile, budget_ms=budget_ms)
    assert choose_max_batch(profile, budget_ms) == batch
    assert cfg.max_batch == batch
    assert cfg.max_wait_ms == pytest.approx(wait_ms)
    assert cfg.max_queue >= cfg.max_batch and cfg.budget_ms == budget_ms


@pytest.mark.parametrize(
    "sizes, cap, expected",
    [
        ((1, 2, 4, 8, 16, 32), None, [1, 2, 4, 8, 16, 32]),
        ((1, 2, 4, 8, 16, 32), 12, [1, 2, 4, 8, 12]),  # a TensorRT profile capped at 12 is measured at 12
        ((1, 2, 4, 8), 8, [1, 2, 4, 8]),
        ((8, 1, 4, 4), None, [1, 4, 8]),
    ],
)
def test_batch_sizes_capped_by_the_engine(sizes: tuple[int, ...], cap: int | None, expected: list[int]) -> None:
    class Capped:
        max_batch = cap

        def infer(self, batch: np.ndarray) -> np.ndarray:
            return np.zeros(len(batch), np.float32)

    assert batch_sizes_for(Capped(), sizes) == expected


def test_profile_json_round_trip(tmp_path: Path) -> None:
    path = GPU.save(tmp_path / "profile.json")
    data = json.loads(path.read_text())
    assert data["timings"][0]["faces_per_s"] == pytest.approx(500.0)
    assert EngineProfile.load(path) == GPU


def test_profile_of_a_real_engine_on_real_faces(smoke_onnx: dict[str, Path]) -> None:
    from swapwatch.engine.onnx_runtime import OnnxEngine

    engine = OnnxEngine(smoke_onnx["masm"])
    engine.max_batch = 3  # as a TensorRT engine with a small optimization profile would report
    profile = profile_engine(engine, batch_sizes=(1, 2, 4, 8), seconds=0.05)
    assert [t.batch for t in profile.timings] == [1, 2, 3]
    assert all(t.runs >= 3 and 0 < t.median_ms <= t.p95_ms for t in profile.timings)
    assert profile.precision == "fp32" and profile.input_size == engine.input_size and profile.max_batch == 3
    assert 1 <= batcher_config_from_profile(profile).max_batch <= 3


# -- the command ----------------------------------------------------------------------------------


def bench_args(*argv: str) -> argparse.Namespace:
    from swapwatch.cli.bench_command import add_arguments

    parser = argparse.ArgumentParser(prog="swapwatch bench")
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def int8_copy(smoke_onnx: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke MASM model quantized to INT8 (static QDQ, calibrated on the real sample faces), with a sidecar.

    Static rather than dynamic quantization: dynamic INT8 picks activation scales per batch, so a
    crop's score would depend on its batch-mates (measured: 5e-3 here), which no batcher may allow.
    """
    pytest.importorskip("onnx")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from swapwatch.engine.metadata import file_sha256, read_metadata, write_metadata
    from swapwatch.engine.onnx_runtime import OnnxEngine
    from swapwatch.samples import sample_crops

    src = smoke_onnx["masm"]
    engine = OnnxEngine(src)
    x = engine.preprocess(sample_crops(engine.input_size, engine.meta.alignment.margin))

    class Faces(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{engine.input_name: x[i : i + 1]} for i in range(len(x))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rows, None)

    out = tmp_path_factory.mktemp("int8") / "masm-int8.onnx"
    quantize_static(str(src), str(out), Faces(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    meta = read_metadata(src).model_copy(update={"precision": "int8", "model_sha256": file_sha256(out)})
    write_metadata(out, meta)
    return out


def test_bench_command_end_to_end(smoke_onnx: dict[str, Path], int8_copy: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from swapwatch.cli.bench_command import run

    out = tmp_path / "bench"
    args = bench_args("--engine", str(smoke_onnx["masm"]), "--engine", str(int8_copy), "--engine",
                      str(smoke_onnx["airl"]), "--batches", "1", "2", "4", "--seconds", "0.2", "--tracks", "4",
                      "--out", str(out))
    assert run(args) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["format"] == "swapwatch-bench/1" and report["mode"] == "engine"
    assert set(report) >= {"time", "host", "settings", "engines", "skipped"}
    rows = report["engines"]
    assert [(Path(r["model"]).name, r["precision"]) for r in rows] == [
        ("model.onnx", "fp32"), ("masm-int8.onnx", "int8"), ("model.onnx", "fp32")]
    for row in rows:
        assert set(row) >= {"label", "backend", "precision", "method", "profile", "best", "batcher_config",
                            "batcher", "vs_fp32"}
        assert [t["batch"] for t in row["profile"]["timings"]] == [1, 2, 4]
        for t in row["profile"]["timings"]:
            assert t["median_ms"] > 0 and t["p95_ms"] >= t["median_ms"] and t["faces_per_s"] > 0
        b = row["batcher"]
        assert set(b) >= {"faces_per_s", "mean_batch", "queue_ms", "infer_ms", "latency_ms", "batch_sizes"}
        assert b["faces"] > 0 and 1 <= b["mean_batch"] <= row["batcher_config"]["max_batch"]
        assert b["max_abs_diff"] <= 1e-5  # the batcher handed every track its own crop's score
    masm_fp32, masm_int8, airl = rows
    assert masm_int8["vs_fp32"] == pytest.approx(masm_int8["best"]["faces_per_s"] / masm_fp32["best"]["faces_per_s"])
    assert masm_fp32["vs_fp32"] == pytest.approx(1.0) and airl["vs_fp32"] == pytest.approx(1.0)
    for png in ("throughput.png", "latency.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    printed = capsys.readouterr().out
    assert "faces/s" in printed and "masm-int8" in printed


@pytest.mark.parametrize(
    "argv, error, match",
    [
        (["--batches", "0"], ConfigError, "--batches"),
        (["--seconds", "0"], ConfigError, "--seconds"),
        (["--threads", "0"], ConfigError, "--threads"),
        (["--tracks", "0"], ConfigError, "--tracks"),
        (["--engine", "does-not-exist.onnx"], ModelFileError, "does-not-exist.onnx: no such engine file"),
    ],
)
def test_bench_command_refuses_bad_options(argv: list[str], error: type[Exception], match: str,
                                           tmp_path: Path) -> None:
    from swapwatch.cli.bench_command import run

    with pytest.raises(error, match=match):
        run(bench_args(*argv, "--out", str(tmp_path)))
    assert not (tmp_path / "bench.json").exists()


def test_bench_parser_keeps_engine_lines_and_takes_sources() -> None:
    # --engine always takes a value, so it never swallows a SOURCE of the stream benchmark
    args = bench_args("--engine", "a.onnx", "clip.mp4")
    assert args.engines == [Path("a.onnx")] and [str(s) for s in args.sources] == ["clip.mp4"]
    assert not bench_args().sources  # no SOURCE: the engine benchmark, as before
    assert bench_args().engines is None  # no --engine: the embedded default model
    assert bench_args("--engine", "a.onnx", "--engine", "b.onnx").engines == [Path("a.onnx"), Path("b.onnx")]


def backend_runs_here(backend: str) -> bool:
    import onnxruntime as ort

    if backend == "tensorrt":
        return importlib.util.find_spec("tensorrt") is not None
    if backend == "onnxruntime-cuda":
        return "CUDAExecutionProvider" in ort.get_available_providers()
    return False  # torch reads .pt checkpoints, never .onnx


@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime-cuda", "torch"])
def test_unavailable_backend_is_skipped_not_fatal(smoke_onnx: dict[str, Path], backend: str) -> None:
    from swapwatch.engine.bench import BenchSettings, run_bench

    if backend_runs_here(backend):
        pytest.skip(f"{backend} can run on this machine, so it is not an unavailable backend here")
    settings = BenchSettings(engines=(smoke_onnx["masm"],), backends=(backend, "onnxruntime"),
                             batches=(1, 2), seconds=0.05, tracks=2)
    report = run_bench(settings)
    assert [s["backend"] for s in report.skipped] == [backend]
    assert report.skipped[0]["reason"]
    assert [r.backend_requested for r in report.rows] == ["onnxruntime"]


def test_command_backend_choices_match_the_selector() -> None:
    from swapwatch.cli.bench_command import _BACKENDS
    from swapwatch.engine.select import BACKENDS

    assert _BACKENDS == BACKENDS


def test_bench_fails_when_nothing_ran(smoke_onnx: dict[str, Path], tmp_path: Path) -> None:
    from swapwatch.cli.bench_command import run

    if backend_runs_here("tensorrt"):
        pytest.skip("TensorRT is installed here: the tensorrt backend may run")

    args = bench_args("--engine", str(smoke_onnx["masm"]), "--backend", "tensorrt", "--seconds", "0.05",
                      "--out", str(tmp_path))
    assert run(args) == 1
    report: dict[str, Any] = json.loads((tmp_path / "bench.json").read_text())
    assert report["engines"] == [] and report["skipped"][0]["backend"] == "tensorrt"


def test_bench_defaults_to_the_embedded_model(tmp_path: Path) -> None:
    from swapwatch.cli.bench_command import run
    from swapwatch.engine.onnx_runtime import default_model_path

    try:
        default_model_path()
    except ModelFileError as err:
        pytest.skip(f"the embedded default model is not built yet: {err}")
    assert run(bench_args("--backend", "onnxruntime", "--batches", "1", "2", "--seconds", "0.05", "--tracks", "2",
                          "--out", str(tmp_path))) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["engines"]
    assert [Path(r["model"]).name for r in rows] == ["default.onnx"]
