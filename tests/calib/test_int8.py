"""INT8 Q/DQ calibration of the real smoke MASM (ViT) and AIRL (ResNet-18 + DCT) models on real face crops."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from swapwatch.calib.int8 import (
    Int8Config,
    calibrate_int8,
    equalize_cross_layer,
    float_kept_nodes,
    quantize_onnx_int8,
)
from swapwatch.engine.metadata import file_sha256, read_metadata, sidecar_path, write_metadata
from swapwatch.engine.onnx_runtime import OnnxEngine
from swapwatch.errors import ModelFileError
from swapwatch.samples import sample_crops
from swapwatch.stream.faces.align import template_landmarks
from swapwatch.train.pseudofakes.generator import PseudoFakeGenerator

MAX_DRIFT = 0.08
"""Largest |INT8 - FP32| score allowed on the calibration crops. The smoke models are random-init networks
after a few steps, so this bounds gross breakage only: measured 0.006 on both once, 0.056 on the MASM ViT
since the smoke run's crops go through the area-resampling chain (its weights changed, not the quantiser)."""


def copy_model(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / "model.onnx"
    shutil.copy(src, dst)
    shutil.copy(sidecar_path(src), sidecar_path(dst))
    return dst


@pytest.fixture(scope="module")
def crops_by_size() -> dict[tuple[int, float], np.ndarray]:
    return {}


def real_and_pseudo_crops(cache: dict[tuple[int, float], np.ndarray], size: int, margin: float) -> np.ndarray:
    """The 8 real sample faces plus one deterministic pseudo-fake of each (16 crops)."""
    if (size, margin) not in cache:
        reals = sample_crops(size, margin)
        lm = template_landmarks(size, margin)
        gen = PseudoFakeGenerator()
        fakes = [gen(c, lm, np.random.default_rng([0, 7919, i])).image for i, c in enumerate(reals)]
        cache[(size, margin)] = np.concatenate([reals, np.stack(fakes)])
    return cache[(size, margin)]


def initializer(graph: onnx.GraphProto, name: str) -> np.ndarray:
    for t in graph.initializer:
        if t.name == name:
            return onnx.numpy_helper.to_array(t)
    raise KeyError(name)


@pytest.mark.parametrize(
    ("method", "target", "act_dtype", "act_zero_point"),
    [
        ("masm", "cpu", np.uint8, 128),
        ("airl", "cpu", np.uint8, None),  # a CNN without MatMul: asymmetric u8 (Relu folded into the range)
        ("masm", "tensorrt", np.int8, 0),
        ("airl", "tensorrt", np.int8, 0),
    ],
)
def test_int8_qdq_graph_runs_and_stays_close_to_fp32(
    smoke_onnx: dict[str, Path], crops_by_size, tmp_path: Path, method: str, target: str, act_dtype, act_zero_point: int
) -> None:
    model = copy_model(smoke_onnx[method], tmp_path)
    fp32 = OnnxEngine(model)
    crops = real_and_pseudo_crops(crops_by_size, fp32.input_size, fp32.meta.alignment.margin)
    res = calibrate_int8(model, crops, tmp_path / "model.int8.onnx", Int8Config(target=target), source="sample faces")

    graph = onnx.load(str(res.path)).graph
    q = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert q and dq and len(dq) >= len(q)
    # activations: the target's type and symmetric zero point (any for asymmetric); weights: int8, zp 0, per channel
    for n in q:
        zp = initializer(graph, n.input[2])
        assert zp.dtype == act_dtype and (act_zero_point is None or np.all(zp == act_zero_point)), n.name
    weight_dq = [n for n in dq if any(t.name == n.input[0] for t in graph.initializer)]
    assert weight_dq
    assert all(initializer(graph, n.input[0]).dtype == np.int8 for n in weight_dq)
    assert any(initializer(graph, n.input[1]).size > 1 for n in weight_dq)  # per-channel scales
    assert not [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT32]  # biases stay float

    int8 = OnnxEngine(res.path)  # loads on ORT CPU and verifies the new sidecar's hash
    x = fp32.preprocess(crops)
    drift = np.abs(int8.infer(x) - fp32.infer(x))
    assert drift.max() <= MAX_DRIFT, f"max drift {drift.max():.4f}"

    meta, src_meta = read_metadata(res.path), read_metadata(model)
    assert meta.precision == "int8" and meta.model_sha256 == file_sha256(res.path) != src_meta.model_sha256
    assert (meta.method, meta.input_size, meta.mean, meta.std, meta.alignment) == (
        src_meta.method, src_meta.input_size, src_meta.mean, src_meta.std, src_meta.alignment
    )
    cal = meta.export["calibration"]
    assert cal["n_crops"] == 16 and cal["method"] == "minmax" and cal["source"] == "sample faces"
    assert meta.export["quantization"]["target"] == target
    assert meta.export["derived_from"] == {"model": "model.onnx", "model_sha256": src_meta.model_sha256}
    assert read_metadata(model) == src_meta  # the FP32 sidecar is untouched


@pytest.mark.parametrize(
    ("method", "head", "sensitive"),
    [
        # ViT: only the classifier Gemm is kept float; nothing feeds Log/Sqrt/Div denominators
        ("masm", ["/detector/head/Gemm"], []),
        # AIRL: the head, and the frequency front end (grey 1x1 conv + DCT conv feeding the log compression)
        ("airl", ["/detector/head/Gemm"], ["/detector/freq/dct/Conv", "/detector/freq/dct/dct/Conv"]),
    ],
)
def test_float_kept_nodes_of_the_smoke_graphs(
    smoke_onnx: dict[str, Path], tmp_path: Path, method: str, head: list[str], sensitive: list[str]
) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp_path / "pre.onnx"
    quant_pre_process(str(smoke_onnx[method]), str(pre))
    kept = float_kept_nodes(onnx.load(str(pre)))
    assert kept["head"] == head
    assert kept["sensitive"] == sensitive
    assert len(kept["stem"]) == (1 if method == "masm" else 2)  # patch embedding; RGB conv1 + grey conv


@pytest.mark.parametrize(("layers", "grows"), [(0, False), (1, True), (2, True), (3, True)])
def test_float_stem_layers_walk_deeper_one_compute_layer_at_a_time(
    smoke_onnx: dict[str, Path], tmp_path: Path, layers: int, grows: bool
) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp_path / "pre.onnx"
    quant_pre_process(str(smoke_onnx["airl"]), str(pre))
    model = onnx.load(str(pre))
    by_depth = [set(float_kept_nodes(model, stem=d)["stem"]) for d in range(layers + 1)]
    assert by_depth[0] == set()
    if layers:
        shallower, deeper = by_depth[layers - 1], by_depth[layers]
        assert shallower < deeper if grows else shallower == deeper  # each step adds the next layer(s)
        producers = {o: n for n in model.graph.node for o in n.output}
        for name in deeper - shallower:  # ... that read (through non-compute ops) a float-kept layer or the input
            node = next(n for n in model.graph.node if n.name == name)
            assert any(i in producers or i == model.graph.input[0].name for i in node.input)


def test_kept_nodes_really_stay_float(smoke_onnx: dict[str, Path], crops_by_size, tmp_path: Path) -> None:
    engine = OnnxEngine(smoke_onnx["airl"])
    x = engine.preprocess(real_and_pseudo_crops(crops_by_size, engine.input_size, engine.meta.alignment.margin))
    info = quantize_onnx_int8(smoke_onnx["airl"], tmp_path / "q.onnx", x)
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name in info["float_nodes"]:
            fed_by = [producers[i].op_type for i in node.input if i in producers]
            assert "DequantizeLinear" not in fed_by, node.name
    quantized = [n for n in graph.node if n.op_type == "Conv" and n.name not in info["float_nodes"]]
    assert len(quantized) >= 20  # the ResNet body and the frequency CNN are INT8


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda m: m.unlink(), ModelFileError, "no such model"),
        (lambda m: m.write_bytes(b"not an onnx model"), ModelFileError, "sidecar does not match"),
        (lambda m: sidecar_path(m).unlink(), ModelFileError, "missing metadata sidecar"),
    ],
)
def test_bad_models_are_refused_naming_the_file(
    smoke_onnx: dict[str, Path], tmp_path: Path, damage, error: type[Exception], message: str
) -> None:
    model = copy_model(smoke_onnx["masm"], tmp_path)
    damage(model)
    with pytest.raises(error, match=message) as info:
        calibrate_int8(model, np.zeros((2, 64, 64, 3), np.uint8), tmp_path / "q.onnx")
    assert "model.onnx" in str(info.value)
    assert not (tmp_path / "q.onnx").exists()


