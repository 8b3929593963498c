"""`swapwatch eval` end to end: a plain-folder dataset of real faces and pseudo-fakes, torch and ONNX models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swapwatch.samples import sample_face_images
from swapwatch.stream.cli import main
from swapwatch.train.degrade import ROBUSTNESS_LEVELS


@pytest.mark.parametrize("kind", ["checkpoint", "onnx"])
def test_eval_on_samples_with_pseudo_fakes_and_robustness(
    smoke_runs: dict[str, Path], smoke_onnx: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    model = smoke_onnx["masm"] if kind == "onnx" else smoke_runs["masm"] / "checkpoints" / "last.pt"
    out = tmp_path / "eval"
    args = ["eval", "--model", str(model), "--format", "samples", "--cache", str(tmp_path / "cache"),
            "--pseudo-fakes", "--robustness", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert m["n"] == 16 and m["n_fake"] == 8  # 8 real sample faces, each also as a pseudo-fake
    assert 0.0 <= m["auc"] <= 1.0 and m["video_auc"] is not None and m["eer"] is not None
    assert set(report["robustness"]) == set(ROBUSTNESS_LEVELS)
    assert all(len(row) == 4 for row in report["robustness"].values())
    assert (out / "roc.png").exists() and (out / "robustness.png").exists()


def test_eval_torch_and_onnx_agree(smoke_runs: dict[str, Path], smoke_onnx: dict[str, Path], tmp_path: Path) -> None:
    results = []
    for model in (smoke_runs["airl"] / "checkpoints" / "last.pt", smoke_onnx["airl"]):
        out = tmp_path / model.suffix
        assert main(["eval", "--model", str(model), "--format", "samples", "--cache", str(tmp_path / "c"),
                     "--pseudo-fakes", "--out", str(out)]) == 0
        results.append(json.loads((out / "report.json").read_text())["metrics"])
    assert results[0]["auc"] == pytest.approx(results[1]["auc"], abs=1e-6)


def test_eval_plain_folder_with_real_and_fake(smoke_onnx: dict[str, Path], tmp_path: Path) -> None:
    import cv2

    from swapwatch.stream.faces.pipeline import read_image

    root = tmp_path / "folder"
    (root / "real").mkdir(parents=True)
    (root / "fake").mkdir()
    images = sample_face_images()
    t1 = read_image(images["group_t1"])
    cv2.imwrite(str(root / "real" / "astronaut.png"), read_image(images["astronaut"]))
    cv2.imwrite(str(root / "fake" / "group_left.png"), t1[:, : t1.shape[1] // 2])
    cv2.imwrite(str(root / "fake" / "noise.png"), (t1 * 0 + 127).astype("uint8"))  # no face: logged skip
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(smoke_onnx["masm"]), "--format", "folder", "--root", str(root),
                 "--split", "all", "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    m = json.loads((out / "report.json").read_text())["metrics"]
    assert m["n"] == 2 and m["n_fake"] == 1


def test_eval_needs_a_dataset(smoke_onnx: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", str(smoke_onnx["masm"])]) == 2
    assert "--data" in capsys.readouterr().err


def test_eval_missing_model_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", str(tmp_path / "x.onnx"), "--format", "samples"]) == 1
    assert "x.onnx" in capsys.readouterr().err
