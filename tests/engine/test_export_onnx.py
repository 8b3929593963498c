"""ONNX export of real checkpoints, the metadata sidecar, and the ONNX Runtime engine's refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from swapwatch.cli.main import main
from swapwatch.engine.metadata import read_metadata, sidecar_path
from swapwatch.engine.onnx_runtime import OnnxEngine
from swapwatch.errors import ModelFileError
from swapwatch.samples import sample_crops
from swapwatch.stream.faces import template_landmarks
from swapwatch.train.loop import model_from_checkpoint
from swapwatch.train.models.base import ScoreModel


@pytest.mark.parametrize("method", ["masm", "airl"])
def test_export_matches_torch_on_real_faces(smoke_runs: dict[str, Path], smoke_onnx: dict[str, Path], method: str) -> None:
    path = smoke_onnx[method]
    meta = read_metadata(path)
    assert meta.method == method
    assert meta.export["max_abs_diff"] < 1e-4
    assert meta.alignment.name == "arcface5" and len(meta.alignment.template) == 5
    model, state = model_from_checkpoint(smoke_runs[method] / "checkpoints" / "last.pt")
    # alignment.size is the canonical crop the model was trained on (the recipe's cache size), not its input
    assert meta.alignment.size == state["train_config"]["data"]["cache"]["size"] == 256 != meta.input_size
    np.testing.assert_allclose(meta.alignment.template, template_landmarks(256, meta.alignment.margin), atol=1e-4)
    engine = OnnxEngine(path)
    crops = sample_crops(engine.input_size, meta.alignment.margin, crop_size=meta.alignment.size)
    assert len(crops) == 8  # 6 faces in t1.jpg, the astronaut, Tom Hanks
    x = engine.preprocess(crops)
    with torch.no_grad():
        expected = ScoreModel(model).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(engine.infer(x), expected, atol=1e-4)
    assert engine.score_crops(crops[:1]).shape == (1,)  # dynamic batch: 1 and 8 both run


def test_masm_export_is_folded_to_plain_convolutions(smoke_onnx: dict[str, Path]) -> None:
    graph = onnx.load(str(smoke_onnx["masm"])).graph
    ops = {n.op_type for n in graph.node}
    assert "Gemm" in ops or "MatMul" in ops
    assert "Svd" not in ops
    # folded: every weight initialiser is used directly, no U @ diag(S) @ V^T product chains at run time
    assert not any(n.op_type == "MatMul" and "weight" in " ".join(n.input) and "U" in " ".join(n.input) for n in graph.node)


def test_sidecar_hash_mismatch_is_refused(smoke_onnx: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    shutil.copy(smoke_onnx["masm"], model)
    shutil.copy(sidecar_path(smoke_onnx["masm"]), sidecar_path(model))
    OnnxEngine(model)  # intact copy loads
    data = model.read_bytes()
    model.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one flipped bit
    with pytest.raises(ModelFileError, match="sidecar does not match m.onnx"):
        OnnxEngine(model)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: sidecar_path(p).unlink(), "missing metadata sidecar"),
        (lambda p: sidecar_path(p).write_text("{not json"), "not valid JSON"),
        (lambda p: sidecar_path(p).write_text(json.dumps({"method": "masm"})), "input_size"),
        (lambda p: p.write_bytes(b"truncated"), "m.onnx"),
    ],
)
def test_broken_model_files_name_the_file(smoke_onnx: dict[str, Path], tmp_path: Path, damage, message: str) -> None:  # noqa: ANN001
    model = tmp_path / "m.onnx"
    shutil.copy(smoke_onnx["masm"], model)
    shutil.copy(sidecar_path(smoke_onnx["masm"]), sidecar_path(model))
    damage(model)
    with pytest.raises(ModelFileError, match=message):
        OnnxEngine(model)


def test_wrong_crop_size_names_the_model(smoke_onnx: dict[str, Path]) -> None:
    engine = OnnxEngine(smoke_onnx["masm"])
    wrong = np.zeros((2, engine.input_size + 1, engine.input_size + 1, 3), np.uint8)
    with pytest.raises(ValueError, match=r"model.onnx: expected crops of shape \(N, 64, 64, 3\)"):
        engine.score_crops(wrong)


def test_export_of_a_missing_checkpoint_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.onnx")]) == 1
    assert "none.pt" in capsys.readouterr().err


def test_export_of_a_non_checkpoint_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    assert main(["export", str(bogus), "--out", str(tmp_path / "x.onnx")]) == 1
    assert "bogus.pt" in capsys.readouterr().err


def test_store_fp16_halves_the_file_and_keeps_the_scores(smoke_runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "airl.onnx"
    assert main(["export", str(smoke_runs["airl"] / "checkpoints" / "last.pt"), "--out", str(out)]) == 0
    fp32 = OnnxEngine(out)
    crops = sample_crops(fp32.input_size, fp32.meta.alignment.margin, crop_size=fp32.meta.alignment.size)
    before, size_before = fp32.score_crops(crops), out.stat().st_size
    fp32.close()
    assert main(["export", str(smoke_runs["airl"] / "checkpoints" / "last.pt"), "--out", str(out), "--store-fp16"]) == 0
    compact = OnnxEngine(out)  # loads: the sidecar's hash matches the rewritten file
    info = compact.meta.export["weights_storage"]
    assert info["dtype"] == "float16" and info["tensors"] > 0 and info["max_abs_diff"] < 1e-2
    assert out.stat().st_size < 0.6 * size_before
    np.testing.assert_allclose(compact.score_crops(crops), before, atol=1e-2)
