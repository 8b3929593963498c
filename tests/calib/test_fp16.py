"""Mixed-precision FP16 ONNX of the real smoke models: graph structure, onnx.checker, ORT parity where it runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from swapwatch.calib.fp16 import (
    DEFAULT_BLOCK_OPS,
    Fp16Config,
    calibrate_fp16,
    check_fp16_graph,
    probe_ranges,
    to_mixed_fp16,
)
from swapwatch.engine.metadata import file_sha256, read_metadata, sidecar_path
from swapwatch.engine.onnx_runtime import OnnxEngine
from swapwatch.errors import ModelFileError
from swapwatch.samples import sample_crops

MAX_DRIFT = 2e-3
"""Largest |FP16 - FP32| score allowed on real crops where ORT CPU runs the graph (measured: 2e-4)."""

F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def copy_model(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / "model.onnx"
    shutil.copy(src, dst)
    shutil.copy(sidecar_path(src), sidecar_path(dst))
    return dst


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    m = onnx.shape_inference.infer_shapes(model)
    g = m.graph
    types = {t.name: t.data_type for t in g.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]})
    return types


@pytest.fixture(scope="module")
def converted(smoke_onnx: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """method -> (FP32 copy, its FP16 conversion with the data-range rule on the real sample crops)."""
    out = {}
    for method, src in smoke_onnx.items():
        tmp = tmp_path_factory.mktemp(f"fp16-{method}")
        model = copy_model(src, tmp)
        meta = read_metadata(model)
        crops = sample_crops(meta.input_size, meta.alignment.margin)
        res = calibrate_fp16(model, crops, tmp / "model.fp16.onnx", source="sample faces")
        out[method] = (model, res.path)
    return out


@pytest.mark.parametrize("method", ["masm", "airl"])
def test_fp16_graph_structure(converted: dict[str, tuple[Path, Path]], method: str) -> None:
    fp32_path, path = converted[method]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert check_fp16_graph(model) == []
    g = model.graph
    assert [i.type.tensor_type.elem_type for i in [*g.input, *g.output]] == [F32, F32]  # io stays FP32
    floats = [t for t in g.initializer if t.data_type in (F32, F16)]
    big16 = [t for t in floats if t.data_type == F16 and int(np.prod(t.dims)) >= 64]
    big32 = [t for t in floats if t.data_type == F32 and int(np.prod(t.dims)) >= 64]
    assert big16 and len(big16) > len(big32)  # the weights are FP16 ...
    assert path.stat().st_size < 0.65 * fp32_path.stat().st_size  # ... so the file is about half the size
    types = tensor_types(model)
    blocked = [n for n in g.node if n.op_type in DEFAULT_BLOCK_OPS]
    assert blocked  # LayerNorm/Softmax/Sigmoid/... are present in both models
    for n in blocked:  # and compute in FP32: every float input and output is float32
        io = [types[t] for t in [*n.input, *n.output] if t and types.get(t) in (F32, F16)]
        assert io and all(t == F32 for t in io), f"{n.op_type} {n.name}"
    heavy = [n for n in g.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    in16 = [n for n in heavy if types.get(n.output[0]) == F16]
    assert len(in16) >= 0.8 * len(heavy)  # the compute layers run in FP16


@pytest.mark.parametrize("method", ["masm", "airl"])
def test_fp16_sidecar(converted: dict[str, tuple[Path, Path]], method: str) -> None:
    fp32_path, path = converted[method]
    meta, src = read_metadata(path), read_metadata(fp32_path)
    assert meta.precision == "fp16" and meta.model_sha256 == file_sha256(path)
    assert (meta.input_size, meta.mean, meta.std, meta.alignment) == (src.input_size, src.mean, src.std, src.alignment)
    assert meta.export["fp16"]["probe_crops"] == 8 and meta.export["fp16"]["source"] == "sample faces"
    assert meta.export["derived_from"]["model_sha256"] == src.model_sha256


@pytest.mark.parametrize("method", ["masm", "airl"])
def test_fp16_scores_match_fp32_where_ort_runs_it(converted: dict[str, tuple[Path, Path]], method: str) -> None:
    fp32_path, path = converted[method]
    fp32 = OnnxEngine(fp32_path)
    try:
        fp16 = OnnxEngine(path)
    except ModelFileError as err:  # ORT CPU lacks an FP16 kernel: the structure test above still holds
        pytest.skip(f"ONNX Runtime CPU cannot run this FP16 graph: {err}")
    x = fp32.preprocess(sample_crops(fp32.input_size, fp32.meta.alignment.margin))
    drift = np.abs(fp16.infer(x) - fp32.infer(x))
    assert drift.max() <= MAX_DRIFT


@pytest.mark.parametrize(
    ("cfg", "use_ranges", "weighted_only"),
    [
        # every activation of these models exceeds 1e-3 somewhere: every compute layer stays FP32
        (Fp16Config(data_max=1e-3), True, False),
        # blocking the compute ops by type keeps them FP32 without data
        (Fp16Config(block_ops=[*DEFAULT_BLOCK_OPS, "Conv", "MatMul", "Gemm"]), False, False),
        # an initializer limit below the weights' magnitude keeps the layers with weights FP32
        # (attention's activation x activation MatMuls read no initializer: they may convert)
        (Fp16Config(init_max=1e-4), False, True),
    ],
)
def test_rules_keep_nodes_in_fp32(smoke_onnx: dict[str, Path], cfg: Fp16Config, use_ranges: bool, weighted_only: bool) -> None:
    model = onnx.load(str(smoke_onnx["masm"]))
    ranges = None
    if use_ranges:
        meta = read_metadata(smoke_onnx["masm"])
        engine = OnnxEngine(smoke_onnx["masm"])
        ranges = probe_ranges(onnx.shape_inference.infer_shapes(model), engine.preprocess(
            sample_crops(meta.input_size, meta.alignment.margin)))
    out, summary = to_mixed_fp16(model, cfg, ranges)
    types = tensor_types(out)
    inits = {t.name for t in model.graph.initializer} | {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    checked = 0
    for n in out.graph.node:
        if n.op_type in ("Conv", "MatMul", "Gemm") and (not weighted_only or any(i in inits for i in n.input)):
            assert types[n.output[0]] == F32, n.name
            checked += 1
    assert checked >= 10 and summary["kept_fp32_nodes"] >= checked


def test_block_nodes_by_name(smoke_onnx: dict[str, Path]) -> None:
    model = onnx.load(str(smoke_onnx["airl"]))
    name = next(n.name for n in model.graph.node if n.op_type == "Conv")
    out, _ = to_mixed_fp16(model, Fp16Config(block_nodes=[name]))
    types = tensor_types(out)
    node = next(n for n in out.graph.node if n.name == name)
    assert types[node.output[0]] == F32
    onnx.checker.check_model(out, full_check=True)


def test_missing_and_corrupt_models_name_the_file(tmp_path: Path) -> None:
    from swapwatch.calib.fp16 import convert_onnx_fp16

    with pytest.raises(ModelFileError, match="nope.onnx"):
        convert_onnx_fp16(tmp_path / "nope.onnx", tmp_path / "out.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelFileError, match="bad.onnx"):
        convert_onnx_fp16(bad, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