def test_corrupt_model_with_matching_sidecar_names_the_file(smoke_onnx: dict[str, Path], tmp_path: Path) -> None:
    model = copy_model(smoke_onnx["masm"], tmp_path)
    model.write_bytes(b"\x08\x07garbage")
    meta = read_metadata(model, verify_hash=False)
    write_metadata(model, meta.model_copy(update={"model_sha256": file_sha256(model)}))
    with pytest.raises(ModelFileError, match=r"model\.onnx: expected a valid ONNX model"):
        calibrate_int8(model, np.zeros((2, 64, 64, 3), np.uint8), tmp_path / "q.onnx")


def test_only_fp32_models_are_quantized(smoke_onnx: dict[str, Path], tmp_path: Path) -> None:
    model = copy_model(smoke_onnx["masm"], tmp_path)
    meta = read_metadata(model)
    write_metadata(model, meta.model_copy(update={"precision": "fp16"}))
    with pytest.raises(ModelFileError, match="precision=fp16"):
        calibrate_int8(model, np.zeros((2, 64, 64, 3), np.uint8), tmp_path / "q.onnx")


def test_wrong_size_crops_name_the_model(smoke_onnx: dict[str, Path], tmp_path: Path) -> None:
    model = copy_model(smoke_onnx["masm"], tmp_path)
    with pytest.raises(ValueError, match=r"model\.onnx: expected crops of shape \(N, 64, 64, 3\)"):
        calibrate_int8(model, np.zeros((2, 112, 112, 3), np.uint8), tmp_path / "q.onnx")


