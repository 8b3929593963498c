"""The backends behind one interface, on this CPU machine: ONNX Runtime CPU and torch for real, the
choice `auto` makes (and logs), and the errors for backends this machine cannot run."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from swapwatch.config import parse_config
from swapwatch.engine.base import BackendUnavailable, Engine
from swapwatch.engine.onnx_runtime import OnnxEngine
from swapwatch.engine.select import EngineConfig, Probe, auto_order, load_engine
from swapwatch.errors import ConfigError, ModelFileError, SwapwatchError
from swapwatch.samples import sample_crops

METHODS = ["masm", "airl"]
TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def checkpoint(smoke_runs: dict[str, Path], method: str) -> Path:
    return smoke_runs[method] / "checkpoints" / "last.pt"


def gpu_stack_present() -> str | None:
    """Why this machine could pick a GPU backend under auto (None = it cannot)."""
    from swapwatch.engine.select import probe_environment

    probe = probe_environment()
    if probe.tensorrt is None and probe.cuda is None:
        return "tensorrt and CUDA are present"
    found = [p for p in (TRT, CUDA) if p in probe.ort_providers]
    return f"onnxruntime has {found}" if found else None


# ------------------------------------------------------------------------------- CPU backends for real


@pytest.mark.parametrize("method", METHODS)
def test_onnxruntime_cpu_and_torch_score_real_faces_the_same(
    smoke_runs: dict[str, Path], smoke_onnx: dict[str, Path], method: str
) -> None:
    onnx = load_engine(smoke_onnx[method], backend="onnxruntime")
    torch_engine = load_engine(checkpoint(smoke_runs, method), backend="torch")
    assert onnx.name == "onnxruntime:cpu" and onnx.session.get_providers() == [CPU]
    assert torch_engine.name.startswith("torch:")
    for e in (onnx, torch_engine):
        assert isinstance(e, Engine) and e.max_batch is None
    # the torch backend builds its metadata from the checkpoint: it must agree with the exported sidecar
    for field in ("method", "input_size", "mean", "std", "color", "alignment"):
        assert getattr(torch_engine.meta, field) == getattr(onnx.meta, field), field
    crops = sample_crops(onnx.input_size, onnx.meta.alignment.margin)
    a, b = onnx.score_crops(crops), torch_engine.score_crops(crops)
    assert a.shape == b.shape == (len(crops),) and a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert np.all((a >= 0) & (a <= 1)) and not np.allclose(a, a[0])
    np.testing.assert_allclose(onnx.infer(onnx.preprocess(crops[:1])), a[:1], atol=1e-6)  # batch of one
    onnx.close()
    torch_engine.close()


@pytest.mark.parametrize("max_batch", [1, 3, 8, 100])
def test_batches_above_max_batch_are_split(smoke_onnx: dict[str, Path], max_batch: int,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    engine = OnnxEngine(smoke_onnx["masm"])
    crops = sample_crops(engine.input_size, engine.meta.alignment.margin)
    whole = engine.score_crops(crops)
    sizes: list[int] = []
    run = engine._run
    monkeypatch.setattr(engine, "_run", lambda b: sizes.append(len(b)) or run(b))
    engine.max_batch = max_batch
    np.testing.assert_allclose(engine.score_crops(crops), whole, atol=1e-6)
    assert len(sizes) == math.ceil(len(crops) / max_batch) and max(sizes) <= max_batch and sum(sizes) == len(crops)


def test_closed_engine_refuses_work(smoke_onnx: dict[str, Path]) -> None:
    with load_engine(smoke_onnx["masm"], backend="onnxruntime") as engine:
        crops = np.zeros((1, engine.input_size, engine.input_size, 3), np.uint8)
        assert engine.score_crops(crops).shape == (1,)
    engine.close()  # idempotent
    with pytest.raises(SwapwatchError, match="model.onnx: engine onnxruntime:cpu was closed"):
        engine.score_crops(crops)


@pytest.mark.parametrize(
    ("backend", "shape"),
    [
        ("onnxruntime", (2, 65, 65, 3)),
        ("onnxruntime", (2, 64, 64, 4)),
        ("onnxruntime", (64, 64, 3)),
        ("torch", (2, 63, 63, 3)),
        ("torch", (1, 64, 32, 3)),
    ],
)
def test_wrong_crop_size_names_the_model_file(smoke_runs: dict[str, Path], smoke_onnx: dict[str, Path],
                                              backend: str, shape: tuple[int, ...]) -> None:
    path = smoke_onnx["masm"] if backend == "onnxruntime" else checkpoint(smoke_runs, "masm")
    engine = load_engine(path, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"^{path.name}: expected crops of shape \(N, 64, 64, 3\), got \(") as info:
        engine.score_crops(np.zeros(shape, np.uint8))
    assert str(shape) in str(info.value)


def test_empty_batches_score_to_nothing(smoke_onnx: dict[str, Path]) -> None:
    engine = load_engine(smoke_onnx["airl"], backend="onnxruntime")
    assert engine.score_crops([]).shape == (0,)
    assert engine.infer(np.zeros((0, 3, engine.input_size, engine.input_size), np.float32)).shape == (0,)


# ------------------------------------------------------------------------------------------------ auto


def test_auto_picks_onnxruntime_cpu_here_and_logs_why(smoke_onnx: dict[str, Path],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    reason = gpu_stack_present()
    if reason:
        pytest.skip(f"this machine has a GPU backend ({reason}); auto would not pick the CPU")
    with caplog.at_level(logging.INFO, logger="swapwatch.engine.select"):
        engine = load_engine(smoke_onnx["masm"])
    assert engine.name == "onnxruntime:cpu"
    chosen = [r for r in caplog.records if r.message.startswith("auto: using")]
    assert len(chosen) == 1 and chosen[0].levelno == logging.INFO
    msg = chosen[0].message
    assert "onnxruntime:cpu for model.onnx" in msg
    for why in ("tensorrt", f"onnxruntime has no {TRT}", f"onnxruntime has no {CUDA}", CPU):
        assert why in msg, why


def test_auto_falls_back_past_backends_that_do_not_start(smoke_onnx: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Pretend every GPU option exists: each fails to open here, auto logs it and ends on the CPU."""
    if gpu_stack_present():
        pytest.skip("this machine really has GPU backends")
    from swapwatch.engine import select

    monkeypatch.setattr(select, "probe_environment", lambda device=0: Probe(None, None, [TRT, CUDA, CPU]))
    with caplog.at_level(logging.INFO, logger="swapwatch.engine.select"):
        engine = load_engine(smoke_onnx["masm"])
    assert engine.name == "onnxruntime:cpu"
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING and r.name == "swapwatch.engine.select"]
    assert [m.split(":")[1].split()[0] for m in warned] == ["tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda"]
    assert "the tensorrt package is not installed" in warned[0] and f"onnxruntime has no {TRT}" in warned[1]