def test_cross_layer_equalization_keeps_the_float_function() -> None:
    """Conv -> Relu -> depthwise Conv -> Relu -> 1x1 Conv with channel ranges 1000x apart: equalization
    evens the ranges and leaves the output unchanged."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(8, 3, 3, 3)).astype(np.float32) * np.logspace(-3, 0, 8, dtype=np.float32)[:, None, None, None]
    w2 = rng.normal(size=(8, 1, 3, 3)).astype(np.float32) / np.logspace(-3, 0, 8, dtype=np.float32)[:, None, None, None]
    w3 = rng.normal(size=(4, 8, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(w1, "w1"), (rng.normal(size=8).astype(np.float32), "b1"), (w2, "w2"), (w3, "w3")]]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="c2", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="c3"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)

    def run(m: onnx.ModelProto) -> np.ndarray:
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run(None, {"x": x})[0]

    before = run(model)
    assert equalize_cross_layer(model) == 2
    np.testing.assert_allclose(run(model), before, rtol=1e-4, atol=1e-5 * np.abs(before).max())
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    r1 = np.abs(w["w1"]).reshape(8, -1).max(1)
    assert r1.max() / r1.min() < 10  # was ~1000


def test_a_graph_without_symbolic_shapes_is_pre_processed_with_onnx_shapes_and_leaves_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """AIRL on timm's EfficientNet-Lite0 (the default model's graph, here random-init at 64 px) defeats ORT's
    symbolic shape inference; INT8 still builds (ONNX shape inference only), runs, and ORT's temporary
    files do not land in the working directory."""
    torch = pytest.importorskip("torch")
    from swapwatch.train.models.airl import AIRLConfig, AIRLDetector
    from swapwatch.train.models.base import ScoreModel

    model = ScoreModel(AIRLDetector(AIRLConfig(rgb_backbone="efficientnet_lite0", image_size=64))).eval()
    src = tmp_path / "lite0.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 64, 64), str(src), input_names=["input"], output_names=["score"],
                      dynamic_axes={"input": {0: "batch"}, "score": {0: "batch"}}, opset_version=17, dynamo=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    x = np.random.default_rng(0).normal(size=(4, 3, 64, 64)).astype(np.float32)
    with caplog.at_level("WARNING", logger="swapwatch.calib.int8"):
        info = quantize_onnx_int8(src, tmp_path / "lite0.int8.onnx", x)
    assert "symbolic shape inference failed" in caplog.text
    assert info["quantize_linear"] > 0
    assert list(work.iterdir()) == []
    import onnxruntime as ort

    out = ort.InferenceSession(str(tmp_path / "lite0.int8.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert out.shape[0] == 4 and np.all(np.isfinite(out))