FULL = Probe(None, None, [TRT, CUDA, CPU])
NO_TRT_PKG = Probe("the tensorrt package is not installed", "not probed", [TRT, CUDA, CPU])
NO_GPU = Probe(None, "no CUDA GPU (device 0)", [CUDA, CPU])
CPU_ONLY = Probe("the tensorrt package is not installed", "not probed", ["AzureExecutionProvider", CPU])


@pytest.mark.parametrize(
    ("path", "probe", "expected"),
    [
        ("m.onnx", FULL, ["tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda", "onnxruntime"]),
        (None, FULL, ["tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda", "onnxruntime"]),
        ("m.onnx", NO_TRT_PKG, ["onnxruntime-tensorrt", "onnxruntime-cuda", "onnxruntime"]),
        ("m.onnx", NO_GPU, ["onnxruntime-cuda", "onnxruntime"]),
        ("m.onnx", CPU_ONLY, ["onnxruntime"]),
        ("m.plan", CPU_ONLY, ["tensorrt"]),
        ("m.engine", FULL, ["tensorrt"]),
        ("m.ep", FULL, ["torch-tensorrt"]),
        ("m.pt", FULL, ["torch"]),
        ("m.pt", CPU_ONLY, ["torch"]),
    ],
)
def test_auto_order(path: str | None, probe: Probe, expected: list[str]) -> None:
    order = auto_order(Path(path) if path else None, probe)
    assert [b for b, _ in order] == expected
    assert all(reason for _, reason in order)


def test_auto_cpu_reason_names_every_skipped_option() -> None:
    (_, reason), = auto_order(Path("m.onnx"), CPU_ONLY)
    assert reason.startswith("CPU fallback: TensorRT plan: the tensorrt package is not installed")
    assert f"no {TRT}" in reason and f"no {CUDA}" in reason and "AzureExecutionProvider, CPUExecutionProvider" in reason


# ------------------------------------------------------------------------ backends this machine lacks


@pytest.mark.parametrize(("backend", "provider"), [("onnxruntime-cuda", CUDA), ("onnxruntime-tensorrt", TRT)])
def test_missing_onnxruntime_provider_lists_the_available_ones(smoke_onnx: dict[str, Path], backend: str,
                                                               provider: str) -> None:
    available = ort.get_available_providers()
    if provider in available:
        pytest.skip(f"this onnxruntime has {provider}")
    with pytest.raises(BackendUnavailable) as info:
        load_engine(smoke_onnx["masm"], backend=backend)  # type: ignore[arg-type]
    msg = str(info.value)
    assert f"onnxruntime has no {provider}" in msg and "[gpu]" in msg
    assert f"available providers: {', '.join(available)}" in msg


@pytest.mark.parametrize(
    ("providers", "execution", "outcome"),
    [
        (None, None, "onnxruntime:cpu"),
        ([CPU], None, "onnxruntime:cpu"),
        ([CUDA, CPU], None, "onnxruntime:cpu"),  # the original lenient API keeps what exists
        (None, "cpu", "onnxruntime:cpu"),
        (None, "cuda", BackendUnavailable),  # the strict one refuses
        ([CPU], "cpu", ValueError),
        (["AzureExecutionProvider"], None, ConfigError),
    ],
)
def test_onnx_engine_lenient_and_strict_providers(smoke_onnx: dict[str, Path], providers: list[str] | None,
                                                  execution: str | None, outcome: object) -> None:
    if execution == "cuda" and CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    if isinstance(outcome, str):
        assert OnnxEngine(smoke_onnx["masm"], providers=providers, execution=execution).name == outcome  # type: ignore[arg-type]
    else:
        with pytest.raises(outcome):  # type: ignore[call-overload]
            OnnxEngine(smoke_onnx["masm"], providers=providers, execution=execution)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("backend", "which", "message"),
    [
        ("tensorrt", "onnx", "tensorrt"),
        ("tensorrt", "plan", "tensorrt"),
        ("torch-tensorrt", "ckpt", "torch-tensorrt"),
    ],
)
def test_gpu_backends_say_what_is_missing(smoke_runs: dict[str, Path], smoke_onnx: dict[str, Path], tmp_path: Path,
                                          backend: str, which: str, message: str) -> None:
    from swapwatch.engine.plan_cache import cuda_gpu

    if cuda_gpu(0) is not None:
        pytest.skip("CUDA GPU present: tests/engine/test_gpu_paths.py covers these backends")
    path = {"onnx": smoke_onnx["masm"], "ckpt": checkpoint(smoke_runs, "masm")}.get(which)
    if which == "plan":
        path = tmp_path / "m.plan"
        path.write_bytes(b"not a real plan")
    with pytest.raises(BackendUnavailable, match=message) as info:
        load_engine(path, backend=backend)  # type: ignore[arg-type]
    assert "[gpu]" in str(info.value) or "NVIDIA GPU with CUDA; found none" in str(info.value)


@pytest.mark.parametrize(
    ("backend", "which", "needle"),
    [
        ("onnxruntime", "ckpt", "backend onnxruntime reads .onnx files, not .pt"),
        ("torch", "onnx", "backend torch reads .pt files, not .onnx"),
        ("torch", None, "backend torch needs a model file"),
        ("torch-tensorrt", "onnx", "backend torch-tensorrt reads .ep or .pt files"),
        ("bogus", "onnx", "backend: 'bogus' is not one of auto, onnxruntime"),
    ],
)
def test_wrong_file_for_backend_is_a_config_error(smoke_runs: dict[str, Path], smoke_onnx: dict[str, Path],
                                                  backend: str, which: str | None, needle: str) -> None:
    path = {"onnx": smoke_onnx["masm"], "ckpt": checkpoint(smoke_runs, "masm"), None: None}[which]
    with pytest.raises(ConfigError, match=needle):
        load_engine(path, backend=backend)  # type: ignore[arg-type]


def test_missing_engine_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="nothing.onnx: no such engine file"):
        load_engine(tmp_path / "nothing.onnx")


# --------------------------------------------------------------------------------------- config, imports


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, None),
        ({"backend": "tensorrt", "model": "m.plan", "device": 1, "plan_cache": "/tmp/p", "max_batch": 64,
          "opt_batch": 16, "threads": 2}, None),
        ({"backend": "tensorrt-fp16"}, "backend"),
        ({"opt_batch": 64, "max_batch": 32}, "opt_batch \\(64\\) must be <= max_batch \\(32\\)"),
        ({"threads": 0}, "threads"),
        ({"device": -1}, "device"),
        ({"max_batch": 8, "batch": 4}, "batch: Extra inputs are not permitted"),
    ],
)
def test_engine_config(data: dict[str, object], error: str | None) -> None:
    if error is None:
        cfg = parse_config(EngineConfig, data, "monitor.yaml")
        assert cfg.profile().max_batch == cfg.max_batch and cfg.profile().opt_batch == cfg.opt_batch
    else:
        with pytest.raises(ConfigError, match=error) as info:
            parse_config(EngineConfig, data, "monitor.yaml")
        assert str(info.value).startswith("monitor.yaml: invalid config")


def test_engine_from_config_opens_the_model(smoke_onnx: dict[str, Path]) -> None:
    from swapwatch.engine.select import engine_from_config

    engine = engine_from_config(EngineConfig(backend="onnxruntime", model=smoke_onnx["airl"], threads=2))
    assert engine.name == "onnxruntime:cpu" and engine.meta.method == "airl"


def test_selecting_and_running_on_the_cpu_never_imports_torch(smoke_onnx: dict[str, Path]) -> None:
    """The monitor install has no torch: the selector and the ONNX Runtime path must not need it."""
    if gpu_stack_present():
        pytest.skip("with a GPU stack auto may legitimately import torch to probe CUDA")
    code = (
        "import json, sys\n"
        "import numpy as np\n"
        "from swapwatch.engine.select import load_engine\n"
        "imported_at_start = [m for m in sys.modules if m.split('.')[0] == 'torch']\n"
        "e = load_engine(sys.argv[1])\n"
        "s = e.score_crops(np.zeros((2, e.input_size, e.input_size, 3), np.uint8))\n"
        "print(json.dumps({'start': imported_at_start, 'end': [m for m in sys.modules if m.split('.')[0] == 'torch'],"
        " 'name': e.name, 'n': len(s)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(smoke_onnx["masm"])], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"start": [], "end": [], "name": "onnxruntime:cpu", "n": 2}
